//! One segment: a `.log` file of record batches starting at a base offset, with its offset
//! and time indexes.
//!
//! Batches are stored exactly as appended. The segment knows how many of its file's bytes
//! are valid (`size`); anything past that — the torn tail of a crash or a failed write —
//! is never read and is overwritten by the next append.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use spool_protocol::record_batch::{
    LOG_OVERHEAD_BYTES, MAGIC_V2, RECORD_BATCH_HEADER_BYTES, RecordBatch,
};

use crate::index::{OffsetEntry, SparseIndex, TimeEntry};
use crate::storage::{Storage, StorageFile, read_exact_at};
use crate::txn_index::{AbortedTxn, TXN_INDEX_SUFFIX, TxnIndex};

/// The file name of a segment's log file: the base offset in 20 digits, as Kafka names it.
pub fn log_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

/// Parses a segment log file name back into its base offset.
pub fn parse_log_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header fields of a batch the segment needs, read from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub position: u64,
    pub base_offset: i64,
    pub last_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
}

/// Sizes of a segment's indexes and how often they get an entry.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    pub index_interval_bytes: u64,
    pub index_entries_max: usize,
}

pub struct Segment {
    base_offset: i64,
    dir: PathBuf,
    log: Arc<dyn StorageFile>,
    size: u64,
    offset_index: SparseIndex<OffsetEntry>,
    time_index: SparseIndex<TimeEntry>,
    /// Transactions whose abort marker is in this segment.
    txn_index: TxnIndex,
    limits: SegmentLimits,
    bytes_since_index_entry: u64,
    /// One past the last offset in the segment (the base offset when empty).
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    /// When the segment was created, for `segment.ms` when it has no timestamps.
    created_ms: i64,
}

/// What recovering a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub valid_bytes: u64,
    pub truncated_bytes: u64,
}

