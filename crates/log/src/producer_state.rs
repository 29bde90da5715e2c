//! Idempotent producers' state in one partition, as Kafka keeps it.
//!
//! For each producer ID the log remembers the epoch and the sequence numbers and offsets
//! of its last five batches. A leader append checks each batch against it:
//! - an epoch older than the known one is refused (INVALID_PRODUCER_EPOCH);
//! - a batch equal to one of the last five (same epoch and sequence range) is a retry:
//!   it is not written again, and the original offsets are returned;
//! - otherwise the batch must continue the sequence (or, in a new epoch, start at 0),
//!   else OUT_OF_ORDER_SEQUENCE_NUMBER. A producer the log does not know (new, expired,
//!   or whose batches retention removed) may start at any sequence.
//!
//! Transactions: a producer's first transactional batch opens its transaction in the
//! partition (at that batch's offset) and a marker (a control batch written for the
//! coordinator) ends it. The first offset of the oldest open transaction bounds the last
//! stable offset; a non-transactional batch from a producer with an open transaction is
//! refused (INVALID_TXN_STATE), as is a marker from an older producer or coordinator
//! epoch. Ending a transaction reports it, so the log can index aborted ones.
//!
//! The state survives restarts in snapshot files, `<offset>.snapshot`, each holding the
//! state of every batch below its offset; opening a log loads the newest readable
//! snapshot and replays the batches after it. Producers idle longer than
//! `producer.id.expiration.ms` are forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};

use spool_protocol::record_batch::{ControlRecordType, RecordBatch};

/// Batches remembered per producer for detecting retries (Kafka's
/// `max.in.flight.requests.per.connection` bound for idempotence).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// The suffix of snapshot files.
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
/// Version 2 added each producer's open transaction and coordinator epoch.
const SNAPSHOT_VERSION: u16 = 2;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<BatchMetadata>,
    /// The newest batch's timestamp, for expiry.
    pub last_timestamp: i64,
    /// The first offset of the producer's open transaction in this partition.
    pub current_txn_first_offset: Option<i64>,
    /// The coordinator epoch of the newest marker.
    pub coordinator_epoch: i32,
}

/// Why a producer's batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: sequence {first_seq} does not follow {last_seq}")]
    OutOfOrderSequence {
        producer_id: i64,
        first_seq: i32,
        last_seq: i32,
    },
    #[error("producer {producer_id} wrote outside its open transaction")]
    InvalidTxnState { producer_id: i64 },
    #[error("marker from coordinator epoch {epoch}, older than {current}")]
    CoordinatorFenced { epoch: i32, current: i32 },
}

/// A transaction a marker ended in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub aborted: bool,
}

/// What a check decided for a leader append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Append,
    /// A retry of a batch already in the log.
    Duplicate(BatchMetadata),
}

/// A batch's producer fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    pub max_timestamp: i64,
    pub transactional: bool,
    pub control: bool,
    /// For a transaction marker, whether it commits or aborts.
    pub marker: Option<ControlRecordType>,
    /// A marker's coordinator epoch.
    pub coordinator_epoch: i32,
}

impl ProducerBatch {
    /// The producer fields of `batch`, or `None` for a batch without a producer ID.
    pub fn of(batch: &RecordBatch) -> Option<ProducerBatch> {
        if batch.producer_id() < 0 {
            return None;
        }
        let first_seq = batch.base_sequence();
        // Sequences wrap from i32::MAX to 0.
        let last_seq = ((i64::from(first_seq) + i64::from(batch.last_offset_delta()))
            % (i64::from(i32::MAX) + 1)) as i32;
        let (marker, coordinator_epoch) = if batch.is_control() {
            marker_of(batch).unwrap_or((None, -1))
        } else {
            (None, -1)
        };
        Some(ProducerBatch {
            producer_id: batch.producer_id(),
            epoch: batch.producer_epoch(),
            first_seq,
            last_seq,
            max_timestamp: batch.max_timestamp(),
            transactional: batch.is_transactional(),
            control: batch.is_control(),
            marker,
            coordinator_epoch,
        })
    }
}

