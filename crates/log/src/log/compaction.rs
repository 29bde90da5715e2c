//! Log compaction (`cleanup.policy=compact`): keep the latest record of every key.
//!
//! A cleaning pass works on the cleanable range: closed segments below the caller's upper
//! bound (the high watermark), whose newest record is older than `min.compaction.lag.ms`.
//! It maps each key in the dirty part of that range (from the cleaner checkpoint on) to
//! its latest offset, then rewrites every cleanable segment keeping a record only if it is
//! the latest for its key or lies beyond the map. Offsets never change: survivors keep
//! theirs, and rewritten batches keep their base offset, producer and last offset.
//! Tombstones (null values) are kept until their segment is older than
//! `delete.retention.ms`, so that readers catching up see the delete, and then removed.
//! Records without a key are dropped, as Kafka's cleaner does. Transactions: the
//! cleanable range ends at the last stable offset (an open transaction's records wait for
//! its outcome); records of aborted transactions never count as a key's latest value and
//! are removed. A marker goes, as with Kafka's cleaner, once no record of its transaction
//! is left (all aborted, or all superseded) and its segment is older than
//! `delete.retention.ms`, so a reader that saw the records sees the marker too; an abort
//! marker takes its entry in the aborted-transaction index with it (a stale entry would
//! make readers drop that producer's later records). [`BatchFilter`] lets a caller discard
//! more.
//!
//! Each segment is swapped crash-safely: the cleaned copy is written to `<base>.log.cleaned`
//! (and its transaction index, when markers went, to `<base>.txnindex.cleaned`) and
//! synced; the index is renamed to `.txnindex.swap`, then the log to `.log.swap` (the
//! commit point), then both over the originals. At open `.cleaned` files are an unfinished
//! pass and are removed, as is a `.txnindex.swap` without its `.log.swap`; a `.log.swap`
//! is a finished pass and is put in place with its index.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use spool_protocol::record_batch::{RecordBatch, RecordBatchBuilder};

use super::PartitionLog;
use crate::error::LogError;
use crate::segment::Segment;
use crate::storage::{Storage, StorageFile};
use crate::txn_index::{AbortedTxn, TXN_INDEX_SUFFIX, TxnIndex};

/// Decides, batch by batch, what a cleaning pass may discard beyond what keys and
/// transactions decide.
pub trait BatchFilter {
    /// Whether the whole batch can go.
    fn discard_batch(&self, _batch: &RecordBatch) -> bool {
        false
    }
}

/// Keeps every batch: compaction by key only.
pub struct KeepAllBatches;

impl BatchFilter for KeepAllBatches {}

/// What a cleaning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_cleaned: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Where the next pass starts.
    pub first_dirty_offset: i64,
}

pub(super) const CLEANED_SUFFIX: &str = ".cleaned";
pub(super) const SWAP_SUFFIX: &str = ".swap";

/// Finishes or discards swaps a crash interrupted; run before segments are opened.
pub(super) fn finish_interrupted_swaps(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    let names = storage.list(dir)?;
    for name in &names {
        if name.ends_with(CLEANED_SUFFIX) {
            storage.remove_file(&dir.join(name))?;
        } else if let Some(stem) = name.strip_suffix(&format!(".log{SWAP_SUFFIX}")) {
            // The cleaned copy was complete: its offset and time indexes go (they
            // described the old file), its transaction index (if markers went) and the
            // log take the segment's place, the log last.
            for suffix in ["index", "timeindex"] {
                let path = dir.join(format!("{stem}.{suffix}"));
                if storage.exists(&path) {
                    storage.remove_file(&path)?;
                }
            }
            let txn_index = dir.join(format!("{stem}.{TXN_INDEX_SUFFIX}"));
            let txn_index_swap = dir.join(format!("{stem}.{TXN_INDEX_SUFFIX}{SWAP_SUFFIX}"));
            if storage.exists(&txn_index_swap) {
                storage.rename(&txn_index_swap, &txn_index)?;
            }
            storage.rename(&dir.join(name), &dir.join(format!("{stem}.log")))?;
        }
    }
    // A transaction index whose log never reached `.swap`: that pass did not commit.
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(&format!(".{TXN_INDEX_SUFFIX}{SWAP_SUFFIX}")) && storage.exists(&path) {
            storage.remove_file(&path)?;
        }
    }
    storage.sync_dir(dir)?;
    Ok(())
}

