//! What the coordinators share about their internal topics' partitions: a slot per
//! partition, appending their records in batches, and reading a partition back at load.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use spool_log::{LogError, SharedLog};
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::{RecordBatch, RecordBatchBuilder, RecordBatches};

use crate::replica::{Replica, WriteError};
use crate::state::BrokerState;

/// A coordinator's slots: one per partition of its internal topic that this broker
/// leads.
pub struct Slots<T>(RwLock<BTreeMap<i32, Arc<T>>>);

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots(RwLock::new(BTreeMap::new()))
    }
}

impl<T> Slots<T> {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<i32, Arc<T>>> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every slot, in partition order.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.read().values().cloned().collect()
    }

    /// The slot of `partition`; NOT_COORDINATOR when this broker does not lead it (the
    /// client looks for the coordinator again).
    pub fn get(&self, partition: i32) -> Result<Arc<T>, ErrorCode> {
        self.read()
            .get(&partition)
            .cloned()
            .ok_or(ErrorCode::NotCoordinator)
    }

    /// Makes the slots those of `led` (partition, replica): a new slot, made by
    /// `make(partition, replica)`, for each partition without one, and none for partitions
    /// no longer led. Returns the new slots and the removed ones (which requests still
    /// holding them may reach: the caller retires them).
    pub fn follow(
        &self,
        led: Vec<(i32, Arc<Replica>)>,
        make: impl Fn(i32, Arc<Replica>) -> T,
    ) -> (Vec<Arc<T>>, Vec<Arc<T>>) {
        let mut slots = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep: std::collections::BTreeSet<i32> = led.iter().map(|(p, _)| *p).collect();
        let removed: Vec<i32> = slots
            .keys()
            .copied()
            .filter(|p| !keep.contains(p))
            .collect();
        let removed = removed
            .into_iter()
            .filter_map(|p| slots.remove(&p))
            .collect();
        let mut added = Vec::new();
        for (partition, replica) in led {
            if let std::collections::btree_map::Entry::Vacant(entry) = slots.entry(partition) {
                added.push(Arc::clone(entry.insert(Arc::new(make(partition, replica)))));
            }
        }
        (added, removed)
    }

    /// Drops every slot; returns them, for the caller to retire.
    pub fn clear(&self) -> Vec<Arc<T>> {
        std::mem::take(
            &mut *self
                .0
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
        .into_values()
        .collect()
    }
}

/// Records per appended batch are cut at about this many bytes, well below the topics'
/// `max.message.bytes`.
const BATCH_BYTES: usize = 256 * 1024;

/// The largest read while loading a partition.
const LOAD_READ_BYTES: u64 = 4 << 20;

/// Where a coordinator's write ended: the offset after it, and the leader epoch it was
/// written under (to wait for the ISR under, [`BrokerState::wait_replicated`]).
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub end: i64,
    pub epoch: i32,
}

/// Appends (key, value) records as the partition's leader, in batches built by `batch`
/// (called for each batch, after the previous one is appended). Every batch is written
/// under the same leader epoch, or the write stops with NOT_LEADER_OR_FOLLOWER.
pub fn append_records(
    replica: &Replica,
    records: impl IntoIterator<Item = Result<(Bytes, Option<Bytes>), LogError>>,
    now: i64,
    batch: impl Fn() -> RecordBatchBuilder,
) -> Result<Written, WriteError> {
    let mut builder = batch();
    let mut size = 0;
    let mut written: Option<Written> = None;
    let mut flush = |builder: RecordBatchBuilder| -> Result<(), WriteError> {
        if builder.record_count() == 0 {
            return Ok(());
        }
        let records = builder.build().map_err(LogError::from)?;
        let (end, epoch) = replica.write_as_leader(|l, epoch| {
            let info = l.append_as_leader(records, epoch, now)?;
            Ok((info.last_offset + 1, info.last_offset + 1))
        })?;
        if written.is_some_and(|w| w.epoch != epoch) {
            return Err(WriteError::NotLeader);
        }
        written = Some(Written { end, epoch });
        Ok(())
    };
    for record in records {
        let (key, value) = record?;
        size += key.len() + value.as_ref().map_or(0, Bytes::len);
        builder
            .append(now, Some(&key), value.as_deref(), &[])
            .map_err(LogError::from)?;
        if size >= BATCH_BYTES {
            // The next batch is made only once this one is in the log (a producer's
            // batch takes its sequence from what the log holds).
            flush(std::mem::replace(&mut builder, plain_batch()))?;
            builder = batch();
            size = 0;
        }
    }
    flush(builder)?;
    match written {
        Some(written) => Ok(written),
        None => {
            let (end, epoch) = replica.write_as_leader(|l, _| {
                let end = l.log_end_offset();
                Ok((end, end))
            })?;
            Ok(Written { end, epoch })
        }
    }
}

