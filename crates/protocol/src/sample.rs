//! Random but valid values of every message, for round-trip tests, fuzz seeds and
//! benchmarks. Seeded and deterministic: the same seed gives the same values.

use bytes::{Bytes, BytesMut};

use crate::message::Message;
use crate::wire::{RawTaggedField, Uuid};

/// A small deterministic generator (SplitMix64); tests need reproducibility, not quality.
#[derive(Debug, Clone)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    pub fn new(seed: u64) -> Self {
        SampleRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// A type that can produce a random value valid at a given version.
pub trait Sample: Sized {
    fn sample(rng: &mut SampleRng, version: i16) -> Self;
}

macro_rules! sample_int {
    ($($ty:ty),*) => {$(
        impl Sample for $ty {
            fn sample(rng: &mut SampleRng, _: i16) -> Self {
                // Mix small values, where off-by-one bugs live, with the full range.
                if rng.coin() { rng.below(3) as $ty } else { rng.next_u64() as $ty }
            }
        }
    )*};
}

sample_int!(i8, i16, i32, i64, u16, u32);

impl Sample for bool {
    fn sample(rng: &mut SampleRng, _: i16) -> Self {
        rng.coin()
    }
}

impl Sample for f64 {
    fn sample(rng: &mut SampleRng, _: i16) -> Self {
        (rng.below(1_000_000) as f64) / 8.0
    }
}

impl Sample for Uuid {
    fn sample(rng: &mut SampleRng, _: i16) -> Self {
        Uuid::from_u128((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()))
    }
}

impl Sample for String {
    fn sample(rng: &mut SampleRng, _: i16) -> Self {
        const PIECES: &[&str] = &["a", "topic", "-", "_", ".", "0", "é", "ß", "群"];
        let count = rng.below(6);
        (0..count)
            .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
            .collect()
    }
}

impl Sample for Bytes {
    fn sample(rng: &mut SampleRng, _: i16) -> Self {
        let len = rng.below(24) as usize;
        let mut buf = BytesMut::with_capacity(len);
        for _ in 0..len {
            buf.extend_from_slice(&[rng.next_u64() as u8]);
        }
        buf.freeze()
    }
}

impl<T: Sample> Sample for Vec<T> {
    fn sample(rng: &mut SampleRng, version: i16) -> Self {
        let count = rng.below(4);
        (0..count).map(|_| T::sample(rng, version)).collect()
    }
}

/// A value for a field of type `Option<T>`: sometimes null when the version allows it.
pub fn sample_nullable<T>(rng: &mut SampleRng, version: i16, null_allowed: bool) -> Option<T>
where
    Option<T>: Sample,
{
    if null_allowed && rng.below(4) == 0 {
        None
    } else {
        <Option<T>>::sample(rng, version)
    }
}

impl Sample for Option<String> {
    fn sample(rng: &mut SampleRng, version: i16) -> Self {
        Some(String::sample(rng, version))
    }
}

impl Sample for Option<Bytes> {
    fn sample(rng: &mut SampleRng, version: i16) -> Self {
        Some(Bytes::sample(rng, version))
    }
}

impl<T: Sample> Sample for Option<Vec<T>> {
    fn sample(rng: &mut SampleRng, version: i16) -> Self {
        Some(Vec::sample(rng, version))
    }
}

/// Now and then, tagged fields from a future version (tags no spec of ours uses), to show
/// that they survive a decode and re-encode.
pub fn sample_unknown_tagged_fields(rng: &mut SampleRng) -> Vec<RawTaggedField> {
    if rng.below(4) != 0 {
        return Vec::new();
    }
    let tag = 1000 + rng.below(100) as u32;
    vec![RawTaggedField {
        tag,
        data: Bytes::sample(rng, 0),
    }]
}

/// Asserts that sample values of `M` survive encode, decode and re-encode unchanged in
/// every version, for many seeds.
#[cfg(test)]
pub fn assert_round_trips<M: Message + Sample>() {
    for version in M::VERSIONS.min..=M::VERSIONS.max {
        for seed in 0..24 {
            let mut rng = SampleRng::new(seed * 7919 + version as u64);
            let value = M::sample(&mut rng, version);
            let encoded = match value.to_bytes(version) {
                Ok(bytes) => bytes,
                Err(e) => panic!(
                    "{} v{version} seed {seed}: encode failed: {e}\n{value:?}",
                    M::NAME
                ),
            };
            let mut input = encoded.clone();
            let decoded = match M::decode(&mut input, version) {
                Ok(decoded) => decoded,
                Err(e) => panic!(
                    "{} v{version} seed {seed}: decode failed: {e}\n{value:?}",
                    M::NAME
                ),
            };
            assert!(
                input.is_empty(),
                "{} v{version}: {} bytes left after decode",
                M::NAME,
                input.len()
            );
            assert_eq!(decoded, value, "{} v{version} seed {seed}", M::NAME);
            assert_eq!(
                decoded.to_bytes(version).ok(),
                Some(encoded),
                "{} v{version} seed {seed}: re-encode differs",
                M::NAME
            );
        }
    }
}
