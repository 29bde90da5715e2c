//! Runs the transaction shards against `__transaction_state`, as the group runtime runs
//! the group shards: a step runs with its shard locked, the records it produced are
//! appended in the same critical section, and its result is released once the log is
//! durable up to the end of what was appended.
//!
//! Ending a transaction takes three durable steps: the decision (PrepareCommit or
//! PrepareAbort), a marker in every partition of the transaction, then the completion.
//! [`TxnCoordinator::finish`] runs the last two; EndTxn waits for all three, so a producer
//! told its commit succeeded can rely on read_committed readers seeing it. A crash
//! between them leaves the decision in the log: the load hands the transaction out again
//! and the markers are written then.

use std::sync::{Arc, Mutex};

use spool_log::{LogError, SharedLog};
use spool_protocol::ErrorCode;
use spool_protocol::record_batch::ControlRecordType;

use super::records::TxnRecord;
use super::shard::{MarkerJob, TxnShard};
use super::{TXN_TOPIC, TxnConfig, partition_for};
use crate::coordinator_log::{
    Slots, append_records, create_internal_topic, for_each_batch, internal_topic_logs, plain_batch,
};
use crate::group::OFFSETS_TOPIC;
use crate::state::{BrokerState, lock, now_ms};

struct Slot {
    partition: i32,
    log: Arc<SharedLog>,
    /// `None` while the partition loads.
    shard: Mutex<Option<TxnShard>>,
}

