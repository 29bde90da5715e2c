//! Record batches (magic 2): a zero-copy view, lazy record iteration, in-place header
//! rewrites, and a builder for batches the broker writes itself.
//!
//! A batch is stored and served exactly as its producer wrote it. The broker reads the
//! header fields in place, checks the CRC-32C (which covers everything from the attributes
//! to the end), and rewrites only the fields outside the CRC — base offset and partition
//! leader epoch — plus, for `LogAppendTime` topics, the max timestamp (after which it
//! recomputes the CRC). Records are decoded only when something must look inside.
//!
//! Layout of the 61-byte header: base offset i64 @0, batch length i32 @8 (bytes after this
//! field), partition leader epoch i32 @12, magic i8 @16, CRC u32 @17, attributes i16 @21,
//! last offset delta i32 @23, base timestamp i64 @27, max timestamp i64 @35, producer ID
//! i64 @43, producer epoch i16 @51, base sequence i32 @53, record count i32 @57.
//!
//! Legacy message sets (magic 0 and 1) are refused: Kafka 4 no longer accepts them, and a
//! produce request carrying one gets `INVALID_RECORD`.

use bytes::Bytes;

use crate::compression::{self, Compression};
use crate::error::DecodeError;
use crate::error_code::ErrorCode;

mod builder;
mod records;

pub use builder::{ControlRecordType, RecordBatchBuilder, build_transaction_marker};
pub use records::{
    Record, RecordHeader, RecordHeaders, Records, read_varint, read_varlong, write_varint,
    write_varlong,
};

pub const MAGIC_V2: i8 = 2;
/// Bytes of the batch header, before the first record.
pub const RECORD_BATCH_HEADER_BYTES: usize = 61;
/// Bytes before the batch length field's count starts: base offset and the length itself.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Producer ID, epoch and sequence of a batch without an idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;
/// Partition leader epoch before the broker assigns one.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
const DELETE_HORIZON_BIT: i16 = 1 << 6;

/// Whose clock a batch's timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// One record batch, exactly as it is on the wire and on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
}