/// The marker type and coordinator epoch of a control batch: its one record's key is
/// (version, type) and its value (version, coordinator epoch).
fn marker_of(batch: &RecordBatch) -> Option<(Option<ControlRecordType>, i32)> {
    let record = batch.records(64 * 1024).ok()?.next()?.ok()?;
    let key = record.key?;
    let kind = match i16::from_be_bytes(key.get(2..4)?.try_into().ok()?) {
        0 => ControlRecordType::Abort,
        1 => ControlRecordType::Commit,
        _ => return Some((None, -1)),
    };
    let epoch = record
        .value
        .and_then(|v| v.get(2..6).and_then(|b| b.try_into().ok()))
        .map_or(-1, i32::from_be_bytes);
    Some((Some(kind), epoch))
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    next_seq == last_seq.wrapping_add(1) || (last_seq == i32::MAX && next_seq == 0)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: first offset → producer ID.
    ongoing: BTreeMap<i64, i64>,
}

impl ProducerStateManager {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer's state, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(&id, entry)| (id, entry))
    }

    /// The first offset of the oldest open transaction.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// Checks a transaction marker for `producer_id`: it may not come from an older
    /// producer epoch or an older coordinator epoch than the partition has seen.
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), ProducerError> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if epoch < entry.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerError::CoordinatorFenced {
                epoch: coordinator_epoch,
                current: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Checks a leader append of `batches` (in order), each as if the ones before it
    /// were already written. A retry of a batch already in the log stops the check.
    pub fn check(&self, batches: &[ProducerBatch]) -> Result<Check, ProducerError> {
        // Entries this request changed, so a request's later batches see its earlier ones.
        let mut pending: HashMap<i64, (i16, Option<i32>)> = HashMap::new();
        for batch in batches {
            let known = self.producers.get(&batch.producer_id);
            if let Some(duplicate) = known.and_then(|entry| {
                entry.batches.iter().find(|b| {
                    entry.epoch == batch.epoch
                        && b.first_seq == batch.first_seq
                        && b.last_seq == batch.last_seq
                })
            }) {
                return Ok(Check::Duplicate(*duplicate));
            }
            let current = pending.get(&batch.producer_id).copied().or_else(|| {
                known.map(|entry| (entry.epoch, entry.batches.back().map(|b| b.last_seq)))
            });
            let in_txn = known.is_some_and(|e| e.current_txn_first_offset.is_some());
            if in_txn && !batch.transactional {
                return Err(ProducerError::InvalidTxnState {
                    producer_id: batch.producer_id,
                });
            }
            if let Some((epoch, last_seq)) = current {
                if batch.epoch < epoch {
                    return Err(ProducerError::InvalidEpoch {
                        producer_id: batch.producer_id,
                        epoch: batch.epoch,
                        current: epoch,
                    });
                }
                let out_of_order = if batch.epoch > epoch {
                    batch.first_seq != 0
                } else {
                    last_seq.is_some_and(|last| !in_sequence(last, batch.first_seq))
                };
                if out_of_order {
                    return Err(ProducerError::OutOfOrderSequence {
                        producer_id: batch.producer_id,
                        first_seq: batch.first_seq,
                        last_seq: last_seq.unwrap_or(-1),
                    });
                }
            }
            pending.insert(batch.producer_id, (batch.epoch, Some(batch.last_seq)));
        }
        Ok(Check::Append)
    }

    /// Records a batch written at `first_offset..=last_offset` (by a leader append, a
    /// replica, or recovery). A transactional batch opens the producer's transaction if
    /// none is open; a marker ends it (and is returned as the transaction it ended); other
    /// control batches only move the producer's epoch.
    pub fn update(
        &mut self,
        batch: &ProducerBatch,
        first_offset: i64,
        last_offset: i64,
    ) -> Option<CompletedTxn> {
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::new(),
                last_timestamp: batch.max_timestamp,
                current_txn_first_offset: None,
                coordinator_epoch: -1,
            });
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        entry.last_timestamp = entry.last_timestamp.max(batch.max_timestamp);
        if batch.control {
            let marker = batch.marker?;
            entry.coordinator_epoch = entry.coordinator_epoch.max(batch.coordinator_epoch);
            let first = entry.current_txn_first_offset.take()?;
            self.ongoing.remove(&first);
            return Some(CompletedTxn {
                producer_id: batch.producer_id,
                first_offset: first,
                last_offset: first_offset,
                aborted: marker == ControlRecordType::Abort,
            });
        }
        if batch.transactional && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(first_offset);
            self.ongoing.insert(first_offset, batch.producer_id);
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            first_offset,
            last_offset,
            max_timestamp: batch.max_timestamp,
        });
        None
    }

    /// Records a stored batch (with its offsets); returns the transaction a marker ended.
    pub fn update_from_batch(&mut self, batch: &RecordBatch) -> Option<CompletedTxn> {
        let producer = ProducerBatch::of(batch)?;
        self.update(&producer, batch.base_offset(), batch.last_offset())
    }

    /// Forgets producers whose newest batch is `expiration_ms` older than `now_ms`, unless
    /// they have a transaction open. Returns how many went.
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, entry| {
            entry.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_timestamp) < expiration_ms
        });
        before - self.producers.len()
    }

    /// The snapshot file's contents: a CRC-32C of the rest, a version, then each producer.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(8 + self.producers.len() * 64);
        body.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        body.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.producers[id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.epoch.to_be_bytes());
            body.extend_from_slice(&entry.last_timestamp.to_be_bytes());
            body.extend_from_slice(&entry.current_txn_first_offset.unwrap_or(-1).to_be_bytes());
            body.extend_from_slice(&entry.coordinator_epoch.to_be_bytes());
            body.push(entry.batches.len() as u8);
            for b in &entry.batches {
                body.extend_from_slice(&b.first_seq.to_be_bytes());
                body.extend_from_slice(&b.last_seq.to_be_bytes());
                body.extend_from_slice(&b.first_offset.to_be_bytes());
                body.extend_from_slice(&b.last_offset.to_be_bytes());
                body.extend_from_slice(&b.max_timestamp.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a snapshot; `None` if it is damaged or of an unknown version.
    pub fn from_snapshot(bytes: &[u8]) -> Option<ProducerStateManager> {
        let (crc, body) = bytes.split_first_chunk::<4>()?;
        if u32::from_be_bytes(*crc) != crc32c::crc32c(body) {
            return None;
        }
        let mut reader = Reader(body);
        let version = reader.u16()?;
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return None;
        }
        let count = reader.u32()?;
        let mut producers = HashMap::new();
        let mut ongoing = BTreeMap::new();
        for _ in 0..count {
            let id = reader.i64()?;
            let epoch = reader.u16()? as i16;
            let last_timestamp = reader.i64()?;
            let (current_txn_first_offset, coordinator_epoch) = if version >= 2 {
                let first = reader.i64()?;
                (Some(first).filter(|&f| f >= 0), reader.u32()? as i32)
            } else {
                (None, -1)
            };
            if let Some(first) = current_txn_first_offset {
                ongoing.insert(first, id);
            }
            let n = reader.u8()?;
            if usize::from(n) > BATCHES_PER_PRODUCER {
                return None;
            }
            let mut batches = VecDeque::with_capacity(usize::from(n));
            for _ in 0..n {
                batches.push_back(BatchMetadata {
                    first_seq: reader.u32()? as i32,
                    last_seq: reader.u32()? as i32,
                    first_offset: reader.i64()?,
                    last_offset: reader.i64()?,
                    max_timestamp: reader.i64()?,
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                    current_txn_first_offset,
                    coordinator_epoch,
                },
            );
        }
        reader
            .0
            .is_empty()
            .then_some(ProducerStateManager { producers, ongoing })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

/// The name of the snapshot file for `offset`.
pub fn snapshot_file_name(offset: i64) -> String {
    format!("{offset:020}.{SNAPSHOT_SUFFIX}")
}

/// The offset a snapshot file's name stands for.
pub fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: first_seq + count - 1,
            max_timestamp: 1_000,
            transactional: false,
            control: false,
            marker: None,
            coordinator_epoch: -1,
        }
    }

    #[test]
    fn sequences_must_follow_within_an_epoch_and_restart_in_a_new_one() {
        let mut state = ProducerStateManager::new();
        // An unknown producer may start anywhere.
        assert_eq!(state.check(&[batch(7, 0, 40, 10)]), Ok(Check::Append));
        state.update(&batch(7, 0, 40, 10), 0, 9);
        assert_eq!(state.check(&[batch(7, 0, 50, 5)]), Ok(Check::Append));
        assert!(matches!(
            state.check(&[batch(7, 0, 52, 5)]),
            Err(ProducerError::OutOfOrderSequence { last_seq: 49, .. })
        ));
        // Within one request, the second batch follows the first.
        assert_eq!(
            state.check(&[batch(7, 0, 50, 5), batch(7, 0, 55, 1)]),
            Ok(Check::Append)
        );
        assert!(
            state
                .check(&[batch(7, 0, 50, 5), batch(7, 0, 50, 1)])
                .is_err()
        );
        assert!(matches!(
            state.check(&[batch(7, 1, 3, 1)]),
            Err(ProducerError::OutOfOrderSequence { .. })
        ));
        assert_eq!(state.check(&[batch(7, 1, 0, 1)]), Ok(Check::Append));
        state.update(&batch(7, 1, 0, 1), 10, 10);
        assert!(matches!(
            state.check(&[batch(7, 0, 50, 1)]),
            Err(ProducerError::InvalidEpoch { current: 1, .. })
        ));
        assert!(in_sequence(i32::MAX, 0));
    }

    #[test]
    fn retries_of_the_last_five_batches_are_duplicates() {
        let mut state = ProducerStateManager::new();
        for i in 0..7 {
            state.update(
                &batch(1, 0, i * 10, 10),
                i64::from(i) * 10,
                i64::from(i) * 10 + 9,
            );
        }
        let Ok(Check::Duplicate(original)) = state.check(&[batch(1, 0, 60, 10)]) else {
            panic!("not a duplicate");
        };
        assert_eq!((original.first_offset, original.last_offset), (60, 69));
        assert!(matches!(
            state.check(&[batch(1, 0, 20, 10)]),
            Ok(Check::Duplicate(_))
        ));
        // Older than the last five: no longer recognised, and out of order.
        assert!(state.check(&[batch(1, 0, 10, 10)]).is_err());
        assert_eq!(
            state.entry(1).map(|e| e.batches.len()),
            Some(BATCHES_PER_PRODUCER)
        );
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let mut state = ProducerStateManager::new();
        state.update(&batch(1, 3, 0, 4), 0, 3);
        state.update(
            &ProducerBatch {
                transactional: true,
                ..batch(2, 0, 9, 1)
            },
            4,
            4,
        );
        assert_eq!(state.first_unstable_offset(), Some(4));
        let bytes = state.to_snapshot();
        assert_eq!(
            ProducerStateManager::from_snapshot(&bytes),
            Some(state.clone())
        );
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert_eq!(
                ProducerStateManager::from_snapshot(&damaged),
                None,
                "byte {i}"
            );
        }
        assert_eq!(
            ProducerStateManager::from_snapshot(&bytes[..bytes.len() - 1]),
            None
        );
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(42)), Some(42));
        assert_eq!(parse_snapshot_file_name("42.snapshot"), None);
    }

    #[test]
    fn idle_producers_expire() {
        let mut state = ProducerStateManager::new();
        state.update(&batch(1, 0, 0, 1), 0, 0);
        state.update(
            &ProducerBatch {
                max_timestamp: 5_000,
                ..batch(2, 0, 0, 1)
            },
            1,
            1,
        );
        assert_eq!(state.remove_expired(5_500, 1_000), 1);
        assert!(state.entry(1).is_none() && state.entry(2).is_some());
    }
}