impl PartitionLog {
    /// The offset where the cleanable range ends: the base of the first segment that is
    /// active, reaches `upper_bound_offset` or the oldest open transaction (whose records
    /// are not cleaned before its outcome is known), or is younger
    /// than `min.compaction.lag.ms`.
    fn cleanable_end(&self, now_ms: i64, upper_bound_offset: i64) -> i64 {
        let upper_bound_offset = self
            .producers
            .first_unstable_offset()
            .map_or(upper_bound_offset, |first| first.min(upper_bound_offset));
        let closed = self.segments.len().saturating_sub(1);
        for segment in self.segments.values().take(closed) {
            let too_new =
                now_ms.saturating_sub(segment.max_timestamp()) < self.config.min_compaction_lag_ms;
            if segment.next_offset() > upper_bound_offset || too_new {
                return segment.base_offset();
            }
        }
        self.active()
            .map_or(self.log_start_offset, Segment::base_offset)
    }

    /// The dirty share of the cleanable range's bytes.
    pub fn dirty_ratio(&self, now_ms: i64, upper_bound_offset: i64) -> f64 {
        let end = self.cleanable_end(now_ms, upper_bound_offset);
        let (mut clean, mut dirty) = (0u64, 0u64);
        for segment in self.segments.values().filter(|s| s.base_offset() < end) {
            if segment.next_offset() <= self.first_dirty_offset {
                clean += segment.size();
            } else {
                dirty += segment.size();
            }
        }
        if clean + dirty == 0 {
            0.0
        } else {
            dirty as f64 / (clean + dirty) as f64
        }
    }

    /// Whether a cleaning pass is due: the dirty ratio reached `min.cleanable.dirty.ratio`,
    /// or a dirty segment is older than `max.compaction.lag.ms`.
    pub fn needs_cleaning(&self, now_ms: i64, upper_bound_offset: i64) -> bool {
        if !self.config.cleanup_compact {
            return false;
        }
        let end = self.cleanable_end(now_ms, upper_bound_offset);
        let overdue = self.segments.values().any(|s| {
            s.base_offset() < end
                && s.next_offset() > self.first_dirty_offset
                && now_ms.saturating_sub(s.max_timestamp()) > self.config.max_compaction_lag_ms
        });
        overdue
            || (end > self.first_dirty_offset
                && self.dirty_ratio(now_ms, upper_bound_offset)
                    >= self.config.min_cleanable_dirty_ratio)
    }

    /// Runs one cleaning pass over the cleanable range (whether or not [`Self::needs_cleaning`]
    /// says it is due). Returns `None` when nothing is cleanable.
    pub fn clean(
        &mut self,
        now_ms: i64,
        upper_bound_offset: i64,
        filter: &dyn BatchFilter,
    ) -> Result<Option<CleanReport>, LogError> {
        self.check_online()?;
        if !self.config.cleanup_compact {
            return Ok(None);
        }
        let end = self.cleanable_end(now_ms, upper_bound_offset);
        if end <= self.log_start_offset {
            return Ok(None);
        }
        let aborted = AbortedBatches(self.aborted_transactions(self.log_start_offset, end));
        // With nothing new since the last pass the key map is empty, and the pass only
        // drops tombstones whose horizon has passed since.
        let dirty_from = self.first_dirty_offset.max(self.log_start_offset);
        let (latest, map_end) = if end > dirty_from {
            self.build_offset_map(dirty_from, end, &aborted)?
        } else {
            (HashMap::new(), end)
        };
        // Every gap the rewrite leaves must lie below the recovery point, or a crash would
        // read it as lost data: make everything durable first.
        self.flush()?;
        self.write_checkpoint()?;

        let mut report = CleanReport {
            segments_cleaned: 0,
            bytes_before: 0,
            bytes_after: 0,
            first_dirty_offset: map_end,
        };
        let bases: Vec<i64> = self.segments.range(..map_end).map(|(&b, _)| b).collect();
        let mut markers = MarkerCleaning::default();
        for base in bases {
            let Some(segment) = self.segments.get(&base) else {
                continue;
            };
            let horizon_passed =
                now_ms.saturating_sub(segment.max_timestamp()) > self.config.delete_retention_ms;
            let before = segment.size();
            let cleaned_path = self.dir.join(format!("{base:020}.log{CLEANED_SUFFIX}"));
            let file = self.storage.open(&cleaned_path, true)?;
            file.set_len(0)?;
            let mut out = ChunkWriter {
                file: file.as_ref(),
                buffer: Vec::new(),
                written: 0,
            };
            let keep = Keep {
                latest: &latest,
                map_end,
                horizon_passed,
                aborted: &aborted,
                filter,
            };
            let removed_markers = self.rewrite_into(segment, &mut out, &keep, &mut markers)?;
            let after = out.finish()?;
            report.bytes_before += before;
            report.bytes_after += after;
            if after == before {
                drop(file);
                self.storage.remove_file(&cleaned_path)?;
                continue;
            }
            let txn_index = segment
                .aborted_txns()
                .iter()
                .any(|t| removed_markers.contains(&t.last_offset))
                .then(|| {
                    segment
                        .aborted_txns()
                        .iter()
                        .filter(|t| !removed_markers.contains(&t.last_offset))
                        .copied()
                        .collect::<Vec<_>>()
                });
            if let Some(entries) = &txn_index {
                let path = self
                    .dir
                    .join(format!("{base:020}.{TXN_INDEX_SUFFIX}{CLEANED_SUFFIX}"));
                TxnIndex::write_file(self.storage.as_ref(), &path, entries)?;
            }
            self.swap_in(base, file.as_ref(), txn_index.is_some(), now_ms)?;
            report.segments_cleaned += 1;
        }
        self.first_dirty_offset = self.first_dirty_offset.max(map_end);
        self.write_checkpoint()?;
        Ok(Some(report))
    }