/// The error a coordinator answers when its write did not reach the ISR: clients look
/// for the coordinator again when it moved, and retry otherwise (Kafka's mapping).
pub fn as_coordinator_error(error: ErrorCode) -> ErrorCode {
    match error {
        ErrorCode::NotLeaderOrFollower => ErrorCode::NotCoordinator,
        _ => ErrorCode::CoordinatorNotAvailable,
    }
}

/// The plain batch builder the coordinators write their records with.
pub fn plain_batch() -> RecordBatchBuilder {
    RecordBatchBuilder::new(Compression::None)
}

/// A transactional batch of `producer_id` at `producer_epoch`, its sequence following the
/// producer's last batch in `log` (0 in a new epoch).
pub fn transactional_batch(
    log: &SharedLog,
    producer_id: i64,
    producer_epoch: i16,
) -> RecordBatchBuilder {
    let sequence = log.with_log(|l| {
        l.producer_state()
            .entry(producer_id)
            .filter(|e| e.epoch == producer_epoch)
            .and_then(|e| e.batches.back())
            .map_or(0, |b| {
                if b.last_seq == i32::MAX {
                    0
                } else {
                    b.last_seq + 1
                }
            })
    });
    plain_batch()
        .producer(producer_id, producer_epoch, sequence)
        .transactional(true)
}

/// Hands every batch of the partition to `visit`, in order, from the log start to the
/// log end as it was when the load began. Returns early on a read error.
pub fn for_each_batch(
    log: &Arc<SharedLog>,
    mut visit: impl FnMut(&RecordBatch),
) -> Result<(), LogError> {
    let end = log.with_log(|l| l.log_end_offset());
    let mut offset = log.with_log(|l| l.log_start_offset());
    while offset < end {
        let read = log.with_log(|l| l.read(offset, LOAD_READ_BYTES, end))?;
        let Some(range) = read.range else { break };
        for batch in RecordBatches::new(range.to_bytes()?) {
            let Ok(batch) = batch else { break };
            if batch.last_offset() >= offset {
                visit(&batch);
            }
        }
        if read.next_offset <= offset {
            break;
        }
        offset = read.next_offset;
    }
    Ok(())
}

/// Creates a coordinator's internal topic: compacted, `partitions` partitions of
/// `segment_bytes` segments, `replication_factor` replicas or as many as there are usable
/// brokers if fewer (nothing if it exists).
pub async fn create_internal_topic(
    state: &BrokerState,
    topic: &str,
    partitions: i32,
    segment_bytes: u64,
    replication_factor: i16,
) -> Result<(), crate::BrokerError> {
    let usable = state.with_image(|image| {
        image
            .brokers()
            .filter(|b| !b.fenced && !b.in_controlled_shutdown)
            .count()
    });
    let replication_factor = replication_factor
        .min(i16::try_from(usable).unwrap_or(i16::MAX))
        .max(1);
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ]);
    match state
        .create_topic(topic, partitions, replication_factor, Vec::new(), configs)
        .await
    {
        Err(crate::BrokerError::Refused(spool_protocol::ErrorCode::TopicAlreadyExists, _)) => {
            Ok(())
        }
        other => other,
    }
}

/// The partitions of an internal topic that this broker leads, with their replicas, in
/// partition order.
pub fn led_partitions(state: &BrokerState, topic: &str) -> Vec<(i32, Arc<Replica>)> {
    let node = state.config.node_id;
    let led: Vec<i32> = state.with_image(|image| {
        image.topic(topic).map_or_else(Vec::new, |t| {
            t.partitions
                .iter()
                .filter(|p| p.leader == node)
                .map(|p| p.index)
                .collect()
        })
    });
    led.into_iter()
        .filter_map(|i| Some((i, state.replica(topic, i)?)))
        .collect()
}