pub struct TxnCoordinator {
    config: TxnConfig,
    /// Held while `__transaction_state` is created.
    creating: tokio::sync::Mutex<()>,
    slots: Slots<Slot>,
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            creating: tokio::sync::Mutex::new(()),
            slots: Slots::default(),
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// The partition of `__transaction_state` that coordinates `transactional_id`.
    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        partition_for(transactional_id, self.config.topic_partitions)
    }

    pub fn is_attached(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Serves the partitions `logs` (index = partition), reading each back first.
    pub fn attach(&self, logs: Vec<Arc<SharedLog>>) {
        let slots = self.slots.fill(logs, |partition, log| Slot {
            partition,
            log,
            shard: Mutex::new(None),
        });
        for slot in &slots {
            load_slot(slot, &self.config);
        }
    }

    /// Drops the shards and their logs (at shutdown, so the logs can close).
    pub fn detach(&self) {
        self.slots.clear();
    }

    fn slot(&self, transactional_id: &str) -> Result<Arc<Slot>, ErrorCode> {
        self.slots.get(self.partition_for(transactional_id))
    }

    /// Runs `step` on the shard of `transactional_id` and returns its result once what it
    /// wrote (and everything before) is durable. `step` gets the time and a producer ID
    /// allocator.
    pub async fn run<R>(
        &self,
        state: &BrokerState,
        transactional_id: &str,
        step: impl FnOnce(&mut TxnShard, i64, &mut dyn FnMut() -> Result<i64, ErrorCode>) -> R,
    ) -> Result<R, ErrorCode> {
        let slot = self.slot(transactional_id)?;
        let (result, end) = self.step_on(state, &slot, step)?;
        state.flusher.wait_durable(&slot.log, end).await?;
        Ok(result)
    }

    /// Runs `step` on the slot's shard and appends the records it produced, with the
    /// shard locked; returns its result and the log end offset to wait for. If the append
    /// fails the shard is reloaded from its log.
    fn step_on<R>(
        &self,
        state: &BrokerState,
        slot: &Slot,
        step: impl FnOnce(&mut TxnShard, i64, &mut dyn FnMut() -> Result<i64, ErrorCode>) -> R,
    ) -> Result<(R, i64), ErrorCode> {
        let mut guard = lock(&slot.shard);
        let shard = guard.as_mut().ok_or(ErrorCode::CoordinatorLoadInProgress)?;
        let now = now_ms();
        let mut allocate = || state.try_allocate_producer_id();
        let result = step(shard, now, &mut allocate);
        let records = shard.take_records();
        match append(&slot.log, &records, now) {
            Ok(end) => Ok((result, end)),
            Err(e) => {
                tracing::error!(partition = slot.partition, error = %e, "transaction coordinator append failed; reloading the partition");
                *guard = None;
                drop(guard);
                load_slot(slot, &self.config);
                Err(ErrorCode::CoordinatorNotAvailable)
            }
        }
    }

    /// Writes the markers of `job` to its partitions, durably, then completes the
    /// transaction. Returns the producer ID and epoch the client continues with. On
    /// failure the job is handed out again by a later tick.
    pub async fn finish(
        &self,
        state: &BrokerState,
        job: MarkerJob,
    ) -> Result<super::shard::Producer, ErrorCode> {
        if let Err(error) = write_markers(state, &job).await {
            tracing::warn!(transactional_id = %job.transactional_id, ?error, "transaction markers not written; retrying later");
            let _ = self
                .run(state, &job.transactional_id, |shard, _, _| {
                    shard.retry_later(&job)
                })
                .await;
            return Err(error);
        }
        self.run(state, &job.transactional_id, |shard, now, _| {
            shard.complete(&job, now)
        })
        .await?
        .ok_or(ErrorCode::ConcurrentTransactions)
    }

    /// Reads every loaded shard: `f` per shard, in partition order. Shards still loading
    /// are reported through the flag.
    pub fn read_all<R>(&self, mut f: impl FnMut(&TxnShard) -> R) -> (Vec<R>, bool) {
        let mut results = Vec::new();
        let mut loading = false;
        for slot in self.slots.all() {
            match lock(&slot.shard).as_ref() {
                Some(shard) => results.push(f(shard)),
                None => loading = true,
            }
        }
        (results, loading)
    }

    /// Reads the shard of `transactional_id`.
    pub fn read<R>(
        &self,
        transactional_id: &str,
        f: impl FnOnce(&TxnShard) -> R,
    ) -> Result<R, ErrorCode> {
        let slot = self.slot(transactional_id)?;
        let guard = lock(&slot.shard);
        let shard = guard.as_ref().ok_or(ErrorCode::CoordinatorLoadInProgress)?;
        Ok(f(shard))
    }

    /// Advances time in every shard: aborts timed-out transactions, resumes the ones a
    /// crash left half-ended, removes expired IDs. Marker jobs run on their own tasks.
    pub async fn tick(&self, state: &Arc<BrokerState>) {
        for slot in self.slots.all() {
            let Ok((jobs, end)) = self.step_on(state, &slot, |shard, now, allocate| {
                shard.tick(now, allocate)
            }) else {
                continue;
            };
            if state.flusher.wait_durable(&slot.log, end).await.is_err() {
                continue;
            }
            for job in jobs {
                let state = Arc::clone(state);
                tokio::spawn(async move {
                    let _ = state.txns.finish(&state, job).await;
                });
            }
        }
    }
}

/// Writes a marker for the job's producer in each of its partitions and waits until all
/// are durable. A partition that no longer exists is skipped; one whose producer already
/// moved past this epoch has nothing left to end.
async fn write_markers(state: &BrokerState, job: &MarkerJob) -> Result<(), ErrorCode> {
    let marker = if job.commit {
        ControlRecordType::Commit
    } else {
        ControlRecordType::Abort
    };
    let mut written = Vec::with_capacity(job.partitions.len());
    for (topic, partition) in &job.partitions {
        let producer = (job.producer_id, job.producer_epoch);
        if let Some(end) = write_marker(state, topic, *partition, producer, marker, 0)? {
            written.push(end);
        }
    }
    for (log, end) in written {
        state.flusher.wait_durable(&log, end).await?;
    }
    Ok(())
}