    /// Maps every key in `[from, end)` to its latest offset, up to `cleaner_keys_max`
    /// keys. Returns the map and the offset it covers up to.
    fn build_offset_map(
        &self,
        from: i64,
        end: i64,
        aborted: &AbortedBatches,
    ) -> Result<(HashMap<Bytes, i64>, i64), LogError> {
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        let limit = self.config.decompressed_batch_bytes_max;
        for segment in self
            .segments
            .values()
            .filter(|s| s.next_offset() > from && s.base_offset() < end)
        {
            for batch in SegmentBatches::new(segment) {
                let batch = batch?;
                // An aborted record never counts as a key's latest value.
                if batch.is_control() || batch.last_offset() < from || aborted.contains(&batch) {
                    continue;
                }
                for record in batch.records(limit)? {
                    let record = record?;
                    if record.offset < from {
                        continue;
                    }
                    let Some(key) = record.key else { continue };
                    if latest.len() >= self.config.cleaner_keys_max && !latest.contains_key(&key) {
                        // The map is full: this pass covers what came before this record.
                        return Ok((latest, record.offset));
                    }
                    latest.insert(key, record.offset);
                }
            }
        }
        Ok((latest, end))
    }

    /// Writes the segment's surviving records to `out`, batch by batch. Returns the
    /// offsets of the markers it removed.
    fn rewrite_into(
        &self,
        segment: &Segment,
        out: &mut ChunkWriter<'_>,
        keep: &Keep<'_>,
        markers: &mut MarkerCleaning,
    ) -> Result<HashSet<i64>, LogError> {
        let Keep {
            latest,
            map_end,
            horizon_passed,
            aborted,
            filter,
        } = *keep;
        let limit = self.config.decompressed_batch_bytes_max;
        let mut removed_markers = HashSet::new();
        for batch in SegmentBatches::new(segment) {
            let batch = batch?;
            if filter.discard_batch(&batch) || aborted.contains(&batch) {
                continue;
            }
            if batch.is_control() {
                let records_left = markers.producers_with_records.remove(&batch.producer_id());
                if horizon_passed && !records_left && batch.base_offset() < map_end {
                    removed_markers.insert(batch.base_offset());
                } else {
                    out.write(batch.as_bytes())?;
                }
                continue;
            }
            if batch.base_offset() >= map_end {
                markers.kept(&batch);
                out.write(batch.as_bytes())?;
                continue;
            }
            let records: Vec<_> = batch.records(limit)?.collect::<Result<_, _>>()?;
            let keep = |r: &spool_protocol::record_batch::Record| {
                if r.offset >= map_end {
                    return true;
                }
                let Some(key) = &r.key else { return false };
                let is_latest = latest.get(key).is_none_or(|&offset| r.offset >= offset);
                is_latest && !(r.value.is_none() && horizon_passed)
            };
            let kept: Vec<_> = records.iter().filter(|r| keep(r)).collect();
            if kept.is_empty() {
                continue;
            }
            markers.kept(&batch);
            if kept.len() == records.len() {
                out.write(batch.as_bytes())?;
                continue;
            }
            let mut builder = RecordBatchBuilder::like(&batch)?;
            for record in kept {
                builder.append_record(record)?;
            }
            out.write(&builder.build()?)?;
        }
        Ok(removed_markers)
    }