impl Segment {
    fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
        let stem = format!("{base_offset:020}");
        (
            dir.join(format!("{stem}.log")),
            dir.join(format!("{stem}.index")),
            dir.join(format!("{stem}.timeindex")),
        )
    }

    /// Opens a segment's files (creating them if absent) without trusting their contents
    /// yet: follow with [`Segment::load`] or [`Segment::recover`].
    fn open_files(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        limits: SegmentLimits,
        now_ms: i64,
    ) -> io::Result<(Segment, bool)> {
        let (log_path, index_path, time_path) = Self::paths(dir, base_offset);
        let log = storage.open(&log_path, true)?;
        let log_len = log.size_bytes()?;
        let (offset_index, offset_ok) = SparseIndex::open(
            storage,
            &index_path,
            base_offset,
            limits.index_entries_max,
            |e: &OffsetEntry| e.offset >= base_offset && u64::from(e.position) < log_len,
        )?;
        let (time_index, time_ok) = SparseIndex::open(
            storage,
            &time_path,
            base_offset,
            limits.index_entries_max,
            |e: &TimeEntry| e.offset >= base_offset,
        )?;
        let txn_index = TxnIndex::open(storage, TxnIndex::path(dir, base_offset))?;
        let segment = Segment {
            base_offset,
            dir: dir.to_path_buf(),
            log,
            size: log_len,
            offset_index,
            time_index,
            txn_index,
            limits,
            bytes_since_index_entry: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: now_ms,
        };
        Ok((segment, offset_ok && time_ok))
    }

    /// Creates a new, empty segment.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        limits: SegmentLimits,
        now_ms: i64,
    ) -> io::Result<Segment> {
        let (mut segment, _) = Self::open_files(storage, dir, base_offset, limits, now_ms)?;
        segment.log.set_len(0)?;
        segment.size = 0;
        segment.forget_contents()?;
        segment.txn_index.truncate_from(i64::MIN)?;
        Ok(segment)
    }

    /// Opens a segment whose contents were made durable before (below the recovery
    /// point). Its indexes are trusted if intact; the short tail after the last index entry
    /// is scanned to learn the segment's last offset. A damaged index means a full scan.
    pub fn load(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        limits: SegmentLimits,
        now_ms: i64,
    ) -> io::Result<(Segment, Recovered)> {
        let (mut segment, indexes_ok) =
            Self::open_files(storage, dir, base_offset, limits, now_ms)?;
        if !indexes_ok {
            let recovered = segment.recover()?;
            return Ok((segment, recovered));
        }
        segment.restore_max_timestamp();
        let start = segment
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let recovered = segment.scan_from(start, false)?;
        Ok((segment, recovered))
    }

    /// Opens a segment that may hold bytes never made durable after `recovery_point`:
    /// every batch from there on is read and its CRC checked, the indexes are rebuilt for
    /// them, and the file is cut at the first batch that is torn, corrupt or out of order.
    /// What lies below the recovery point was durable and is trusted through its index, so
    /// the cost follows the unflushed tail, not the segment's size. A damaged index means a
    /// full scan.
    pub fn open_and_recover(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        limits: SegmentLimits,
        now_ms: i64,
        recovery_point: i64,
    ) -> io::Result<(Segment, Recovered)> {
        let (mut segment, indexes_ok) =
            Self::open_files(storage, dir, base_offset, limits, now_ms)?;
        if !indexes_ok || recovery_point <= base_offset {
            let recovered = segment.recover()?;
            return Ok((segment, recovered));
        }
        // Index entries for durable batches stay; later ones may describe lost bytes.
        segment
            .offset_index
            .truncate_while(|e| e.offset < recovery_point)?;
        segment
            .time_index
            .truncate_while(|e| e.offset < recovery_point)?;
        segment.restore_max_timestamp();
        let start = segment
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let recovered = segment.scan_from(start, true)?;
        Ok((segment, recovered))
    }

    /// The time index's last entry holds the largest timestamp up to the last indexed
    /// batch; a scan of the batches after it completes the picture.
    fn restore_max_timestamp(&mut self) {
        if let Some(last) = self.time_index.last() {
            self.max_timestamp = last.timestamp;
            self.offset_of_max_timestamp = last.offset;
        }
    }

    fn recover(&mut self) -> io::Result<Recovered> {
        self.forget_contents()?;
        self.scan_from(0, true)
    }

    /// Clears everything derived from the file's contents, before rebuilding it by a scan.
    fn forget_contents(&mut self) -> io::Result<()> {
        self.offset_index.reset()?;
        self.time_index.reset()?;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
        self.bytes_since_index_entry = 0;
        Ok(())
    }

    /// Reads batches from `position` to the end of the file, indexing them, and cuts the
    /// file at the first one that is incomplete, corrupt (when `verify` is set) or out of
    /// order.
    fn scan_from(&mut self, mut position: u64, verify: bool) -> io::Result<Recovered> {
        let file_len = self.log.size_bytes()?;
        let index_from = self.offset_index.last().map(|e| e.offset);
        while let Some(header) = self.read_header(position, file_len)? {
            if header.base_offset < self.next_offset || header.last_offset < header.base_offset {
                break;
            }
            if verify {
                let mut bytes = vec![0u8; header.size as usize];
                read_exact_at(self.log.as_ref(), &mut bytes, position)?;
                match RecordBatch::from_bytes(Bytes::from(bytes)) {
                    Ok(batch) if batch.verify_crc().is_ok() => {}
                    _ => break,
                }
            }
            // Entries up to the last trusted one are already in the index.
            if index_from.is_none_or(|last| header.last_offset > last) {
                self.index_batch(&header)?;
            } else {
                self.note_timestamp(&header);
            }
            self.next_offset = header.last_offset + 1;
            position += header.size;
        }
        let truncated_bytes = file_len - position;
        if truncated_bytes > 0 {
            self.log.set_len(position)?;
        }
        self.size = position;
        Ok(Recovered {
            valid_bytes: position,
            truncated_bytes,
        })
    }

    /// Reads the header of the batch at `position`, or `None` if no whole magic-2 batch
    /// fits before `limit`.
    fn read_header(&self, position: u64, limit: u64) -> io::Result<Option<BatchHeader>> {
        if position + RECORD_BATCH_HEADER_BYTES as u64 > limit {
            return Ok(None);
        }
        let mut raw = [0u8; RECORD_BATCH_HEADER_BYTES];
        read_exact_at(self.log.as_ref(), &mut raw, position)?;
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let i32_at =
            |at: usize| i32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let batch_length = i32_at(8);
        if raw[16] as i8 != MAGIC_V2
            || batch_length < (RECORD_BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32
        {
            return Ok(None);
        }
        let size = LOG_OVERHEAD_BYTES as u64 + batch_length as u64;
        if position + size > limit {
            return Ok(None);
        }
        let base_offset = i64_at(0);
        Ok(Some(BatchHeader {
            position,
            base_offset,
            last_offset: base_offset.saturating_add(i64::from(i32_at(23))),
            size,
            max_timestamp: i64_at(35),
        }))
    }

    fn note_timestamp(&mut self, header: &BatchHeader) {
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.last_offset;
        }
    }

    fn index_batch(&mut self, header: &BatchHeader) -> io::Result<()> {
        self.note_timestamp(header);
        if self.offset_index.last().is_none()
            || self.bytes_since_index_entry >= self.limits.index_interval_bytes
        {
            self.offset_index.append(OffsetEntry {
                offset: header.last_offset,
                position: header.position as u32,
            })?;
            if self
                .time_index
                .last()
                .is_none_or(|e| self.max_timestamp > e.timestamp)
                && self.max_timestamp >= 0
            {
                self.time_index.append(TimeEntry {
                    timestamp: self.max_timestamp,
                    offset: self.offset_of_max_timestamp,
                })?;
            }
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.size;
        Ok(())
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// How long the segment has been filling, for `segment.ms`, as Kafka measures it: from
    /// its first batch's timestamp to the incoming batch's, or by the wall clock since the
    /// segment was created when the first batch has no timestamp.
    pub fn time_waited_for_roll(
        &self,
        now_ms: i64,
        incoming_max_timestamp: i64,
    ) -> io::Result<i64> {
        match self.read_header(0, self.size)? {
            Some(first) if first.max_timestamp >= 0 => {
                Ok(incoming_max_timestamp.saturating_sub(first.max_timestamp))
            }
            _ => Ok(now_ms.saturating_sub(self.created_ms)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether another `bytes` would not fit: the file would pass `segment_bytes` (or the
    /// 2 GiB that 32-bit index positions address) or an index is full.
    pub fn is_full_for(&self, bytes: u64, segment_bytes: u64) -> bool {
        !self.is_empty()
            && (self.size + bytes > segment_bytes.min(i32::MAX as u64)
                || self.offset_index.is_full()
                || self.time_index.is_full())
    }

    /// Appends batches whose offsets are already assigned. `batches` describes `bytes` in
    /// order. On error nothing is recorded as appended; the file's tail past the old size
    /// is garbage that the next append overwrites.
    pub fn append(&mut self, bytes: &[u8], batches: &[BatchHeader]) -> io::Result<()> {
        assert!(
            batches
                .first()
                .is_none_or(|b| b.base_offset >= self.next_offset),
            "offsets must increase"
        );
        self.log.write_at(bytes, self.size)?;
        let start = self.size;
        for header in batches {
            let header = BatchHeader {
                position: start + header.position,
                ..*header
            };
            self.index_batch(&header)?;
            self.next_offset = header.last_offset + 1;
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Finds the first batch whose last offset is at least `offset`.
    pub fn find(&self, offset: i64) -> io::Result<Option<BatchHeader>> {
        let mut position = self
            .offset_index
            .floor(offset)
            .map_or(0, |e| u64::from(e.position));
        while let Some(header) = self.read_header(position, self.size)? {
            if header.last_offset >= offset {
                return Ok(Some(header));
            }
            position += header.size;
        }
        Ok(None)
    }

    /// Finds the first batch whose max timestamp is at least `timestamp`.
    pub fn find_by_timestamp(&self, timestamp: i64) -> io::Result<Option<BatchHeader>> {
        // The time index's entry before `timestamp` names an offset all of whose
        // predecessors have smaller timestamps; scanning starts from its batch.
        let from_offset = self
            .time_index
            .floor(timestamp - 1)
            .map_or(self.base_offset, |e| e.offset);
        let mut position = self
            .offset_index
            .floor(from_offset)
            .map_or(0, |e| u64::from(e.position));
        while let Some(header) = self.read_header(position, self.size)? {
            if header.max_timestamp >= timestamp {
                return Ok(Some(header));
            }
            position += header.size;
        }
        Ok(None)
    }

    /// The batch at `position` (a batch boundary), or `None` past the last one.
    pub fn read_batch_at(&self, position: u64) -> io::Result<Option<(BatchHeader, Bytes)>> {
        let Some(header) = self.read_header(position, self.size)? else {
            return Ok(None);
        };
        let bytes = self.read_bytes(position, header.size)?;
        Ok(Some((header, bytes)))
    }

    /// Reads `len` bytes at `position` (within the valid part of the file).
    pub fn read_bytes(&self, position: u64, len: u64) -> io::Result<Bytes> {
        assert!(
            position + len <= self.size,
            "read past the segment's valid bytes"
        );
        let mut bytes = vec![0u8; len as usize];
        read_exact_at(self.log.as_ref(), &mut bytes, position)?;
        Ok(Bytes::from(bytes))
    }

    /// The file handle, for zero-copy reads of ranges this segment handed out.
    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.log
    }

    /// Removes every batch whose last offset is at least `offset` (whole batches), then
    /// rebuilds the indexes from the batch headers that remain. Returns the bytes removed.
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<u64> {
        let Some(first_removed) = self.find(offset)? else {
            return Ok(0);
        };
        let removed = self.size - first_removed.position;
        self.log.set_len(first_removed.position)?;
        self.txn_index.truncate_from(offset)?;
        self.forget_contents()?;
        self.scan_from(0, false)?;
        Ok(removed)
    }

    /// The file a flush must sync. Only the log's data: indexes are a cache of it. After a
    /// crash, index entries above the recovery point are rebuilt from the log, and an
    /// index that lost unsynced entries is either caught by validation or just costs a
    /// longer scan. (Truncation, rolls and close do sync indexes; see [`Self::sync`].)
    pub fn log_file(&self) -> Arc<dyn StorageFile> {
        Arc::clone(&self.log)
    }

    /// Makes the log file and the indexes durable.
    pub fn sync(&self) -> io::Result<()> {
        self.log.sync_data()?;
        self.offset_index.sync()?;
        self.time_index.sync()?;
        self.txn_index.sync()
    }

    /// The transactions whose abort marker lies in this segment, in marker order.
    pub fn aborted_txns(&self) -> &[AbortedTxn] {
        self.txn_index.entries()
    }

    /// Records an aborted transaction whose marker this segment holds.
    pub fn add_aborted_txn(&mut self, storage: &dyn Storage, entry: AbortedTxn) -> io::Result<()> {
        self.txn_index.append(storage, entry)
    }

    /// Forgets the aborted transactions whose marker is at or after `offset` (they are
    /// derived again from the log).
    pub fn forget_aborted_txns_from(&mut self, offset: i64) -> io::Result<()> {
        self.txn_index.truncate_from(offset)
    }

    /// The names of this segment's files (the transaction index may not exist).
    pub fn file_names(&self) -> [String; 4] {
        let stem = format!("{:020}", self.base_offset);
        [
            format!("{stem}.log"),
            format!("{stem}.index"),
            format!("{stem}.timeindex"),
            format!("{stem}.{TXN_INDEX_SUFFIX}"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_names_carry_twenty_digit_base_offsets() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_file_name("42.log"), None);
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
    }
}