impl RecordBatch {
    /// Takes the first batch off the front of `buf`, checking that its length field fits
    /// and that it is a magic-2 batch. The CRC is not checked here: see [`Self::verify_crc`].
    pub fn split_first(buf: &mut Bytes) -> Result<RecordBatch, DecodeError> {
        if buf.len() < LOG_OVERHEAD_BYTES {
            return Err(DecodeError::CorruptRecordBatch(
                "shorter than a batch's length field",
            ));
        }
        // The magic byte sits at the same place in every format, so legacy message sets are
        // recognised (and refused) even when their length is too short for a v2 header.
        if buf.len() > MAGIC_AT {
            let magic = buf[MAGIC_AT] as i8;
            if magic != MAGIC_V2 {
                return Err(DecodeError::UnsupportedMagic(magic));
            }
        }
        let batch_length = i32_at(buf, BATCH_LENGTH_AT);
        let min_length = (RECORD_BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
        if batch_length < min_length {
            return Err(DecodeError::CorruptRecordBatch(
                "batch length smaller than the batch header",
            ));
        }
        let size = LOG_OVERHEAD_BYTES + batch_length as usize;
        if size > buf.len() {
            return Err(DecodeError::LengthExceedsRemaining {
                what: "record batch",
                length: size as u64,
                remaining: buf.len(),
            });
        }
        Ok(RecordBatch {
            bytes: buf.split_to(size),
        })
    }

    /// Parses `bytes` as exactly one batch.
    pub fn from_bytes(mut bytes: Bytes) -> Result<RecordBatch, DecodeError> {
        let batch = RecordBatch::split_first(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(DecodeError::InvalidRecordBatch("bytes after the batch"));
        }
        Ok(batch)
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The whole batch's size in bytes, header included.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn base_offset(&self) -> i64 {
        i64_at(&self.bytes, BASE_OFFSET_AT)
    }

    pub fn batch_length(&self) -> i32 {
        i32_at(&self.bytes, BATCH_LENGTH_AT)
    }

    pub fn partition_leader_epoch(&self) -> i32 {
        i32_at(&self.bytes, PARTITION_LEADER_EPOCH_AT)
    }

    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC_AT] as i8
    }

    pub fn crc(&self) -> u32 {
        i32_at(&self.bytes, CRC_AT) as u32
    }

    pub fn attributes(&self) -> i16 {
        i16_at(&self.bytes, ATTRIBUTES_AT)
    }

    pub fn compression(&self) -> Result<Compression, DecodeError> {
        Compression::from_attributes(self.attributes())
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes() & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }

    /// Whether the base timestamp holds the delete horizon set by compaction (KIP-534).
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes() & DELETE_HORIZON_BIT != 0
    }

    pub fn last_offset_delta(&self) -> i32 {
        i32_at(&self.bytes, LAST_OFFSET_DELTA_AT)
    }

    pub fn base_timestamp(&self) -> i64 {
        i64_at(&self.bytes, BASE_TIMESTAMP_AT)
    }

    pub fn max_timestamp(&self) -> i64 {
        i64_at(&self.bytes, MAX_TIMESTAMP_AT)
    }

    pub fn producer_id(&self) -> i64 {
        i64_at(&self.bytes, PRODUCER_ID_AT)
    }

    pub fn producer_epoch(&self) -> i16 {
        i16_at(&self.bytes, PRODUCER_EPOCH_AT)
    }

    pub fn base_sequence(&self) -> i32 {
        i32_at(&self.bytes, BASE_SEQUENCE_AT)
    }

    pub fn record_count(&self) -> i32 {
        i32_at(&self.bytes, RECORD_COUNT_AT)
    }

    /// The offset of the batch's last record, as the header declares it.
    pub fn last_offset(&self) -> i64 {
        // A client chooses the base offset of what it produces: never let it overflow.
        self.base_offset()
            .wrapping_add(i64::from(self.last_offset_delta()))
    }

    /// The CRC-32C the batch's contents have.
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..])
    }

    /// Checks the stored CRC against the contents.
    pub fn verify_crc(&self) -> Result<(), DecodeError> {
        let (stored, computed) = (self.crc(), self.compute_crc());
        if stored != computed {
            return Err(DecodeError::CrcMismatch { stored, computed });
        }
        Ok(())
    }

    /// The record section, decompressed if needed (never more than `decompressed_limit`
    /// bytes), as a buffer the records borrow from.
    pub fn records_data(&self, decompressed_limit: usize) -> Result<Bytes, DecodeError> {
        let data = self.bytes.slice(RECORD_BATCH_HEADER_BYTES..);
        match self.compression()? {
            Compression::None => Ok(data),
            codec => compression::decompress(codec, &data, decompressed_limit),
        }
    }

    /// Iterates over the records, decoding each when it is reached.
    pub fn records(&self, decompressed_limit: usize) -> Result<Records, DecodeError> {
        let count = self.record_count();
        if count < 0 {
            return Err(DecodeError::InvalidRecordBatch("negative record count"));
        }
        Ok(Records {
            data: self.records_data(decompressed_limit)?,
            remaining_count: count as usize,
            base_offset: self.base_offset(),
            base_timestamp: self.base_timestamp(),
            log_append_time: (self.timestamp_type() == TimestampType::LogAppendTime)
                .then(|| self.max_timestamp()),
        })
    }

    /// Checks what the broker checks before appending a batch a client produced: the CRC;
    /// that it is not a control batch and has a sequence number if it has a producer ID;
    /// that the declared record count matches the records, that offset deltas run 0, 1, …
    /// up to the declared last offset delta, and that no bytes trail the last record.
    pub fn validate_for_append(&self, decompressed_limit: usize) -> Result<(), DecodeError> {
        self.verify_crc()?;
        if self.is_control() {
            return Err(DecodeError::InvalidRecordBatch(
                "clients may not write control batches",
            ));
        }
        if self.producer_id() >= 0 && self.base_sequence() < 0 {
            return Err(DecodeError::InvalidRecordBatch(
                "a batch with a producer ID needs a sequence number",
            ));
        }
        let count = self.record_count();
        if count <= 0 {
            return Err(DecodeError::InvalidRecordBatch(
                "a produced batch must hold at least one record",
            ));
        }
        if self.last_offset_delta() != count - 1 {
            return Err(DecodeError::InvalidRecordBatch(
                "last offset delta does not match the record count",
            ));
        }
        let mut records = self.records(decompressed_limit)?;
        for (expected_delta, record) in records.by_ref().enumerate() {
            if record?.offset.wrapping_sub(self.base_offset()) != expected_delta as i64 {
                return Err(DecodeError::InvalidRecordBatch(
                    "record offset deltas are not consecutive from 0",
                ));
            }
        }
        if !records.data.is_empty() {
            return Err(DecodeError::InvalidRecordBatch(
                "bytes after the last record",
            ));
        }
        Ok(())
    }
}