/// Appends one transaction marker for `(producer ID, epoch)` to a partition (through the
/// group coordinator for `__consumer_offsets`, whose pending offsets it decides) and
/// wakes its readers. Returns the partition's log and the offset after the marker; `None`
/// when there is nothing to end there.
pub fn write_marker(
    state: &BrokerState,
    topic: &str,
    partition: i32,
    (producer_id, producer_epoch): (i64, i16),
    marker: ControlRecordType,
    coordinator_epoch: i32,
) -> Result<Option<(Arc<SharedLog>, i64)>, ErrorCode> {
    let Some(log) = state.partition(topic, partition) else {
        return Ok(None);
    };
    if topic == OFFSETS_TOPIC {
        let end = state.groups.complete_transaction(
            state,
            partition,
            (producer_id, producer_epoch),
            marker,
            coordinator_epoch,
        )?;
        return Ok(end.map(|end| (log, end)));
    }
    let end = append_marker(
        &log,
        marker,
        (producer_id, producer_epoch),
        coordinator_epoch,
        now_ms(),
    )?;
    if end.is_some() {
        state.wakeups.wake(topic, partition);
    }
    Ok(end.map(|end| (log, end)))
}

/// Appends a marker to `log` and, one replica being the whole ISR, commits it. Returns the
/// offset after it, or `None` when the partition's producer is already past this epoch
/// (nothing of the transaction is open there).
pub fn append_marker(
    log: &SharedLog,
    marker: ControlRecordType,
    (producer_id, producer_epoch): (i64, i16),
    coordinator_epoch: i32,
    now: i64,
) -> Result<Option<i64>, ErrorCode> {
    let appended = log.with_log(|l| {
        let info = l.append_marker(
            marker,
            producer_id,
            producer_epoch,
            coordinator_epoch,
            0,
            now,
        )?;
        l.advance_high_watermark(info.last_offset + 1);
        Ok::<_, LogError>(info.last_offset + 1)
    });
    match appended {
        Ok(end) => Ok(Some(end)),
        Err(e) if is_stale_marker(&e) => Ok(None),
        Err(e) => Err(e.error_code()),
    }
}

/// A marker the partition refused because its producer is already at a newer epoch: the
/// transaction it would end is not open there.
fn is_stale_marker(error: &LogError) -> bool {
    matches!(
        error.error_code(),
        ErrorCode::InvalidProducerEpoch | ErrorCode::TransactionCoordinatorFenced
    )
}

fn append(log: &SharedLog, records: &[TxnRecord], now: i64) -> Result<i64, LogError> {
    let encoded = records
        .iter()
        .map(|record| record.encode().map_err(LogError::from));
    append_records(log, encoded, now, plain_batch)
}

/// Reads a partition back into a fresh shard and serves it.
fn load_slot(slot: &Slot, config: &TxnConfig) {
    let mut shard = TxnShard::new(config.clone());
    let loaded = for_each_batch(&slot.log, |batch| {
        if batch.is_control() {
            return;
        }
        let Ok(records) = batch.records(64 << 20) else {
            return;
        };
        for record in records.flatten() {
            let Some(key) = record.key else { continue };
            match TxnRecord::decode(key, record.value) {
                Ok(Some(record)) => shard.replay(record),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(partition = slot.partition, error = %e, "skipping an unreadable transaction record")
                }
            }
        }
    });
    if let Err(e) = loaded {
        tracing::error!(partition = slot.partition, error = %e, "cannot load transaction partition");
    }
    *lock(&slot.shard) = Some(shard);
}

/// Creates `__transaction_state` (compacted, `transaction.state.log.num.partitions`
/// partitions) if it does not exist, and serves its shards.
pub async fn ensure_txn_topic(state: &BrokerState) -> Result<(), crate::BrokerError> {
    if state.txns.is_attached() {
        return Ok(());
    }
    let _creating = state.txns.creating.lock().await;
    if state.txns.is_attached() {
        return Ok(());
    }
    let config = state.txns.config();
    create_internal_topic(
        state,
        TXN_TOPIC,
        config.topic_partitions,
        config.topic_segment_bytes,
    )
    .await?;
    state.txns.attach(txn_logs(state));
    Ok(())
}

/// The partition logs of `__transaction_state`, in partition order.
pub fn txn_logs(state: &BrokerState) -> Vec<Arc<SharedLog>> {
    internal_topic_logs(state, TXN_TOPIC)
}
