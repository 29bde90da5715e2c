//! Building batches: the broker writes transaction markers and internal-topic records
//! itself.

use bytes::{BufMut, Bytes, BytesMut};

use super::records::{write_nullable_bytes, write_varint, write_varlong};
use super::{
    ATTRIBUTES_AT, CONTROL_BIT, CRC_AT, LOG_OVERHEAD_BYTES, MAGIC_V2, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, RECORD_BATCH_HEADER_BYTES, TIMESTAMP_TYPE_BIT,
    TRANSACTIONAL_BIT,
};
use super::{Record, RecordBatch, TimestampType};
use crate::compression::{self, Compression};
use crate::error::{DecodeError, EncodeError};

/// The kind of a transaction marker (a control record's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecordType {
    Abort = 0,
    Commit = 1,
}

/// Builds a record batch. The broker uses it for the batches it writes itself: transaction
/// markers and records of internal topics.
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    compression: Compression,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    control: bool,
    log_append_time: Option<i64>,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    count: i32,
    /// The offset delta the next record gets when none is given.
    next_offset_delta: i32,
    /// Kept from an original batch whose last records were removed (compaction).
    last_offset_delta: Option<i32>,
    records: BytesMut,
    record: BytesMut,
}

impl RecordBatchBuilder {
    pub fn new(compression: Compression) -> Self {
        RecordBatchBuilder {
            compression,
            base_offset: 0,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            transactional: false,
            control: false,
            log_append_time: None,
            base_timestamp: None,
            max_timestamp: -1,
            count: 0,
            next_offset_delta: 0,
            last_offset_delta: None,
            records: BytesMut::new(),
            record: BytesMut::new(),
        }
    }

    /// A builder for a rewrite of `batch` (compaction keeps some of its records): the same
    /// base offset, leader epoch, producer, flags, codec, timestamp type and last offset
    /// delta, so that offsets and producer state read the same afterwards.
    pub fn like(batch: &RecordBatch) -> Result<Self, DecodeError> {
        let mut builder = RecordBatchBuilder::new(batch.compression()?)
            .base_offset(batch.base_offset())
            .partition_leader_epoch(batch.partition_leader_epoch())
            .producer(
                batch.producer_id(),
                batch.producer_epoch(),
                batch.base_sequence(),
            )
            .transactional(batch.is_transactional())
            .control(batch.is_control());
        if batch.timestamp_type() == TimestampType::LogAppendTime {
            builder = builder.log_append_time(batch.max_timestamp());
        }
        builder.last_offset_delta = Some(batch.last_offset_delta());
        Ok(builder)
    }

    pub fn base_offset(mut self, offset: i64) -> Self {
        self.base_offset = offset;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    /// Marks the batch as stamped by the broker at `timestamp_ms`.
    pub fn log_append_time(mut self, timestamp_ms: i64) -> Self {
        self.log_append_time = Some(timestamp_ms);
        self
    }

    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// Appends a record. Offsets follow the order of appends.
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), EncodeError> {
        self.append_at(self.next_offset_delta, timestamp_ms, key, value, headers)
    }

    /// Appends a record at an explicit offset delta, larger than any before it (a rewrite
    /// that drops records keeps the survivors' offsets).
    pub fn append_at(
        &mut self,
        offset_delta: i32,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), EncodeError> {
        if offset_delta < self.next_offset_delta {
            return Err(EncodeError::OffsetsOutOfOrder(offset_delta));
        }
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp_ms);
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let record = &mut self.record;
        record.clear();
        record.put_i8(0);
        write_varlong(record, timestamp_ms.wrapping_sub(base_timestamp));
        write_varint(record, offset_delta);
        write_nullable_bytes(record, key)?;
        write_nullable_bytes(record, value)?;
        write_varint(
            record,
            i32::try_from(headers.len()).map_err(|_| EncodeError::TooLong(headers.len()))?,
        );
        for (header_key, header_value) in headers {
            write_nullable_bytes(record, Some(header_key))?;
            write_nullable_bytes(record, *header_value)?;
        }
        write_varint(
            &mut self.records,
            i32::try_from(record.len()).map_err(|_| EncodeError::TooLong(record.len()))?,
        );
        self.records.put_slice(record);
        self.count = self
            .count
            .checked_add(1)
            .ok_or(EncodeError::TooLong(self.count as usize))?;
        self.next_offset_delta = offset_delta.saturating_add(1);
        Ok(())
    }

    /// Appends a record read from another batch at its own offset (which must fall at or
    /// after this batch's base offset and after the records appended so far).
    pub fn append_record(&mut self, record: &Record) -> Result<(), EncodeError> {
        let delta = i32::try_from(record.offset - self.base_offset)
            .map_err(|_| EncodeError::OffsetsOutOfOrder(i32::MIN))?;
        let headers: Vec<_> = record.headers.iter().collect();
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|h| (&h.key[..], h.value.as_deref()))
            .collect();
        self.append_at(
            delta,
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        )
    }

    /// Finishes the batch: header, (compressed) records and CRC.
    pub fn build(self) -> Result<Bytes, EncodeError> {
        let records = compression::compress(self.compression, &self.records)?;
        let mut attributes = i16::from(self.compression.id());
        if self.log_append_time.is_some() {
            attributes |= TIMESTAMP_TYPE_BIT;
        }
        if self.transactional {
            attributes |= TRANSACTIONAL_BIT;
        }
        if self.control {
            attributes |= CONTROL_BIT;
        }
        let base_timestamp = self.base_timestamp.unwrap_or(-1);
        let max_timestamp = self.log_append_time.unwrap_or(self.max_timestamp);
        let batch_length = RECORD_BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len();
        let batch_length =
            i32::try_from(batch_length).map_err(|_| EncodeError::TooLong(batch_length))?;
        let mut buf = BytesMut::with_capacity(RECORD_BATCH_HEADER_BYTES + records.len());
        buf.put_i64(self.base_offset);
        buf.put_i32(batch_length);
        buf.put_i32(self.partition_leader_epoch);
        buf.put_i8(MAGIC_V2);
        buf.put_u32(0);
        buf.put_i16(attributes);
        let last_offset_delta = self
            .last_offset_delta
            .unwrap_or(self.next_offset_delta - 1)
            .max(self.next_offset_delta - 1);
        buf.put_i32(last_offset_delta);
        buf.put_i64(base_timestamp);
        buf.put_i64(max_timestamp);
        buf.put_i64(self.producer_id);
        buf.put_i16(self.producer_epoch);
        buf.put_i32(self.base_sequence);
        buf.put_i32(self.count);
        buf.put_slice(&records);
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(buf.freeze())
    }
}

/// Builds a transaction marker: a control batch holding one control record whose key is
/// (version 0, type) and whose value is (version 0, coordinator epoch).
pub fn build_transaction_marker(
    marker: ControlRecordType,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Result<Bytes, EncodeError> {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(marker as i16);
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(coordinator_epoch);
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, producer_epoch, NO_SEQUENCE)
        .transactional(true)
        .control(true);
    builder.append(timestamp_ms, Some(&key), Some(&value), &[])?;
    builder.build()
}
