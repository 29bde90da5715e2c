//! Which partition a record goes to, chosen as the Java client's default partitioner does,
//! so that Spool's producer and Java's (and librdkafka's `murmur2_random`) put a key in the
//! same partition: the key's murmur2 hash, made positive, modulo the partition count.
//! Records without a key stick to one partition until their batch is full, then move on
//! (KIP-794's "sticky" choice, which keeps batches large).

/// Kafka's murmur2: the 32-bit MurmurHash2 with seed 0x9747b28c, over the key's bytes read
/// as little-endian 4-byte words.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The length is mixed in as Java's int, so a key longer than i32::MAX bytes (never a
    // Kafka key) would hash differently; keys are bounded far below that.
    let mut h = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner gives `key` among
/// `partition_count` partitions.
pub fn partition_for_key(key: &[u8], partition_count: usize) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    let count = i32::try_from(partition_count.max(1)).unwrap_or(i32::MAX);
    positive % count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur2_matches_the_java_clients_hash() {
        // Values Kafka's own utility tests pin for its murmur2.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), *hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn a_key_goes_where_the_java_default_partitioner_puts_it() {
        // toPositive(murmur2) % count, worked out from the hashes above.
        assert_eq!(
            partition_for_key(b"21", 6),
            (-973_932_308i32 & 0x7fff_ffff) % 6
        );
        assert_eq!(partition_for_key(b"foobar", 6), 1_357_151_166 % 6);
        assert_eq!(partition_for_key(b"abc", 3), 479_470_107 % 3);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    proptest! {
        #[test]
        fn every_key_lands_in_a_partition_that_exists(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            count in 1usize..1000,
        ) {
            let partition = partition_for_key(&key, count);
            prop_assert!(partition >= 0 && (partition as usize) < count);
        }
    }
}