/// The error code a produce response carries for a batch that failed to parse or validate,
/// as Kafka answers. Only damage that makes the bytes untrustworthy — a CRC mismatch, a
/// batch that cannot be delimited, a stream that does not decompress — is
/// `CORRUPT_MESSAGE`, which clients retry. A well-formed batch whose contents break the
/// rules (old magic, bad counts or offsets, malformed records) is `INVALID_RECORD`, which
/// they do not; decompressed records over the broker's limit are `MESSAGE_TOO_LARGE`.
pub fn batch_error_code(error: &DecodeError) -> ErrorCode {
    match error {
        DecodeError::CrcMismatch { .. }
        | DecodeError::CorruptRecordBatch(_)
        | DecodeError::LengthExceedsRemaining { .. }
        | DecodeError::Decompression(_) => ErrorCode::CorruptMessage,
        DecodeError::DecompressedTooLarge { .. } => ErrorCode::MessageTooLarge,
        _ => ErrorCode::InvalidRecord,
    }
}

/// Iterates over the batches in a `records` field (Produce, Fetch, or a segment read).
/// A batch that does not fit ends the iteration with an error.
#[derive(Debug, Clone)]
pub struct RecordBatches {
    data: Bytes,
}

impl RecordBatches {
    pub fn new(data: Bytes) -> Self {
        RecordBatches { data }
    }
}

impl Iterator for RecordBatches {
    type Item = Result<RecordBatch, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let result = RecordBatch::split_first(&mut self.data);
        if result.is_err() {
            self.data = Bytes::new();
        }
        Some(result)
    }
}

/// In-place rewrites of a batch the broker is about to append.
pub struct RecordBatchMut<'a> {
    bytes: &'a mut [u8],
}

