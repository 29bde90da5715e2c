//! One partition's log: an ordered run of segments, the offsets that bound it, and what is
//! durable.
//!
//! Offsets: the log start offset is the first offset a reader may ask for; the log end
//! offset (LEO) is the offset the next appended record gets; the recovery point is the
//! offset below which every batch is known to be on stable storage. Appends go to the page
//! cache at once; [`PartitionLog::flush`] makes them durable and moves the recovery point.
//! At open, segments below the recovery point are trusted and the rest are scanned batch by
//! batch, cutting a torn or corrupt tail, so a log never opens with a record it cannot
//! return correctly.
//!
//! Time comes in as an argument (`now_ms`): the log reads no clock.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use spool_protocol::record_batch::{
    ControlRecordType, RecordBatch, RecordBatchMut, RecordBatches, TimestampType,
    build_transaction_marker,
};

mod compaction;

pub use compaction::{BatchFilter, CleanReport, KeepAllBatches};

use crate::config::LogConfig;
use crate::error::LogError;
use crate::index::{IndexEntry, TimeEntry};
use crate::leader_epoch::LeaderEpochCache;
use crate::producer_state::{
    Check, CompletedTxn, ProducerBatch, ProducerStateManager, parse_snapshot_file_name,
    snapshot_file_name,
};
use crate::segment::{BatchHeader, Recovered, Segment, SegmentLimits, parse_log_file_name};
use crate::storage::{Storage, StorageFile, read_exact_at, read_whole, write_atomically};
use crate::txn_index::{AbortedTxn, TXN_INDEX_SUFFIX};

/// The checkpoint file of a partition: recovery point and log start offset.
pub const CHECKPOINT_FILE: &str = "partition.checkpoint";
/// Present only after a clean shutdown; removed when the log is opened.
pub const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
const CHECKPOINT_VERSION: &str = "0";

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp for `LogAppendTime` topics, else -1.
    pub log_append_time_ms: i64,
    pub record_count: i64,
    /// The batch was a producer's retry of one already in the log: nothing was written,
    /// and the offsets are the original's.
    pub duplicate: bool,
}

/// A range of a segment file: what a read hands to the network without copying.
#[derive(Clone)]
pub struct FileRange {
    pub file: Arc<dyn StorageFile>,
    pub position: u64,
    pub len: u64,
}

impl FileRange {
    /// Reads the range into `buf`, reusing its allocation (for readers that copy many
    /// ranges, such as fetch paths without zero-copy).
    pub fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize(self.len as usize, 0);
        read_exact_at(self.file.as_ref(), buf, self.position)
    }

    /// Copies the range into memory (for tests and for paths that must look inside).
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        let mut bytes = vec![0u8; self.len as usize];
        read_exact_at(self.file.as_ref(), &mut bytes, self.position)?;
        Ok(Bytes::from(bytes))
    }
}

impl std::fmt::Debug for FileRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileRange({}..{})",
            self.position,
            self.position + self.len
        )
    }
}

/// What a read returned: whole batches from one segment, starting with the batch holding
/// the requested offset.
#[derive(Debug, Clone)]
pub struct LogRead {
    pub range: Option<FileRange>,
    pub first_batch_offset: i64,
    /// One past the last offset returned.
    pub next_offset: i64,
}

/// What opening the log found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub clean_shutdown: bool,
    pub segments_scanned: usize,
    pub truncated_bytes: u64,
    pub segments_dropped: usize,
}

/// Batches a client produced, checked and ready for [`PartitionLog::append_validated`].
pub struct ValidatedRecords {
    records: Bytes,
    batches: Vec<RecordBatch>,
}

/// Checks batches a client produced against a log's settings: structure, CRC, record
/// counts and offsets, `max.message.bytes`, keys on compacted topics, and (CreateTime
/// topics) record timestamps within `message.timestamp.before/after.max.ms` of `now_ms`.
/// Pure CPU work, done before taking the log.
pub fn validate_produced(
    config: &LogConfig,
    records: Bytes,
    now_ms: i64,
) -> Result<ValidatedRecords, LogError> {
    let mut batches = Vec::new();
    for batch in RecordBatches::new(records.clone()) {
        let batch = batch?;
        if batch.size_bytes() as u64 > config.max_message_bytes {
            return Err(LogError::MessageTooLarge {
                size: batch.size_bytes() as u64,
                max: config.max_message_bytes,
            });
        }
        batch.validate_for_append(config.decompressed_batch_bytes_max)?;
        if config.message_timestamp_type == TimestampType::CreateTime {
            check_timestamps(config, &batch, now_ms)?;
        }
        if config.cleanup_compact {
            for record in batch.records(config.decompressed_batch_bytes_max)? {
                if record?.key.is_none() {
                    return Err(LogError::InvalidBatch(
                        spool_protocol::DecodeError::InvalidRecordBatch(
                            "a compacted topic does not accept records without a key",
                        ),
                    ));
                }
            }
        }
        batches.push(batch);
    }
    if batches.is_empty() {
        return Err(LogError::InvalidBatch(
            spool_protocol::DecodeError::InvalidRecordBatch("no record batch to append"),
        ));
    }
    Ok(ValidatedRecords { records, batches })
}

/// A batch's records must lie within the configured distance of the broker's clock. The
/// batch's max timestamp bounds the future side; the past side needs each record, so it is
/// only checked when bounded.
fn check_timestamps(config: &LogConfig, batch: &RecordBatch, now_ms: i64) -> Result<(), LogError> {
    let invalid = |timestamp| LogError::InvalidTimestamp { timestamp, now_ms };
    if batch.max_timestamp() > now_ms.saturating_add(config.timestamp_after_max_ms) {
        return Err(invalid(batch.max_timestamp()));
    }
    if config.timestamp_before_max_ms != i64::MAX {
        let earliest = now_ms.saturating_sub(config.timestamp_before_max_ms);
        for record in batch.records(config.decompressed_batch_bytes_max)? {
            let record = record?;
            if record.timestamp < earliest {
                return Err(invalid(record.timestamp));
            }
        }
    }
    Ok(())
}