    /// Puts the cleaned copy of segment `base` in its place, crash-safely, with its
    /// cleaned transaction index if one was written, and reloads it.
    fn swap_in(
        &mut self,
        base: i64,
        cleaned: &dyn StorageFile,
        with_txn_index: bool,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let stem = format!("{base:020}");
        let cleaned_path = self.dir.join(format!("{stem}.log{CLEANED_SUFFIX}"));
        let swap_path = self.dir.join(format!("{stem}.log{SWAP_SUFFIX}"));
        if let Err(e) = cleaned.sync_data() {
            return self.fail(e);
        }
        if with_txn_index {
            let txn_index = self
                .dir
                .join(format!("{stem}.{TXN_INDEX_SUFFIX}{CLEANED_SUFFIX}"));
            let txn_index_swap = self
                .dir
                .join(format!("{stem}.{TXN_INDEX_SUFFIX}{SWAP_SUFFIX}"));
            self.storage.rename(&txn_index, &txn_index_swap)?;
            // On disk before the log's rename: a log in place with the old index would
            // keep entries whose markers are gone.
            if let Err(e) = self.storage.sync_dir(&self.dir) {
                return self.fail(e);
            }
        }
        self.storage.rename(&cleaned_path, &swap_path)?;
        if let Err(e) = self.storage.sync_dir(&self.dir) {
            return self.fail(e);
        }
        // Committed: from here a crash finishes the swap at open, and so must any error, as
        // the segments in memory no longer match the files.
        self.segments.remove(&base);
        self.unflushed.retain(|&b| b != base);
        if let Err(e) = self.put_swapped_segment_in_place(base, now_ms) {
            self.offline = true;
            return Err(e);
        }
        Ok(())
    }

    fn put_swapped_segment_in_place(&mut self, base: i64, now_ms: i64) -> Result<(), LogError> {
        finish_interrupted_swaps(self.storage.as_ref(), &self.dir)?;
        let (segment, _) = Segment::load(
            self.storage.as_ref(),
            &self.dir,
            base,
            super::limits(&self.config),
            now_ms,
        )?;
        if segment.is_empty() {
            // Nothing survived: the segment goes (reads skip the gap it leaves).
            drop(segment);
            super::remove_segment_files(self.storage.as_ref(), &self.dir, base)?;
            self.storage.sync_dir(&self.dir)?;
        } else {
            self.segments.insert(base, segment);
        }
        Ok(())
    }
}

/// What a pass keeps of a segment: each key's latest record (per the map, which covers
/// offsets below `map_end`), tombstones until their horizon, nothing of an aborted
/// transaction, nothing `filter` discards.
#[derive(Clone, Copy)]
struct Keep<'a> {
    latest: &'a HashMap<Bytes, i64>,
    map_end: i64,
    horizon_passed: bool,
    aborted: &'a AbortedBatches,
    filter: &'a dyn BatchFilter,
}

/// What a pass knows of transactions as it walks the range in offset order: which
/// producers have records of their current transaction left, so that their next marker
/// must stay.
#[derive(Default)]
struct MarkerCleaning {
    producers_with_records: HashSet<i64>,
}

impl MarkerCleaning {
    /// Notes a batch that keeps at least one record.
    fn kept(&mut self, batch: &RecordBatch) {
        if batch.is_transactional() {
            self.producers_with_records.insert(batch.producer_id());
        }
    }
}

/// The aborted transactions of the cleanable range, to recognise their batches.
struct AbortedBatches(Vec<AbortedTxn>);

impl AbortedBatches {
    /// Whether `batch` holds records of an aborted transaction: a transactional data
    /// batch of the producer between the transaction's first offset and its marker.
    fn contains(&self, batch: &RecordBatch) -> bool {
        batch.is_transactional()
            && !batch.is_control()
            && self.0.iter().any(|t| {
                t.producer_id == batch.producer_id()
                    && t.first_offset <= batch.base_offset()
                    && batch.last_offset() < t.last_offset
            })
    }
}

/// Buffers writes to a file in chunks of about a megabyte.
struct ChunkWriter<'a> {
    file: &'a dyn StorageFile,
    buffer: Vec<u8>,
    written: u64,
}

impl ChunkWriter<'_> {
    const CHUNK_BYTES: usize = 1 << 20;

    fn write(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= Self::CHUNK_BYTES {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), LogError> {
        self.file.write_at(&self.buffer, self.written)?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes what is buffered and returns the total size.
    fn finish(mut self) -> Result<u64, LogError> {
        self.drain()?;
        Ok(self.written)
    }
}

/// The batches of a segment, read from the file one at a time.
struct SegmentBatches<'a> {
    segment: &'a Segment,
    position: u64,
}

impl<'a> SegmentBatches<'a> {
    fn new(segment: &'a Segment) -> Self {
        SegmentBatches {
            segment,
            position: 0,
        }
    }
}

impl Iterator for SegmentBatches<'_> {
    type Item = Result<RecordBatch, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        let read = self.segment.read_batch_at(self.position).transpose()?;
        Some(read.map_err(LogError::from).and_then(|(header, bytes)| {
            self.position = header.position + header.size;
            Ok(RecordBatch::from_bytes(bytes)?)
        }))
    }
}