impl<'a> RecordBatchMut<'a> {
    /// Wraps a buffer holding exactly one magic-2 batch.
    pub fn new(bytes: &'a mut [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < RECORD_BATCH_HEADER_BYTES {
            return Err(DecodeError::CorruptRecordBatch(
                "shorter than a batch header",
            ));
        }
        let magic = bytes[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(DecodeError::UnsupportedMagic(magic));
        }
        let batch_length = i32_at(bytes, BATCH_LENGTH_AT);
        if batch_length < 0 || LOG_OVERHEAD_BYTES + batch_length as usize != bytes.len() {
            return Err(DecodeError::CorruptRecordBatch(
                "buffer does not hold exactly one batch",
            ));
        }
        Ok(RecordBatchMut { bytes })
    }

    /// Sets the base offset (outside the CRC).
    pub fn set_base_offset(&mut self, offset: i64) {
        self.bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&offset.to_be_bytes());
    }

    /// Sets the partition leader epoch (outside the CRC).
    pub fn set_partition_leader_epoch(&mut self, epoch: i32) {
        self.bytes[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
            .copy_from_slice(&epoch.to_be_bytes());
    }

    /// Stamps the batch with the broker's clock (`message.timestamp.type=LogAppendTime`):
    /// sets the timestamp-type bit and the max timestamp, then recomputes the CRC.
    pub fn set_log_append_time(&mut self, timestamp_ms: i64) {
        let attributes = i16_at(self.bytes, ATTRIBUTES_AT) | TIMESTAMP_TYPE_BIT;
        self.bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        self.bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&timestamp_ms.to_be_bytes());
        self.update_crc();
    }

    /// Stamps the batch with an idempotent producer's ID, epoch and first sequence (what a
    /// producer does when it sends a batch built before it knew them), then recomputes
    /// the CRC.
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.bytes[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
        self.bytes[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
            .copy_from_slice(&producer_epoch.to_be_bytes());
        self.bytes[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
            .copy_from_slice(&base_sequence.to_be_bytes());
        self.update_crc();
    }

    /// Recomputes and stores the CRC after a change inside the CRC's coverage.
    pub fn update_crc(&mut self) {
        let crc = crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..]);
        self.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    const LIMIT: usize = 1 << 20;

    fn batch_of(compression: Compression, n: i32) -> Bytes {
        let mut builder = RecordBatchBuilder::new(compression)
            .base_offset(100)
            .producer(7, 1, 0);
        for i in 0..n {
            let key = format!("key-{i}");
            let value = format!("value-{i}").repeat(i as usize % 5 + 1);
            builder
                .append(
                    1_700_000_000_000 + i64::from(i),
                    Some(key.as_bytes()),
                    Some(value.as_bytes()),
                    &[(b"h", Some(b"v"))],
                )
                .unwrap();
        }
        builder.build().unwrap()
    }

    #[test]
    fn built_batches_validate_and_give_back_their_records_under_every_codec() {
        for codec in Compression::ALL {
            let batch = RecordBatch::from_bytes(batch_of(codec, 10)).unwrap();
            batch.validate_for_append(LIMIT).unwrap();
            assert_eq!(batch.compression().unwrap(), codec);
            assert_eq!(
                (
                    batch.base_offset(),
                    batch.last_offset(),
                    batch.record_count()
                ),
                (100, 109, 10)
            );
            assert_eq!(batch.max_timestamp(), 1_700_000_000_009);
            let records: Vec<Record> = batch
                .records(LIMIT)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(records.len(), 10);
            assert_eq!(records[3].offset, 103);
            assert_eq!(records[3].timestamp, 1_700_000_000_003);
            assert_eq!(records[3].key.as_deref(), Some(&b"key-3"[..]));
            assert_eq!(
                records[3].value.as_deref(),
                Some("value-3".repeat(4).as_bytes())
            );
            assert_eq!(
                records[3].headers.iter().collect::<Vec<_>>(),
                vec![RecordHeader {
                    key: Bytes::from_static(b"h"),
                    value: Some(Bytes::from_static(b"v"))
                }]
            );
        }
    }

    #[test]
    fn any_flipped_byte_inside_the_crc_coverage_is_detected() {
        let bytes = batch_of(Compression::None, 3);
        for at in ATTRIBUTES_AT..bytes.len() {
            let mut corrupt = bytes.to_vec();
            corrupt[at] ^= 0x01;
            let batch = RecordBatch::from_bytes(Bytes::from(corrupt)).unwrap();
            assert!(
                matches!(batch.verify_crc(), Err(DecodeError::CrcMismatch { .. })),
                "byte {at}"
            );
        }
    }

    #[test]
    fn rewriting_offset_and_epoch_keeps_the_crc_valid() {
        let mut bytes = batch_of(Compression::Lz4, 4).to_vec();
        let mut batch = RecordBatchMut::new(&mut bytes).unwrap();
        batch.set_base_offset(5000);
        batch.set_partition_leader_epoch(9);
        let batch = RecordBatch::from_bytes(Bytes::from(bytes)).unwrap();
        batch.verify_crc().unwrap();
        assert_eq!(
            (batch.base_offset(), batch.partition_leader_epoch()),
            (5000, 9)
        );
        let offsets: Vec<i64> = batch
            .records(LIMIT)
            .unwrap()
            .map(|r| r.unwrap().offset)
            .collect();
        assert_eq!(offsets, vec![5000, 5001, 5002, 5003]);
    }

    #[test]
    fn stamping_a_producer_matches_a_batch_built_with_it() {
        let built = |producer: Option<(i64, i16, i32)>| {
            let mut builder = RecordBatchBuilder::new(Compression::Zstd);
            if let Some((id, epoch, sequence)) = producer {
                builder = builder.producer(id, epoch, sequence);
            }
            builder.append(7, Some(b"k"), Some(b"v"), &[]).unwrap();
            builder.build().unwrap()
        };
        let mut stamped = built(None).to_vec();
        RecordBatchMut::new(&mut stamped)
            .unwrap()
            .set_producer(4001, 3, 250);
        assert_eq!(stamped, built(Some((4001, 3, 250))).to_vec());
        let batch = RecordBatch::from_bytes(Bytes::from(stamped)).unwrap();
        batch.verify_crc().unwrap();
        assert_eq!(
            (
                batch.producer_id(),
                batch.producer_epoch(),
                batch.base_sequence()
            ),
            (4001, 3, 250)
        );
    }

    #[test]
    fn log_append_time_overrides_record_timestamps_and_updates_the_crc() {
        let mut bytes = batch_of(Compression::None, 2).to_vec();
        RecordBatchMut::new(&mut bytes)
            .unwrap()
            .set_log_append_time(42);
        let batch = RecordBatch::from_bytes(Bytes::from(bytes)).unwrap();
        batch.verify_crc().unwrap();
        assert_eq!(batch.timestamp_type(), TimestampType::LogAppendTime);
        assert!(
            batch
                .records(LIMIT)
                .unwrap()
                .all(|r| r.unwrap().timestamp == 42)
        );
    }

    #[test]
    fn legacy_magic_is_refused_with_invalid_record() {
        for magic in [0i8, 1] {
            let mut bytes = batch_of(Compression::None, 1).to_vec();
            bytes[MAGIC_AT] = magic as u8;
            let err = RecordBatch::from_bytes(Bytes::from(bytes)).unwrap_err();
            assert_eq!(err, DecodeError::UnsupportedMagic(magic));
            assert_eq!(batch_error_code(&err), ErrorCode::InvalidRecord);
        }
    }

    #[test]
    fn extreme_client_base_offsets_do_not_overflow() {
        let mut bytes = batch_of(Compression::None, 3).to_vec();
        RecordBatchMut::new(&mut bytes)
            .unwrap()
            .set_base_offset(i64::MAX);
        let batch = RecordBatch::from_bytes(Bytes::from(bytes)).unwrap();
        batch.validate_for_append(LIMIT).unwrap();
        assert_eq!(batch.last_offset(), i64::MIN + 1);
    }

    #[test]
    fn content_errors_are_invalid_record_not_retriable_corruption() {
        let mut control = batch_of(Compression::None, 1).to_vec();
        control[ATTRIBUTES_AT + 1] |= CONTROL_BIT as u8;
        let mut no_sequence = batch_of(Compression::None, 1).to_vec();
        no_sequence[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        let mut miscounted = batch_of(Compression::None, 2).to_vec();
        miscounted[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&3i32.to_be_bytes());
        for (name, mut bytes) in [
            ("control", control),
            ("no sequence", no_sequence),
            ("miscounted", miscounted),
        ] {
            RecordBatchMut::new(&mut bytes).unwrap().update_crc();
            let batch = RecordBatch::from_bytes(Bytes::from(bytes)).unwrap();
            let err = batch.validate_for_append(LIMIT).unwrap_err();
            assert_eq!(
                batch_error_code(&err),
                ErrorCode::InvalidRecord,
                "{name}: {err}"
            );
            assert!(!batch_error_code(&err).is_retriable());
        }
    }

    #[test]
    fn a_bad_crc_is_a_corrupt_message() {
        let mut bytes = batch_of(Compression::None, 2).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let err = RecordBatch::from_bytes(Bytes::from(bytes))
            .unwrap()
            .verify_crc()
            .unwrap_err();
        assert_eq!(batch_error_code(&err), ErrorCode::CorruptMessage);
    }

    #[test]
    fn a_batch_declaring_more_records_than_it_holds_fails_validation() {
        let mut bytes = batch_of(Compression::None, 3).to_vec();
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&4i32.to_be_bytes());
        bytes[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&3i32.to_be_bytes());
        RecordBatchMut::new(&mut bytes).unwrap().update_crc();
        let batch = RecordBatch::from_bytes(Bytes::from(bytes)).unwrap();
        assert!(batch.validate_for_append(LIMIT).is_err());
    }

    #[test]
    fn a_truncated_batch_is_an_error_not_a_panic() {
        let bytes = batch_of(Compression::Zstd, 5);
        for cut in 0..bytes.len() {
            let mut partial = bytes.slice(..cut);
            assert!(
                RecordBatch::split_first(&mut partial).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn batches_are_iterated_one_after_another() {
        let mut data = BytesMut::new();
        data.put_slice(&batch_of(Compression::None, 2));
        data.put_slice(&batch_of(Compression::Gzip, 3));
        let counts: Vec<i32> = RecordBatches::new(data.freeze())
            .map(|b| b.unwrap().record_count())
            .collect();
        assert_eq!(counts, vec![2, 3]);
    }

    #[test]
    fn transaction_markers_are_control_batches() {
        let batch = RecordBatch::from_bytes(
            build_transaction_marker(ControlRecordType::Commit, 11, 2, 5, 99).unwrap(),
        )
        .unwrap();
        batch.verify_crc().unwrap();
        assert!(batch.is_control() && batch.is_transactional());
        assert_eq!((batch.producer_id(), batch.producer_epoch()), (11, 2));
        let record = batch.records(LIMIT).unwrap().next().unwrap().unwrap();
        assert_eq!(record.key.as_deref(), Some(&[0, 0, 0, 1][..]));
        assert_eq!(record.value.as_deref(), Some(&[0, 0, 0, 0, 0, 5][..]));
    }

    #[test]
    fn a_rewrite_keeps_survivors_offsets_and_the_batch_identity() {
        let original = RecordBatch::from_bytes(batch_of(Compression::Snappy, 5)).unwrap();
        let mut builder = RecordBatchBuilder::like(&original).unwrap();
        for record in original
            .records(LIMIT)
            .unwrap()
            .map(Result::unwrap)
            .filter(|r| r.offset % 2 == 1)
        {
            builder.append_record(&record).unwrap();
        }
        assert!(
            builder.append_at(0, 0, None, None, &[]).is_err(),
            "offsets only move forward"
        );
        let rewritten = RecordBatch::from_bytes(builder.build().unwrap()).unwrap();
        rewritten.verify_crc().unwrap();
        let offsets: Vec<i64> = rewritten
            .records(LIMIT)
            .unwrap()
            .map(|r| r.unwrap().offset)
            .collect();
        assert_eq!(offsets, vec![101, 103]);
        assert_eq!(
            rewritten.last_offset(),
            original.last_offset(),
            "the batch still ends where it did"
        );
        assert_eq!(rewritten.record_count(), 2);
        assert_eq!(
            (
                rewritten.producer_id(),
                rewritten.producer_epoch(),
                rewritten.base_sequence(),
                rewritten.compression().unwrap()
            ),
            (7, 1, 0, Compression::Snappy)
        );
    }

    #[test]
    fn zigzag_varints_round_trip() {
        for value in [
            0i64,
            -1,
            1,
            63,
            -64,
            64,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = BytesMut::new();
            write_varlong(&mut buf, value);
            assert_eq!(read_varlong(&mut buf.freeze()).unwrap(), value);
        }
    }
}