pub struct PartitionLog {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    recovery_point: i64,
    /// Segments with writes not yet synced, by base offset.
    unflushed: Vec<i64>,
    /// Directory entries created or removed since the last directory sync.
    dir_dirty: bool,
    offline: bool,
    /// Bumped when a truncation rewrites the tail, so that a flush prepared before it
    /// cannot vouch for offsets appended after it.
    generation: u64,
    /// Flushes prepared and not yet completed, in order of preparation: `None` while in
    /// flight, then the offset the flush vouches for. A flush takes the files dirty when it
    /// was prepared, so a later flush can finish first; the recovery point moves only
    /// through flushes whose predecessors have all finished.
    flushes: BTreeMap<u64, Option<i64>>,
    next_flush: u64,
    /// When the oldest message not yet flushed was appended, for `flush.ms`.
    first_unflushed_ms: Option<i64>,
    epochs: LeaderEpochCache,
    /// The cleaner checkpoint: compaction has covered everything below this offset.
    first_dirty_offset: i64,
    /// The high watermark the partition's leader or follower logic sets.
    high_watermark: i64,
    /// On a leader with other in-sync replicas: the highest offset all of them are known
    /// to hold. The high watermark never passes it. `None` on a follower and on a leader
    /// in sync alone.
    replica_floor: Option<i64>,
    /// Idempotent producers' sequence state, covering every batch in the log.
    producers: ProducerStateManager,
}

/// What a flush must sync, captured under the log's lock; [`FlushTicket::sync`] does the
/// slow part without it.
pub struct FlushTicket {
    files: Vec<Arc<dyn StorageFile>>,
    dir: Option<(Arc<dyn Storage>, PathBuf)>,
    up_to: i64,
    generation: u64,
    sequence: u64,
}

impl FlushTicket {
    /// The offset below which everything is durable once the sync succeeds.
    pub fn up_to(&self) -> i64 {
        self.up_to
    }

    pub fn sync(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some((storage, dir)) = &self.dir {
            storage.sync_dir(dir)?;
        }
        Ok(())
    }
}

