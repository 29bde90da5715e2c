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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use spool_log::LogError;
use spool_protocol::ErrorCode;
use spool_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use spool_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use spool_protocol::messages::{
    AddPartitionsToTxnRequest, RequestBody, ResponseBody, WriteTxnMarkersRequest,
};
use spool_protocol::record_batch::ControlRecordType;

use super::records::TxnRecord;
use super::shard::{MarkerJob, Producer, TopicPartition, TxnShard};
use super::{TXN_TOPIC, TxnConfig, partition_for};
use crate::coordinator_log::{
    Slots, Written, append_records, as_coordinator_error, create_internal_topic, for_each_batch,
    led_partitions, plain_batch,
};
use crate::group::OFFSETS_TOPIC;
use crate::replica::{Replica, WriteError};
use crate::state::{BrokerState, lock, now_ms};

struct Slot {
    partition: i32,
    replica: Arc<Replica>,
    /// `None` while the partition loads.
    shard: Mutex<Option<TxnShard>>,
    /// Set (with `shard` locked) once this broker stopped serving the partition:
    /// requests still holding the slot get NOT_COORDINATOR.
    retired: AtomicBool,
}

impl Slot {
    /// The shard under `guard`, if it serves requests: NOT_COORDINATOR once retired, else
    /// COORDINATOR_LOAD_IN_PROGRESS while loading.
    fn serving<'a>(&self, guard: &'a mut Option<TxnShard>) -> Result<&'a mut TxnShard, ErrorCode> {
        if self.retired.load(Ordering::Acquire) {
            return Err(ErrorCode::NotCoordinator);
        }
        guard.as_mut().ok_or(ErrorCode::CoordinatorLoadInProgress)
    }

    fn retire(&self) {
        let mut guard = lock(&self.shard);
        self.retired.store(true, Ordering::Release);
        *guard = None;
    }
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

    /// Serves the partitions `led` (partition, replica) and no others, reading each newly
    /// led partition back first (blocking).
    pub fn follow(&self, led: Vec<(i32, Arc<Replica>)>) {
        let (slots, removed) = self.slots.follow(led, |partition, replica| Slot {
            partition,
            replica,
            shard: Mutex::new(None),
            retired: AtomicBool::new(false),
        });
        for slot in &removed {
            slot.retire();
        }
        for slot in &slots {
            load_slot(slot, &self.config);
        }
    }

    /// Drops the shards and their logs (at shutdown, so the logs can close).
    pub fn detach(&self) {
        for slot in self.slots.clear() {
            slot.retire();
        }
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
        let (result, written) = self.step_on(state, &slot, step)?;
        state
            .wait_replicated(TXN_TOPIC, slot.partition, written)
            .await
            .map_err(as_coordinator_error)?;
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
    ) -> Result<(R, Written), ErrorCode> {
        let mut guard = lock(&slot.shard);
        let shard = slot.serving(&mut guard)?;
        let now = now_ms();
        let mut allocate = || state.try_allocate_producer_id();
        let result = step(shard, now, &mut allocate);
        let records = shard.take_records();
        match append(&slot.replica, &records, now) {
            Ok(written) => Ok((result, written)),
            Err(e) => {
                tracing::error!(partition = slot.partition, error = %e, "transaction coordinator append failed; reloading the partition");
                *guard = None;
                drop(guard);
                load_slot(slot, &self.config);
                Err(as_coordinator_error(e.error_code()))
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
        let mut guard = lock(&slot.shard);
        Ok(f(slot.serving(&mut guard)?))
    }

    /// Advances time in every shard: aborts timed-out transactions, resumes the ones a
    /// crash left half-ended, removes expired IDs. Marker jobs run on their own tasks.
    pub async fn tick(&self, state: &Arc<BrokerState>) {
        for slot in self.slots.all() {
            let Ok((jobs, written)) = self.step_on(state, &slot, |shard, now, allocate| {
                shard.tick(now, allocate)
            }) else {
                continue;
            };
            if state
                .wait_replicated(TXN_TOPIC, slot.partition, written)
                .await
                .is_err()
            {
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
/// are durable: directly in the partitions this broker leads, with WriteTxnMarkers to the
/// leaders of the others. A partition that no longer exists is skipped; one whose producer
/// already moved past this epoch has nothing left to end. Any other failure fails the job
/// (a later tick hands it out again).
async fn write_markers(state: &BrokerState, job: &MarkerJob) -> Result<(), ErrorCode> {
    let marker = if job.commit {
        ControlRecordType::Commit
    } else {
        ControlRecordType::Abort
    };
    let producer = (job.producer_id, job.producer_epoch);
    let coordinator_epoch = state
        .partition_leader(TXN_TOPIC, state.txns.partition_for(&job.transactional_id))
        .map_or(0, |(_, epoch)| epoch);
    let me = state.config.node_id;
    let mut written = Vec::with_capacity(job.partitions.len());
    let mut elsewhere: BTreeMap<i32, Vec<&TopicPartition>> = BTreeMap::new();
    for tp in &job.partitions {
        let (topic, partition) = tp;
        match state.partition_leader(topic, *partition) {
            None => {}
            Some((leader, _)) if leader == me => {
                // Led here but not open (its log failed): not done; a later tick retries.
                if state.partition(topic, *partition).is_none() {
                    return Err(ErrorCode::NotLeaderOrFollower);
                }
                if let Some(end) = write_marker(
                    state,
                    topic,
                    *partition,
                    producer,
                    marker,
                    coordinator_epoch,
                )? {
                    written.push((topic, *partition, end));
                }
            }
            Some((leader, _)) if leader < 0 => return Err(ErrorCode::NotLeaderOrFollower),
            Some((leader, _)) => elsewhere.entry(leader).or_default().push(tp),
        }
    }
    for (leader, partitions) in elsewhere {
        let request = WriteTxnMarkersRequest {
            markers: vec![WritableTxnMarker {
                producer_id: job.producer_id,
                producer_epoch: job.producer_epoch,
                transaction_result: job.commit,
                topics: by_topic(&partitions),
                coordinator_epoch,
                ..Default::default()
            }],
            ..Default::default()
        };
        let answer = state
            .send_to_broker(leader, RequestBody::WriteTxnMarkers(request), 1)
            .await;
        let response = match answer {
            Ok(ResponseBody::WriteTxnMarkers(response)) => response,
            Ok(_) => return Err(ErrorCode::UnknownServerError),
            Err(e) => {
                tracing::debug!(leader, error = %e, "transaction markers not sent");
                return Err(ErrorCode::NetworkException);
            }
        };
        let answered: usize = response
            .markers
            .iter()
            .flat_map(|m| &m.topics)
            .map(|t| t.partitions.len())
            .sum();
        if answered != partitions.len() {
            return Err(ErrorCode::UnknownServerError);
        }
        for topic in response.markers.iter().flat_map(|m| &m.topics) {
            for p in &topic.partitions {
                match ErrorCode::from_wire(p.error_code) {
                    // Nothing of the transaction is open there (any more).
                    ErrorCode::None | ErrorCode::InvalidProducerEpoch => {}
                    ErrorCode::UnknownTopicOrPartition
                        if state
                            .partition_leader(&topic.name, p.partition_index)
                            .is_none() => {}
                    error => return Err(error),
                }
            }
        }
    }
    for (topic, partition, end) in written {
        state.wait_replicated(topic, partition, end).await?;
    }
    Ok(())
}

/// Has the coordinator of `id` add the partition to the producer's transaction
/// (`implicit`: transaction version 2) or verify that it was added (KIP-890): this
/// broker's own coordinator if it leads the ID's partition of `__transaction_state`, else
/// the leader's, with AddPartitionsToTxn v5 as a Kafka partition leader sends it.
pub async fn join_or_verify(
    state: &BrokerState,
    id: &str,
    producer: Producer,
    (topic, partition): (&str, i32),
    implicit: bool,
) -> Result<(), ErrorCode> {
    let wanted = [(topic.to_string(), partition)];
    match state.partition_leader(TXN_TOPIC, state.txns.partition_for(id)) {
        Some((leader, _)) if leader == state.config.node_id => state
            .txns
            .run(state, id, |shard, now, _| {
                shard.add_partitions(
                    id,
                    producer,
                    &wanted,
                    !implicit,
                    if implicit { 2 } else { 0 },
                    now,
                )
            })
            .await
            .and_then(|outcome| outcome),
        Some((leader, _)) if leader >= 0 => {
            add_remotely(state, leader, id, producer, (topic, partition), implicit).await
        }
        _ => Err(ErrorCode::CoordinatorNotAvailable),
    }
}

async fn add_remotely(
    state: &BrokerState,
    leader: i32,
    id: &str,
    producer: Producer,
    (topic, partition): (&str, i32),
    implicit: bool,
) -> Result<(), ErrorCode> {
    let request = AddPartitionsToTxnRequest {
        transactions: vec![AddPartitionsToTxnTransaction {
            transactional_id: id.to_string(),
            producer_id: producer.id,
            producer_epoch: producer.epoch,
            verify_only: !implicit,
            topics: vec![AddPartitionsToTxnTopic {
                name: topic.to_string(),
                partitions: vec![partition],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let answer = state
        .send_to_broker(leader, RequestBody::AddPartitionsToTxn(request), 5)
        .await;
    let response = match answer {
        Ok(ResponseBody::AddPartitionsToTxn(response)) => response,
        Ok(_) => return Err(ErrorCode::UnknownServerError),
        Err(e) => {
            tracing::debug!(leader, error = %e, "transaction coordinator unreachable");
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
    };
    if response.error_code != ErrorCode::None.code() {
        return Err(ErrorCode::from_wire(response.error_code));
    }
    let code = response
        .results_by_transaction
        .iter()
        .flat_map(|t| &t.topic_results)
        .flat_map(|t| &t.results_by_partition)
        .map(|p| p.partition_error_code)
        .find(|&code| code != ErrorCode::None.code())
        .unwrap_or(ErrorCode::None.code());
    match ErrorCode::from_wire(code) {
        ErrorCode::None => Ok(()),
        error => Err(error),
    }
}

/// Partitions grouped by topic, as WriteTxnMarkers lists them.
fn by_topic(partitions: &[&TopicPartition]) -> Vec<WritableTxnMarkerTopic> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        topics.entry(topic).or_default().push(*partition);
    }
    topics
        .into_iter()
        .map(|(name, partition_indexes)| WritableTxnMarkerTopic {
            name: name.to_string(),
            partition_indexes,
            ..Default::default()
        })
        .collect()
}

/// Appends one transaction marker for `(producer ID, epoch)` to a partition (through the
/// group coordinator for `__consumer_offsets`, whose pending offsets it decides) and
/// wakes its readers. Returns where the marker ended; `None` when there is nothing to end
/// there.
pub fn write_marker(
    state: &BrokerState,
    topic: &str,
    partition: i32,
    (producer_id, producer_epoch): (i64, i16),
    marker: ControlRecordType,
    coordinator_epoch: i32,
) -> Result<Option<Written>, ErrorCode> {
    let Some(replica) = state.replica(topic, partition) else {
        return Ok(None);
    };
    if topic == OFFSETS_TOPIC {
        return state.groups.complete_transaction(
            state,
            partition,
            (producer_id, producer_epoch),
            marker,
            coordinator_epoch,
        );
    }
    let written = append_marker(
        &replica,
        marker,
        (producer_id, producer_epoch),
        coordinator_epoch,
        now_ms(),
    )?;
    if written.is_some() {
        state.wakeups.wake(topic, partition);
    }
    Ok(written)
}

/// Appends a marker as the partition's leader, stamped with its leader epoch, and
/// advances the high watermark as far as the ISR allows. Returns where it ended, or
/// `None` when the partition's producer is already past this epoch (nothing of the
/// transaction is open there).
pub fn append_marker(
    replica: &Replica,
    marker: ControlRecordType,
    (producer_id, producer_epoch): (i64, i16),
    coordinator_epoch: i32,
    now: i64,
) -> Result<Option<Written>, ErrorCode> {
    let appended = replica.write_as_leader(|l, epoch| {
        let info = l.append_marker(
            marker,
            producer_id,
            producer_epoch,
            coordinator_epoch,
            epoch,
            now,
        )?;
        Ok((info.last_offset + 1, info.last_offset + 1))
    });
    match appended {
        Ok((end, epoch)) => Ok(Some(Written { end, epoch })),
        Err(WriteError::Log(e)) if is_stale_marker(&e) => Ok(None),
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

fn append(replica: &Replica, records: &[TxnRecord], now: i64) -> Result<Written, WriteError> {
    let encoded = records
        .iter()
        .map(|record| record.encode().map_err(LogError::from));
    append_records(replica, encoded, now, plain_batch)
}

/// Reads a partition back into a fresh shard and serves it.
fn load_slot(slot: &Slot, config: &TxnConfig) {
    let mut shard = TxnShard::new(config.clone());
    let loaded = for_each_batch(&slot.replica.log, |batch| {
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
    let mut guard = lock(&slot.shard);
    if !slot.retired.load(Ordering::Acquire) {
        *guard = Some(shard);
    }
}

/// Creates `__transaction_state` (compacted, `transaction.state.log.num.partitions`
/// partitions) if it does not exist, and serves its shards.
pub async fn ensure_txn_topic(state: &BrokerState) -> Result<(), crate::BrokerError> {
    let exists = || state.with_image(|image| image.topic(TXN_TOPIC).is_some());
    if exists() {
        return Ok(());
    }
    let _creating = state.txns.creating.lock().await;
    if exists() {
        return Ok(());
    }
    let config = state.txns.config();
    create_internal_topic(
        state,
        TXN_TOPIC,
        config.topic_partitions,
        config.topic_segment_bytes,
        state
            .config
            .replication
            .transaction_state_log_replication_factor,
    )
    .await?;
    // Applying the new topic gave this broker the shards of the partitions it leads.
    Ok(())
}

/// The partitions of `__transaction_state` this broker leads, with their replicas.
pub fn txn_logs(state: &BrokerState) -> Vec<(i32, Arc<Replica>)> {
    led_partitions(state, TXN_TOPIC)
}