fn limits(config: &LogConfig) -> SegmentLimits {
    SegmentLimits {
        index_interval_bytes: config.index_interval_bytes,
        index_entries_max: (config.segment_index_bytes as usize / TimeEntry::SIZE).max(1),
    }
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering what a crash may have left behind.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<(PartitionLog, OpenReport), LogError> {
        storage.create_dir_all(dir)?;
        compaction::finish_interrupted_swaps(storage.as_ref(), dir)?;
        let names = storage.list(dir)?;
        let mut report = OpenReport {
            clean_shutdown: names.iter().any(|n| n == CLEAN_SHUTDOWN_FILE),
            ..OpenReport::default()
        };
        for name in names
            .iter()
            .filter(|n| n.ends_with(".tmp") || n.ends_with(".deleted"))
        {
            storage.remove_file(&dir.join(name))?;
        }
        let (
            mut recovery_point,
            mut log_start_offset,
            first_dirty_offset,
            checkpointed_high_watermark,
        ) = read_checkpoint(storage.as_ref(), dir);
        let mut bases: Vec<i64> = names
            .iter()
            .filter_map(|n| parse_log_file_name(n))
            .collect();
        bases.sort_unstable();

        let limits = limits(&config);
        let mut segments: BTreeMap<i64, Segment> = BTreeMap::new();
        let mut next_offset = bases.first().copied().unwrap_or(log_start_offset.max(0));
        let mut dropping = false;
        for (i, &base) in bases.iter().enumerate() {
            // After a cut, or if segments overlap, nothing later can be trusted. Nor can a
            // segment that starts past both the previous segment's end and the recovery
            // point: the offsets between were never made durable, so they were lost, and
            // keeping it would leave a hole in the log. (A gap at or below the recovery
            // point was durable, as compaction can leave one, and stays.)
            let lost_gap =
                i > 0 && base > next_offset && base > recovery_point && !report.clean_shutdown;
            if dropping || base < next_offset || lost_gap {
                remove_segment_files(storage.as_ref(), dir, base)?;
                report.segments_dropped += 1;
                dropping = true;
                continue;
            }
            let below_recovery_point = bases.get(i + 1).is_some_and(|&next| next <= recovery_point);
            let (segment, recovered) = if report.clean_shutdown || below_recovery_point {
                Segment::load(storage.as_ref(), dir, base, limits, now_ms)?
            } else {
                report.segments_scanned += 1;
                Segment::open_and_recover(
                    storage.as_ref(),
                    dir,
                    base,
                    limits,
                    now_ms,
                    recovery_point,
                )?
            };
            let Recovered {
                truncated_bytes, ..
            } = recovered;
            report.truncated_bytes += truncated_bytes;
            dropping = truncated_bytes > 0;
            next_offset = segment.next_offset();
            segments.insert(base, segment);
        }
        if segments.is_empty() {
            let base = log_start_offset.max(0);
            segments.insert(
                base,
                Segment::create(storage.as_ref(), dir, base, limits, now_ms)?,
            );
        }
        let first_base = segments.keys().next().copied().unwrap_or(0);
        let log_end_offset = segments
            .values()
            .next_back()
            .map_or(first_base, Segment::next_offset);
        log_start_offset = log_start_offset.clamp(first_base, log_end_offset);
        recovery_point = recovery_point.min(log_end_offset);
        if report.clean_shutdown {
            recovery_point = log_end_offset;
        }
        let epochs = LeaderEpochCache::load(storage.as_ref(), dir);
        let mut log = PartitionLog {
            storage,
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            recovery_point,
            unflushed: Vec::new(),
            dir_dirty: true,
            offline: false,
            generation: 0,
            flushes: BTreeMap::new(),
            next_flush: 0,
            first_unflushed_ms: None,
            epochs,
            first_dirty_offset,
            high_watermark: checkpointed_high_watermark.clamp(log_start_offset, log_end_offset),
            replica_floor: None,
            producers: ProducerStateManager::new(),
        };
        log.rebuild_producer_state()?;
        // Epochs that began in a tail the crash took, or below the log start, go.
        let end = log.log_end_offset();
        let start = log.log_start_offset;
        let cut_end = log.epochs.truncate_from_end(end);
        let cut_start = log.epochs.truncate_from_start(start);
        if cut_end || cut_start {
            log.write_epochs()?;
        }
        // What recovery cut or dropped, and the fresh state, are made durable before
        // anything new is appended; only then does the clean-shutdown marker go.
        log.flush()?;
        log.write_checkpoint()?;
        if report.clean_shutdown {
            log.storage
                .remove_file(&log.dir.join(CLEAN_SHUTDOWN_FILE))?;
            log.storage.sync_dir(&log.dir)?;
        }
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active()
            .map_or(self.log_start_offset, Segment::next_offset)
    }

    /// Every offset below this is on stable storage.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    fn active(&self) -> Option<&Segment> {
        self.segments.values().next_back()
    }

    fn check_online(&self) -> Result<(), LogError> {
        if self.offline {
            Err(LogError::Offline)
        } else {
            Ok(())
        }
    }

    /// Marks the log offline when an I/O error could have left durability unknown.
    fn fail<T>(&mut self, error: io::Error) -> Result<T, LogError> {
        self.offline = true;
        Err(LogError::Storage(error))
    }

    /// Appends batches produced by a client, as the partition leader: validates each
    /// batch, assigns offsets from the log end offset, stamps the leader epoch (and the
    /// broker's time for `LogAppendTime` topics), and writes them to the active segment.
    pub fn append_as_leader(
        &mut self,
        records: Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        let validated = validate_produced(&self.config, records, now_ms)?;
        self.append_validated(validated, leader_epoch, now_ms)
    }

    /// The settings the log follows.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Changes the settings (a topic config change). Segment and index sizes apply to
    /// segments created from now on.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// Appends batches [`validate_produced`] already checked (against this log's
    /// settings), so that the CPU work of validation can run without holding the log.
    pub fn append_validated(
        &mut self,
        validated: ValidatedRecords,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        let ValidatedRecords { records, batches } = validated;
        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let producer_batches: Vec<Option<ProducerBatch>> =
            batches.iter().map(ProducerBatch::of).collect();
        if producer_batches.iter().any(Option::is_some) {
            let checked: Vec<ProducerBatch> = producer_batches.iter().flatten().copied().collect();
            if let Check::Duplicate(original) = self.producers.check(&checked)? {
                return Ok(AppendInfo {
                    first_offset: original.first_offset,
                    last_offset: original.last_offset,
                    log_append_time_ms: if log_append_time {
                        original.max_timestamp
                    } else {
                        -1
                    },
                    record_count: original.last_offset - original.first_offset + 1,
                    duplicate: true,
                });
            }
        }
        let first_offset = self.log_end_offset();
        if self
            .epochs
            .latest_epoch()
            .is_none_or(|latest| leader_epoch > latest)
            && self.epochs.assign(leader_epoch, first_offset)
        {
            self.write_epochs()?;
        }
        let mut next_offset = first_offset;
        let mut bytes = BytesMut::from(&records[..]);
        let mut headers = Vec::with_capacity(batches.len());
        let mut position = 0usize;
        for batch in &batches {
            let size = batch.size_bytes();
            let count = i64::from(batch.last_offset_delta()) + 1;
            let mut view = RecordBatchMut::new(&mut bytes[position..position + size])?;
            view.set_base_offset(next_offset);
            view.set_partition_leader_epoch(leader_epoch);
            if log_append_time {
                view.set_log_append_time(now_ms);
            }
            let max_timestamp = if log_append_time {
                now_ms
            } else {
                batch.max_timestamp()
            };
            headers.push(BatchHeader {
                position: position as u64,
                base_offset: next_offset,
                last_offset: next_offset + count - 1,
                size: size as u64,
                max_timestamp,
            });
            next_offset += count;
            position += size;
        }
        self.write(&bytes, &headers, now_ms)?;
        self.first_unflushed_ms.get_or_insert(now_ms);
        for (producer, header) in producer_batches.iter().zip(&headers) {
            if let Some(producer) = producer {
                let producer = ProducerBatch {
                    max_timestamp: header.max_timestamp,
                    ..*producer
                };
                let completed =
                    self.producers
                        .update(&producer, header.base_offset, header.last_offset);
                self.index_if_aborted(completed)?;
            }
        }
        Ok(AppendInfo {
            first_offset,
            last_offset: next_offset - 1,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            record_count: next_offset - first_offset,
            duplicate: false,
        })
    }

    /// Appends batches fetched from the partition's leader, as a follower replica: they
    /// keep the offsets, leader epochs and timestamps the leader gave them. Every batch's
    /// checksum is checked and none may begin before the one before ended, the first
    /// before the log end offset (else OFFSET_OUT_OF_RANGE, and nothing is written); gaps
    /// that compaction left in the leader's log stay gaps here. An
    /// incomplete last batch (a fetch response may end inside one) is left for the next
    /// fetch. The leader-epoch cache learns each newer epoch at its first offset; producer
    /// state and the aborted-transaction index follow the batches as in recovery. Nothing
    /// is deduplicated: the leader did that. `None` when no complete batch came.
    pub fn append_as_follower(
        &mut self,
        records: Bytes,
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, LogError> {
        self.check_online()?;
        let first_offset = self.log_end_offset();
        let mut rest = records.clone();
        let mut batches = Vec::new();
        let mut headers = Vec::new();
        let mut position = 0usize;
        let mut next_offset = first_offset;
        while rest.len() >= 12 {
            let declared = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
            let size = usize::try_from(declared)
                .unwrap_or(usize::MAX)
                .saturating_add(12);
            if rest.len() < size {
                break;
            }
            let batch = RecordBatch::split_first(&mut rest)?;
            batch.verify_crc()?;
            // Offsets may skip ahead (compaction removed batches on the leader), never back.
            if batch.base_offset() < next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset: batch.base_offset(),
                    log_start_offset: self.log_start_offset,
                    log_end_offset: next_offset,
                });
            }
            // The CRC does not cover the base offset, and nothing guarantees the delta is
            // sane: a batch that would end before it starts, or past i64::MAX, is corrupt.
            let last_offset = u32::try_from(batch.last_offset_delta())
                .ok()
                .and_then(|delta| batch.base_offset().checked_add(i64::from(delta)))
                .filter(|&last| last < i64::MAX)
                .ok_or(spool_protocol::DecodeError::CorruptRecordBatch(
                    "offsets out of range for a follower append",
                ))?;
            headers.push(BatchHeader {
                position: position as u64,
                base_offset: batch.base_offset(),
                last_offset,
                size: batch.size_bytes() as u64,
                max_timestamp: batch.max_timestamp(),
            });
            position += batch.size_bytes();
            next_offset = last_offset + 1;
            batches.push(batch);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        let mut learned = false;
        for batch in &batches {
            let epoch = batch.partition_leader_epoch();
            if self
                .epochs
                .latest_epoch()
                .is_none_or(|latest| epoch > latest)
            {
                learned |= self.epochs.assign(epoch, batch.base_offset());
            }
        }
        if learned {
            self.write_epochs()?;
        }
        // Each write goes to one segment, whose indexes hold offsets relative to its base
        // in 32 bits: batches spread wider than that (gaps compaction left) go in runs.
        let mut run_start = 0;
        while run_start < headers.len() {
            let first = &headers[run_start];
            let run_end = headers[run_start..]
                .iter()
                .position(|h| h.last_offset - first.base_offset > i64::from(i32::MAX))
                .map_or(headers.len(), |n| run_start + n);
            let from = first.position;
            let run: Vec<BatchHeader> = headers[run_start..run_end]
                .iter()
                .map(|h| BatchHeader {
                    position: h.position - from,
                    ..*h
                })
                .collect();
            let to = run.last().map_or(from, |h| from + h.position + h.size);
            self.write(&records[from as usize..to as usize], &run, now_ms)?;
            run_start = run_end;
        }
        self.first_unflushed_ms.get_or_insert(now_ms);
        for batch in &batches {
            let completed = self.producers.update_from_batch(batch);
            self.index_if_aborted(completed)?;
        }
        Ok(Some(AppendInfo {
            first_offset,
            last_offset: next_offset - 1,
            log_append_time_ms: -1,
            record_count: next_offset - first_offset,
            duplicate: false,
        }))
    }

    /// Writes a transaction marker for `producer_id`, ending its transaction in this
    /// partition (the transaction coordinator's part of WriteTxnMarkers). A marker from an
    /// older producer epoch is refused (INVALID_PRODUCER_EPOCH), as is one from an older
    /// coordinator epoch (TRANSACTION_COORDINATOR_FENCED). An abort is added to the
    /// segment's aborted-transaction index.
    #[allow(clippy::too_many_arguments)]
    pub fn append_marker(
        &mut self,
        marker: ControlRecordType,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        self.producers
            .check_marker(producer_id, producer_epoch, coordinator_epoch)?;
        let mut bytes = BytesMut::from(
            &build_transaction_marker(
                marker,
                producer_id,
                producer_epoch,
                coordinator_epoch,
                now_ms,
            )?[..],
        );
        let offset = self.log_end_offset();
        let mut view = RecordBatchMut::new(&mut bytes[..])?;
        view.set_base_offset(offset);
        view.set_partition_leader_epoch(leader_epoch);
        let batch = RecordBatch::from_bytes(bytes.freeze())?;
        let header = BatchHeader {
            position: 0,
            base_offset: offset,
            last_offset: offset,
            size: batch.size_bytes() as u64,
            max_timestamp: now_ms,
        };
        self.write(batch.as_bytes(), &[header], now_ms)?;
        self.first_unflushed_ms.get_or_insert(now_ms);
        let completed = self.producers.update_from_batch(&batch);
        self.index_if_aborted(completed)?;
        Ok(AppendInfo {
            first_offset: offset,
            last_offset: offset,
            log_append_time_ms: -1,
            record_count: 1,
            duplicate: false,
        })
    }

    /// Adds an aborted transaction to the index of the segment holding its marker.
    fn index_if_aborted(&mut self, completed: Option<CompletedTxn>) -> Result<(), LogError> {
        let Some(txn) = completed.filter(|t| t.aborted) else {
            return Ok(());
        };
        let entry = AbortedTxn {
            producer_id: txn.producer_id,
            first_offset: txn.first_offset,
            last_offset: txn.last_offset,
            last_stable_offset: self
                .producers
                .first_unstable_offset()
                .unwrap_or(txn.last_offset + 1),
        };
        let storage = Arc::clone(&self.storage);
        if let Some((_, segment)) = self.segments.range_mut(..=txn.last_offset).next_back() {
            segment.add_aborted_txn(storage.as_ref(), entry)?;
        }
        Ok(())
    }

    /// The aborted transactions a read_committed reader of `from..upper` must know about:
    /// those whose marker is at or after `from` and whose records begin before `upper`.
    pub fn aborted_transactions(&self, from: i64, upper: i64) -> Vec<AbortedTxn> {
        let start = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(i64::MIN, |(&base, _)| base);
        self.segments
            .range(start..)
            .flat_map(|(_, s)| s.aborted_txns())
            .filter(|t| t.last_offset >= from && t.first_offset < upper)
            .copied()
            .collect()
    }

    fn write(
        &mut self,
        bytes: &[u8],
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<(), LogError> {
        let incoming_max_timestamp = headers
            .iter()
            .map(|h| h.max_timestamp)
            .max()
            .unwrap_or(now_ms);
        let offsets = match (headers.first(), headers.last()) {
            (Some(first), Some(last)) => (first.base_offset, last.last_offset),
            _ => (self.log_end_offset(), self.log_end_offset()),
        };
        self.maybe_roll(bytes.len() as u64, now_ms, incoming_max_timestamp, offsets)?;
        let Some((&base, active)) = self.segments.iter_mut().next_back() else {
            return Err(LogError::Offline);
        };
        // A failed write leaves the segment as it was: its valid size does not move, so
        // the partial bytes are never read and the next append overwrites them. The log
        // stays online; only a failed fsync takes it down.
        active.append(bytes, headers)?;
        if !self.unflushed.contains(&base) {
            self.unflushed.push(base);
        }
        Ok(())
    }

    /// Starts a new segment when the active one is full, too old, or too far below the
    /// incoming batches (`offsets`: their first and last offsets) for its indexes, which
    /// hold offsets relative to its base in 32 bits: a follower's batches can follow a gap
    /// that compaction left in the leader's log.
    fn maybe_roll(
        &mut self,
        incoming_bytes: u64,
        now_ms: i64,
        incoming_max_timestamp: i64,
        (first_offset, last_offset): (i64, i64),
    ) -> Result<(), LogError> {
        let Some((&active_base, active)) = self.segments.iter().next_back() else {
            return Ok(());
        };
        let too_far = last_offset.saturating_sub(active_base) > i64::from(i32::MAX);
        let too_old = !active.is_empty()
            && active.time_waited_for_roll(now_ms, incoming_max_timestamp)?
                >= self.config.segment_ms;
        if !active.is_full_for(incoming_bytes, self.config.segment_bytes) && !too_old && !too_far {
            return Ok(());
        }
        // The outgoing segment is complete: make it and its indexes durable now, so that a
        // later crash finds every closed segment whole and its indexes trustworthy.
        if let Err(e) = active.sync() {
            return self.fail(e);
        }
        let base = if too_far {
            first_offset
        } else {
            active.next_offset()
        };
        let segment = Segment::create(
            self.storage.as_ref(),
            &self.dir,
            base,
            limits(&self.config),
            now_ms,
        )?;
        self.segments.insert(base, segment);
        self.dir_dirty = true;
        self.write_producer_snapshot()
    }

    /// Makes every appended batch durable: syncs the segments written since the last
    /// flush, then the directory if segments came or went. Returns the new recovery point.
    /// A failed sync takes the log offline. (To sync without holding the log, as group
    /// commit does, use [`Self::prepare_flush`] and [`Self::complete_flush`].)
    pub fn flush(&mut self) -> Result<i64, LogError> {
        let ticket = self.prepare_flush()?;
        let result = ticket.sync();
        self.complete_flush(ticket, result)
    }

    /// Captures what a flush must make durable: the files written since the last flush and
    /// the directory if its entries changed, up to the current log end offset.
    pub fn prepare_flush(&mut self) -> Result<FlushTicket, LogError> {
        self.check_online()?;
        let mut files = Vec::new();
        for base in std::mem::take(&mut self.unflushed) {
            if let Some(segment) = self.segments.get(&base) {
                files.push(segment.log_file());
            }
        }
        let dir = std::mem::take(&mut self.dir_dirty)
            .then(|| (Arc::clone(&self.storage), self.dir.clone()));
        let sequence = self.next_flush;
        self.next_flush += 1;
        self.flushes.insert(sequence, None);
        Ok(FlushTicket {
            files,
            dir,
            up_to: self.log_end_offset(),
            generation: self.generation,
            sequence,
        })
    }

    /// Records the outcome of a flush prepared earlier and returns the recovery point. A
    /// failed sync takes the log offline; a flush that a truncation overtook moves
    /// nothing (the truncation made its own flush).
    pub fn complete_flush(
        &mut self,
        ticket: FlushTicket,
        result: io::Result<()>,
    ) -> Result<i64, LogError> {
        self.check_online()?;
        if let Err(e) = result {
            return self.fail(e);
        }
        // A flush that a truncation overtook vouches for nothing.
        let up_to = (ticket.generation == self.generation).then_some(ticket.up_to);
        self.flushes
            .insert(ticket.sequence, Some(up_to.unwrap_or(-1)));
        while let Some(entry) = self.flushes.first_entry() {
            let Some(up_to) = *entry.get() else { break };
            entry.remove();
            self.recovery_point = self.recovery_point.max(up_to);
        }
        if self.recovery_point >= self.log_end_offset() {
            self.first_unflushed_ms = None;
        }
        Ok(self.recovery_point)
    }

    /// Whether the flush policy (`flush.messages`, `flush.ms`) calls for a flush now. Topics
    /// whose producers use acks=1 rely on it; acks=all appends flush through group commit.
    pub fn flush_due(&self, now_ms: i64) -> bool {
        let unflushed_messages = self.log_end_offset() - self.recovery_point;
        unflushed_messages > 0
            && (unflushed_messages >= self.config.flush_messages
                || self
                    .first_unflushed_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.flush_ms))
    }

    /// Where `retention.ms` and `retention.bytes` would move the log start: past the
    /// oldest closed segments whose newest record has expired or that put the log over its
    /// size limit, never the active segment, and only segments that end at or before
    /// `bound`. `None` when no segment is due. Whether `cleanup.policy` includes `delete`
    /// is the caller's concern.
    pub fn retention_point(&self, now_ms: i64, bound: i64) -> Option<i64> {
        let mut size = self.size_bytes();
        let mut point = None;
        // Each segment with the base of the one after it: the active one has none.
        let nexts = self.segments.keys().skip(1);
        for (segment, &next) in self.segments.values().zip(nexts) {
            if next > bound {
                break;
            }
            let expired = self.config.retention_ms >= 0
                && now_ms.saturating_sub(segment.max_timestamp()) > self.config.retention_ms;
            let oversized = self.config.retention_bytes >= 0
                && size.saturating_sub(segment.size()) >= self.config.retention_bytes as u64;
            if !expired && !oversized {
                break;
            }
            size -= segment.size();
            point = Some(next);
        }
        point
    }

    /// Applies `retention.ms` and `retention.bytes` ([`Self::retention_point`]) and moves
    /// the log start offset past the segments that go. Deleted segments are renamed to
    /// `.deleted`; [`Self::purge_deleted`] removes them. Returns how many segments went.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        self.check_online()?;
        if !self.config.cleanup_delete {
            return Ok(0);
        }
        let Some(new_start) = self.retention_point(now_ms, i64::MAX) else {
            return Ok(0);
        };
        let doomed: Vec<i64> = self.segments.range(..new_start).map(|(&b, _)| b).collect();
        self.log_start_offset = self.log_start_offset.max(new_start);
        self.high_watermark = self.high_watermark.max(self.log_start_offset);
        self.write_checkpoint()?;
        if self.epochs.truncate_from_start(self.log_start_offset) {
            self.write_epochs()?;
        }
        for &base in &doomed {
            self.retire_segment(base)?;
        }
        Ok(doomed.len())
    }

    /// Takes a segment out of the log and renames its files to `*.deleted`.
    fn retire_segment(&mut self, base: i64) -> Result<(), LogError> {
        if let Some(segment) = self.segments.remove(&base) {
            for name in segment.file_names() {
                let path = self.dir.join(&name);
                if self.storage.exists(&path) {
                    self.storage
                        .rename(&path, &self.dir.join(format!("{name}.deleted")))?;
                }
            }
        }
        self.unflushed.retain(|&b| b != base);
        self.dir_dirty = true;
        self.prune_producer_snapshots()
    }

    /// Removes the files of segments deleted earlier.
    pub fn purge_deleted(&self) -> Result<usize, LogError> {
        let mut removed = 0;
        for name in self.storage.list(&self.dir)? {
            if name.ends_with(".deleted") {
                self.storage.remove_file(&self.dir.join(name))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The high watermark: offsets below it are replicated to the ISR and visible to
    /// consumers. Between the log start offset and the log end offset.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// Moves the high watermark forward (it never moves back, except when a truncation
    /// cuts the log below it); capped at the log end offset. It is persisted with the next
    /// checkpoint. Returns the new value.
    pub fn advance_high_watermark(&mut self, offset: i64) -> i64 {
        let capped = offset
            .min(self.log_end_offset())
            .min(self.replica_floor.unwrap_or(i64::MAX));
        if capped > self.high_watermark {
            self.high_watermark = capped;
        }
        self.high_watermark
    }

    /// Caps the high watermark at what the other in-sync replicas hold (see
    /// `replica_floor`); `None` lifts the cap.
    pub fn set_replica_floor(&mut self, floor: Option<i64>) {
        self.replica_floor = floor;
    }

    /// The leader epoch appends are stamped with: the latest epoch this log knows (0 for
    /// a log that has none).
    pub fn leader_epoch(&self) -> i32 {
        self.epochs.latest_epoch().unwrap_or(0)
    }

    /// Makes `epoch` begin at the log end offset, as a replica does on becoming the
    /// partition's leader, so that followers can find where their logs diverge before the
    /// leader has written anything. An epoch not newer than the latest is ignored.
    pub fn begin_leader_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        self.check_online()?;
        if self.epochs.assign(epoch, self.log_end_offset()) {
            self.write_epochs()?;
        }
        Ok(())
    }

    /// The last stable offset: what read_committed consumers may see. The high watermark,
    /// or the first offset of the oldest open transaction if that is lower.
    pub fn last_stable_offset(&self) -> i64 {
        self.producers
            .first_unstable_offset()
            .map_or(self.high_watermark, |first| first.min(self.high_watermark))
    }

    fn write_epochs(&mut self) -> Result<(), LogError> {
        if let Err(e) = self.epochs.write(self.storage.as_ref()) {
            return self.fail(e);
        }
        Ok(())
    }

    /// The leader-epoch cache: which epoch began writing at which offset.
    pub fn leader_epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` and its end offset.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// Writes the checkpoint (recovery point and log start offset) atomically.
    pub fn write_checkpoint(&mut self) -> Result<(), LogError> {
        self.check_online()?;
        let contents = format!(
            "{CHECKPOINT_VERSION}\n{}\n{}\n{}\n{}\n",
            self.recovery_point,
            self.log_start_offset,
            self.first_dirty_offset,
            self.high_watermark
        );
        if let Err(e) = write_atomically(
            self.storage.as_ref(),
            &self.dir.join(CHECKPOINT_FILE),
            contents.as_bytes(),
        ) {
            return self.fail(e);
        }
        Ok(())
    }

    /// Flushes, checkpoints and leaves the clean-shutdown marker, so the next open skips
    /// the recovery scan.
    pub fn close(mut self) -> Result<(), LogError> {
        self.flush()?;
        for segment in self.segments.values() {
            if let Err(e) = segment.sync() {
                return self.fail(e);
            }
        }
        self.write_checkpoint()?;
        self.write_producer_snapshot()?;
        if let Err(e) = write_atomically(
            self.storage.as_ref(),
            &self.dir.join(CLEAN_SHUTDOWN_FILE),
            b"",
        ) {
            return self.fail(e);
        }
        Ok(())
    }

    fn out_of_range(&self, offset: i64) -> LogError {
        LogError::OffsetOutOfRange {
            offset,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset(),
        }
    }

    /// Hands `visit` every batch from the one that holds `from` up to `end`, in order,
    /// reading a chunk at a time; stops at the first error of a read or of `visit`.
    pub fn for_each_batch<E: From<LogError>>(
        &self,
        from: i64,
        end: i64,
        mut visit: impl FnMut(RecordBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut offset = from;
        while offset < end {
            let read = self.read(offset, 1 << 20, end)?;
            let Some(range) = read.range else { break };
            for batch in RecordBatches::new(range.to_bytes().map_err(LogError::from)?) {
                visit(batch.map_err(LogError::from)?)?;
            }
            if read.next_offset <= offset {
                break;
            }
            offset = read.next_offset;
        }
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes`
    /// (the first batch is returned whole even when larger, as Kafka does), from one
    /// segment, never past `max_offset` (the high watermark or last stable offset).
    pub fn read(&self, offset: i64, max_bytes: u64, max_offset: i64) -> Result<LogRead, LogError> {
        self.check_online()?;
        if offset < self.log_start_offset || offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        let empty = LogRead {
            range: None,
            first_batch_offset: offset,
            next_offset: offset,
        };
        if offset >= max_offset {
            return Ok(empty);
        }
        // The segment holding `offset`, or the next one if `offset` falls in a gap.
        for segment in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .chain(self.segments.range(offset + 1..))
            .map(|(_, s)| s)
        {
            let Some(first) = segment.find(offset)? else {
                continue;
            };
            if first.base_offset >= max_offset {
                return Ok(empty);
            }
            let mut end = first.position + first.size;
            let mut next_offset = first.last_offset + 1;
            while let Some(header) = segment.find(next_offset)? {
                if header.base_offset >= max_offset
                    || end - first.position + header.size > max_bytes
                {
                    break;
                }
                end = header.position + header.size;
                next_offset = header.last_offset + 1;
            }
            return Ok(LogRead {
                range: Some(FileRange {
                    file: Arc::clone(segment.file()),
                    position: first.position,
                    len: end - first.position,
                }),
                first_batch_offset: first.base_offset,
                next_offset,
            });
        }
        Ok(empty)
    }

    /// The first offset (at or after the log start offset) whose record timestamp is at
    /// least `timestamp`, with that timestamp; `None` when every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.check_online()?;
        for segment in self
            .segments
            .values()
            .filter(|s| s.max_timestamp() >= timestamp)
        {
            let mut next = segment.find_by_timestamp(timestamp)?;
            while let Some(header) = next {
                if header.max_timestamp >= timestamp && header.last_offset >= self.log_start_offset
                {
                    let batch =
                        RecordBatch::from_bytes(segment.read_bytes(header.position, header.size)?)?;
                    for record in batch.records(self.config.decompressed_batch_bytes_max)? {
                        let record = record?;
                        if record.timestamp >= timestamp && record.offset >= self.log_start_offset {
                            return Ok(Some((record.offset, record.timestamp)));
                        }
                    }
                }
                next = segment.find(header.last_offset + 1)?;
            }
        }
        Ok(None)
    }

    /// The offset and timestamp of the record with the largest timestamp (the earliest
    /// such record when several share it); `None` for an empty log.
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, LogError> {
        let Some(max) = self
            .segments
            .values()
            .map(Segment::max_timestamp)
            .max()
            .filter(|&t| t >= 0)
        else {
            return Ok(None);
        };
        self.offset_for_timestamp(max)
    }

    /// Removes everything at and after `offset` (whole batches), for replicas that must
    /// drop a diverged tail. The result is durable before this returns.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_online()?;
        if offset >= self.log_end_offset() {
            // An epoch that began at the end and wrote nothing is cut all the same.
            if offset == self.log_end_offset() && self.epochs.truncate_from_end(offset) {
                self.write_epochs()?;
            }
            return Ok(());
        }
        self.generation += 1;
        // Segments starting at or after `offset` go whole; the one before is cut.
        let later: Vec<i64> = self.segments.range(offset..).map(|(&b, _)| b).collect();
        for base in later {
            if let Some(segment) = self.segments.remove(&base) {
                drop(segment);
                remove_segment_files(self.storage.as_ref(), &self.dir, base)?;
            }
            self.unflushed.retain(|&b| b != base);
            self.dir_dirty = true;
        }
        if self.segments.is_empty() {
            let base = offset.max(self.log_start_offset);
            let segment = Segment::create(
                self.storage.as_ref(),
                &self.dir,
                base,
                limits(&self.config),
                0,
            )?;
            self.segments.insert(base, segment);
        }
        if let Some((&base, active)) = self.segments.iter_mut().next_back() {
            active.truncate_to(offset)?;
            // Stale index entries must not survive a crash and point into new data.
            if let Err(e) = active.sync() {
                return self.fail(e);
            }
            if !self.unflushed.contains(&base) {
                self.unflushed.push(base);
            }
        }
        self.log_start_offset = self.log_start_offset.min(self.log_end_offset());
        self.recovery_point = self.recovery_point.min(self.log_end_offset());
        self.high_watermark = self.high_watermark.min(self.log_end_offset());
        if self.epochs.truncate_from_end(self.log_end_offset()) {
            self.write_epochs()?;
        }
        self.flush()?;
        self.write_checkpoint()?;
        // Producer state may describe batches that are gone: rebuild it.
        self.rebuild_producer_state()
    }

    /// Empties the log and makes it start at `offset`, for a follower whose log ends below
    /// its leader's log start offset: what it holds cannot be continued, and the leader no
    /// longer has what lies between (Kafka's truncate-fully-and-start-at). The leader-epoch
    /// cache and producer state go with the data.
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_online()?;
        self.generation += 1;
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        for base in bases {
            drop(self.segments.remove(&base));
            remove_segment_files(self.storage.as_ref(), &self.dir, base)?;
        }
        for snapshot in self.producer_snapshots()? {
            self.storage
                .remove_file(&self.dir.join(snapshot_file_name(snapshot)))?;
        }
        self.unflushed.clear();
        self.dir_dirty = true;
        let segment = Segment::create(
            self.storage.as_ref(),
            &self.dir,
            offset,
            limits(&self.config),
            0,
        )?;
        self.segments.insert(offset, segment);
        self.unflushed.push(offset);
        self.log_start_offset = offset;
        self.recovery_point = offset;
        self.high_watermark = offset;
        self.first_dirty_offset = offset;
        self.first_unflushed_ms = None;
        self.epochs.clear();
        self.write_epochs()?;
        self.flush()?;
        self.write_checkpoint()?;
        self.producers = ProducerStateManager::new();
        Ok(())
    }

    /// Advances the log start offset (DeleteRecords); offsets below it can no longer be
    /// read. Whole segments below it are deleted.
    pub fn advance_log_start_offset(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_online()?;
        if offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        if offset <= self.log_start_offset {
            return Ok(());
        }
        self.log_start_offset = offset;
        self.high_watermark = self.high_watermark.max(offset);
        self.write_checkpoint()?;
        if self.epochs.truncate_from_start(offset) {
            self.write_epochs()?;
        }
        // A segment can go once the next one starts at or before the new start offset.
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        for pair in bases.windows(2) {
            if pair[1] <= offset {
                self.retire_segment(pair[0])?;
            }
        }
        Ok(())
    }
}

/// Reads (recovery point, log start offset, first dirty offset, high watermark). A
/// missing or damaged checkpoint only costs a longer recovery, a full cleaning pass and a
/// high watermark that replication re-establishes: start from zero.
fn read_checkpoint(storage: &dyn Storage, dir: &Path) -> (i64, i64, i64, i64) {
    const NOTHING: (i64, i64, i64, i64) = (0, 0, 0, 0);
    let Ok(bytes) = read_whole(storage, &dir.join(CHECKPOINT_FILE), 4096) else {
        return NOTHING;
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if lines.next() != Some(CHECKPOINT_VERSION) {
        return NOTHING;
    }
    let mut number = || {
        lines
            .next()
            .and_then(|l| l.parse::<i64>().ok())
            .filter(|&v| v >= 0)
    };
    match (number(), number(), number(), number()) {
        (
            Some(recovery_point),
            Some(log_start_offset),
            Some(first_dirty_offset),
            Some(high_watermark),
        ) => (
            recovery_point,
            log_start_offset,
            first_dirty_offset,
            high_watermark,
        ),
        _ => NOTHING,
    }
}

fn remove_segment_files(storage: &dyn Storage, dir: &Path, base: i64) -> io::Result<()> {
    let stem = format!("{base:020}");
    for suffix in ["log", "index", "timeindex", TXN_INDEX_SUFFIX] {
        let path = dir.join(format!("{stem}.{suffix}"));
        if storage.exists(&path) {
            storage.remove_file(&path)?;
        }
    }
    Ok(())
}

impl PartitionLog {
    /// Idempotent producers' state.
    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producers
    }

    /// Forgets producers idle longer than `producer.id.expiration.ms`.
    pub fn remove_expired_producers(&mut self, now_ms: i64) -> usize {
        self.producers
            .remove_expired(now_ms, self.config.producer_id_expiration_ms)
    }

    /// Snapshot offsets present in the directory, ascending.
    fn producer_snapshots(&self) -> Result<Vec<i64>, LogError> {
        let mut offsets: Vec<i64> = self
            .storage
            .list(&self.dir)?
            .iter()
            .filter_map(|name| parse_snapshot_file_name(name))
            .collect();
        offsets.sort_unstable();
        Ok(offsets)
    }

    /// Writes the producer state at the log end offset, durably.
    fn write_producer_snapshot(&mut self) -> Result<(), LogError> {
        let path = self.dir.join(snapshot_file_name(self.log_end_offset()));
        let contents = self.producers.to_snapshot();
        if let Err(e) = write_atomically(self.storage.as_ref(), &path, &contents) {
            return self.fail(e);
        }
        self.prune_producer_snapshots()
    }

    /// Removes snapshots below the first segment, keeping the newest one always.
    fn prune_producer_snapshots(&mut self) -> Result<(), LogError> {
        let first_base = self.segments.keys().next().copied().unwrap_or(0);
        let offsets = self.producer_snapshots()?;
        let newest = offsets.last().copied();
        for offset in offsets {
            if offset < first_base && Some(offset) != newest {
                self.storage
                    .remove_file(&self.dir.join(snapshot_file_name(offset)))?;
                self.dir_dirty = true;
            }
        }
        Ok(())
    }

    /// Loads the newest readable snapshot at or below the log end offset (snapshots past
    /// it describe a tail that is gone, and go) and replays the batches after it.
    fn rebuild_producer_state(&mut self) -> Result<(), LogError> {
        let end = self.log_end_offset();
        let mut loaded = None;
        for offset in self.producer_snapshots()?.into_iter().rev() {
            let path = self.dir.join(snapshot_file_name(offset));
            if offset > end {
                self.storage.remove_file(&path)?;
                self.dir_dirty = true;
                continue;
            }
            if loaded.is_some() {
                continue;
            }
            let bytes = read_whole(self.storage.as_ref(), &path, u64::MAX)?;
            loaded = ProducerStateManager::from_snapshot(&bytes).map(|state| (offset, state));
        }
        let (from, state) = loaded.unwrap_or((0, ProducerStateManager::new()));
        let mut offset = from.max(self.log_start_offset);
        // Aborted transactions ended by the batches replayed are indexed again.
        for segment in self.segments.values_mut() {
            segment.forget_aborted_txns_from(offset)?;
        }
        self.producers = state;
        while offset < end {
            let read = self.read(offset, 1 << 20, end)?;
            let Some(range) = read.range else { break };
            let bytes = range.to_bytes()?;
            for batch in RecordBatches::new(bytes) {
                let completed = self.producers.update_from_batch(&batch?);
                self.index_if_aborted(completed)?;
            }
            if read.next_offset <= offset {
                break;
            }
            offset = read.next_offset;
        }
        Ok(())
    }
}
