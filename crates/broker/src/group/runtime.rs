//! Runs the group shards against `__consumer_offsets`: a request's step runs with its
//! shard locked, the records it produced are appended to the shard's partition in the same
//! critical section (so the log's order is the state machine's order), and the answers it
//! produced — to this request and to requests parked earlier — are released once the log
//! is durable up to the end of what was appended. Answers that depend on nothing new wait
//! the same way, so nobody is told about a commit a crash could still undo.
//!
//! At start every partition of `__consumer_offsets` is read back into its shard on a
//! loader thread; requests for a shard still loading get COORDINATOR_LOAD_IN_PROGRESS. If
//! an append fails, the shard's memory may be ahead of its log: the shard is dropped and
//! reloaded from what the log holds, and the requests of that step are failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spool_log::LogError;
use spool_log::producer_state::ProducerBatch;
use spool_protocol::ErrorCode;
use spool_protocol::record_batch::ControlRecordType;
use tokio::sync::{oneshot, watch};

use super::shard::{Effects, Parked, Token};
use super::{GroupConfig, GroupRecord, OFFSETS_TOPIC, Shard, partition_for};
use crate::coordinator_log::{
    Slots, Written, append_records, as_coordinator_error, create_internal_topic, for_each_batch,
    led_partitions, plain_batch, transactional_batch,
};
use crate::metadata::random_uuid;
use crate::replica::{Replica, WriteError};
use crate::state::{BrokerState, lock, now_ms};
use crate::txn::runtime::append_marker;

/// How often time advances in the shards (session timeouts, join phases, expiry).
pub const TICK: Duration = Duration::from_millis(100);

struct Slot {
    partition: i32,
    replica: Arc<Replica>,
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    /// `None` while the partition loads.
    shard: Option<Shard>,
    /// Parked requests by token.
    waiters: HashMap<Token, oneshot::Sender<Parked>>,
    /// Set once this broker stopped serving the partition: requests still holding the
    /// slot get NOT_COORDINATOR and nothing more is appended through it.
    retired: bool,
}

impl SlotInner {
    /// The shard, if it serves requests: NOT_COORDINATOR once retired, else
    /// COORDINATOR_LOAD_IN_PROGRESS while loading.
    fn serving(&mut self) -> Result<&mut Shard, ErrorCode> {
        if self.retired {
            return Err(ErrorCode::NotCoordinator);
        }
        self.shard
            .as_mut()
            .ok_or(ErrorCode::CoordinatorLoadInProgress)
    }
}

/// Stops serving a slot: its shard goes, and requests parked on it are answered
/// NOT_COORDINATOR (their senders are dropped).
fn retire(slot: &Slot) {
    let mut inner = lock(&slot.inner);
    inner.retired = true;
    inner.shard = None;
    inner.waiters.clear();
}

/// Answers to release once what was written is on every in-sync replica.
struct Release {
    partition: i32,
    written: Written,
    answers: Vec<(oneshot::Sender<Parked>, Parked)>,
}

pub struct GroupCoordinator {
    config: GroupConfig,
    /// Held while `__consumer_offsets` is created.
    creating: tokio::sync::Mutex<()>,
    /// One per partition of `__consumer_offsets`, once the topic exists.
    slots: Slots<Slot>,
    next_token: AtomicU64,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            config,
            creating: tokio::sync::Mutex::new(()),
            slots: Slots::default(),
            next_token: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The partition of `__consumer_offsets` that coordinates `group_id`.
    pub fn partition_for(&self, group_id: &str) -> i32 {
        partition_for(group_id, self.config.offsets_topic_partitions)
    }

    /// Whether every shard is loaded (and there are shards).
    pub fn is_loaded(&self) -> bool {
        let slots = self.slots.all();
        !slots.is_empty() && slots.iter().all(|s| lock(&s.inner).shard.is_some())
    }

    /// Serves the partitions `led` (partition, replica) and no others: a partition newly led
    /// is read back on a loader thread first (an empty one, such as a topic just created,
    /// serves at once); one no longer led is retired, and requests parked on it are
    /// answered NOT_COORDINATOR.
    pub fn follow(&self, led: Vec<(i32, Arc<Replica>)>) {
        let (slots, removed) = self.slots.follow(led, |partition, replica| {
            let empty = replica.log.with_log(|l| l.log_end_offset() == 0);
            Slot {
                partition,
                replica,
                inner: Mutex::new(SlotInner {
                    shard: empty.then(|| empty_shard(&self.config)),
                    waiters: HashMap::new(),
                    retired: false,
                }),
            }
        });
        let slots: Vec<Arc<Slot>> = slots
            .into_iter()
            .filter(|slot| lock(&slot.inner).shard.is_none())
            .collect();
        for slot in &removed {
            retire(slot);
        }
        if !slots.is_empty() {
            let config = self.config.clone();
            std::thread::spawn(move || {
                for slot in slots {
                    load_slot(&slot, &config);
                }
            });
        }
    }

    /// Drops the shards and their logs (at shutdown, so the logs can close); parked
    /// requests are answered NOT_COORDINATOR.
    pub fn detach(&self) {
        for slot in self.slots.clear() {
            retire(&slot);
        }
    }

    fn slot(&self, group_id: &str) -> Result<Arc<Slot>, ErrorCode> {
        self.slots.get(self.partition_for(group_id))
    }

    /// Runs `step` on the shard of `group_id` and returns its result once what it wrote
    /// (and everything before) is durable.
    pub async fn run<R>(
        &self,
        state: &BrokerState,
        group_id: &str,
        step: impl FnOnce(&mut Shard, i64) -> R,
    ) -> Result<R, ErrorCode> {
        let slot = self.slot(group_id)?;
        let (result, release) = {
            let mut inner = lock(&slot.inner);
            let now = now_ms();
            let result = step(inner.serving()?, now);
            (
                result,
                dispatch(state, &slot, &mut inner, now, &self.config),
            )
        };
        release_when_durable(state, release?).await?;
        Ok(result)
    }

    /// Runs a step that parks its request under a fresh token (JoinGroup, SyncGroup) and
    /// waits for the answer.
    pub async fn run_parked(
        &self,
        state: &BrokerState,
        group_id: &str,
        step: impl FnOnce(&mut Shard, i64, Token),
    ) -> Result<Parked, ErrorCode> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        let slot = self.slot(group_id)?;
        let release = {
            let mut inner = lock(&slot.inner);
            let now = now_ms();
            inner.serving()?;
            inner.waiters.insert(token, sender);
            if let Ok(shard) = inner.serving() {
                step(shard, now, token);
            }
            dispatch(state, &slot, &mut inner, now, &self.config)
        };
        release_when_durable(state, release?).await?;
        // A dropped sender means the shard was reset or unloaded under the request: the
        // client looks for the coordinator again.
        answer.await.map_err(|_| ErrorCode::NotCoordinator)
    }

    /// Reads every loaded shard (ListGroups): `f` per shard, in partition order. Shards
    /// still loading are reported through `loading`.
    pub fn read_all<R>(&self, mut f: impl FnMut(&Shard) -> R) -> (Vec<R>, bool) {
        let slots = self.slots.all();
        let mut results = Vec::with_capacity(slots.len());
        let mut loading = false;
        for slot in slots {
            match &lock(&slot.inner).shard {
                Some(shard) => results.push(f(shard)),
                None => loading = true,
            }
        }
        (results, loading)
    }

    /// Writes a transaction marker to partition `partition` and applies (or drops) the
    /// producer's pending offsets there, in one critical section. Returns where the
    /// marker ended, or `None` when the partition's producer is already past
    /// this epoch (nothing of the transaction is open there).
    pub fn complete_transaction(
        &self,
        state: &BrokerState,
        partition: i32,
        (producer_id, producer_epoch): (i64, i16),
        marker: ControlRecordType,
        coordinator_epoch: i32,
    ) -> Result<Option<Written>, ErrorCode> {
        let slot = self.slots.get(partition)?;
        let mut inner = lock(&slot.inner);
        let shard = inner.serving()?;
        let now = now_ms();
        let end = append_marker(
            &slot.replica,
            marker,
            (producer_id, producer_epoch),
            coordinator_epoch,
            now,
        )?;
        if end.is_some() {
            shard.complete_transaction(producer_id, marker == ControlRecordType::Commit, now);
            state.wakeups.wake(OFFSETS_TOPIC, partition);
        }
        Ok(end)
    }

    /// Advances time in every shard and releases what that produced.
    pub async fn tick(&self, state: &BrokerState) {
        for slot in self.slots.all() {
            let release = {
                let mut inner = lock(&slot.inner);
                let now = now_ms();
                let Some(shard) = inner.shard.as_mut() else {
                    continue;
                };
                shard.tick(now);
                dispatch(state, &slot, &mut inner, now, &self.config)
            };
            if let Ok(release) = release {
                let _ = release_when_durable(state, release).await;
            }
        }
    }
}

/// Appends the shard's new records and collects the answers to release. On failure the
/// shard is reset and reloaded from its log, and every parked request is failed.
fn dispatch(
    state: &BrokerState,
    slot: &Arc<Slot>,
    inner: &mut SlotInner,
    now: i64,
    config: &GroupConfig,
) -> Result<Release, ErrorCode> {
    let Some(shard) = inner.shard.as_mut() else {
        return Err(ErrorCode::CoordinatorLoadInProgress);
    };
    let Effects {
        records,
        txn_records,
        completed,
    } = shard.take_effects();
    let mut appended = append(&slot.replica, &records, now);
    for txn in &txn_records {
        if appended.is_err() {
            break;
        }
        let encoded = txn
            .records
            .iter()
            .map(|record| record.encode().map_err(LogError::from));
        appended = append_records(&slot.replica, encoded, now, || {
            transactional_batch(&slot.replica.log, txn.producer_id, txn.producer_epoch)
        });
    }
    if appended.is_ok() && !(records.is_empty() && txn_records.is_empty()) {
        state.wakeups.wake(OFFSETS_TOPIC, slot.partition);
    }
    match appended {
        Ok(written) => {
            let answers = completed
                .into_iter()
                .filter_map(|(token, answer)| {
                    inner.waiters.remove(&token).map(|sender| (sender, answer))
                })
                .collect();
            Ok(Release {
                partition: slot.partition,
                written,
                answers,
            })
        }
        Err(e) => {
            tracing::error!(partition = slot.partition, error = %e, "group coordinator append failed; reloading the partition");
            inner.shard = None;
            inner.waiters.clear();
            if !inner.retired {
                let slot = Arc::clone(slot);
                let config = config.clone();
                std::thread::spawn(move || load_slot(&slot, &config));
            }
            Err(as_coordinator_error(e.error_code()))
        }
    }
}

/// Appends `records` in batches as the partition's leader.
fn append(replica: &Replica, records: &[GroupRecord], now: i64) -> Result<Written, WriteError> {
    let encoded = records
        .iter()
        .map(|record| record.encode().map_err(LogError::from));
    append_records(replica, encoded, now, plain_batch)
}

async fn release_when_durable(state: &BrokerState, release: Release) -> Result<(), ErrorCode> {
    let replicated = state
        .wait_replicated(OFFSETS_TOPIC, release.partition, release.written)
        .await;
    if let Err(error) = replicated {
        // Dropping the senders fails the parked requests.
        return Err(as_coordinator_error(error));
    }
    for (sender, answer) in release.answers {
        let _ = sender.send(answer);
    }
    Ok(())
}

/// A shard with no groups yet, its member IDs random UUIDs.
fn empty_shard(config: &GroupConfig) -> Shard {
    Shard::new(config.clone(), Box::new(random_uuid))
}

/// Reads a partition back into a fresh shard and serves it.
fn load_slot(slot: &Slot, config: &GroupConfig) {
    let started = std::time::Instant::now();
    let now = now_ms();
    let mut shard = empty_shard(config);
    let mut count = 0u64;
    let loaded = for_each_batch(&slot.replica.log, |batch| {
        if batch.is_control() {
            // A transaction's marker decides its pending offsets.
            if let Some(producer) = ProducerBatch::of(batch)
                && let Some(marker) = producer.marker
            {
                shard.complete_transaction(
                    producer.producer_id,
                    marker == ControlRecordType::Commit,
                    now,
                );
            }
            return;
        }
        let Ok(records) = batch.records(64 << 20) else {
            return;
        };
        for record in records.flatten() {
            let Some(key) = record.key else { continue };
            match GroupRecord::decode(key, record.value) {
                Ok(Some(record)) if batch.is_transactional() => {
                    shard.replay_transactional(batch.producer_id(), record);
                    count += 1;
                }
                Ok(Some(record)) => {
                    shard.replay(record, now);
                    count += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(partition = slot.partition, error = %e, "skipping an unreadable group record")
                }
            }
        }
    });
    if let Err(e) = loaded {
        tracing::error!(partition = slot.partition, error = %e, "cannot load group partition");
    }
    tracing::debug!(
        partition = slot.partition,
        records = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "group partition loaded"
    );
    let mut inner = lock(&slot.inner);
    if !inner.retired {
        inner.shard = Some(shard);
    }
}

/// Creates `__consumer_offsets` (compacted, `offsets.topic.num.partitions` partitions) if
/// it does not exist, and serves its shards.
pub async fn ensure_offsets_topic(state: &BrokerState) -> Result<(), crate::BrokerError> {
    let exists = || state.with_image(|image| image.topic(OFFSETS_TOPIC).is_some());
    if exists() {
        return Ok(());
    }
    let _creating = state.groups.creating.lock().await;
    if exists() {
        return Ok(());
    }
    let config = state.groups.config();
    create_internal_topic(
        state,
        OFFSETS_TOPIC,
        config.offsets_topic_partitions,
        config.offsets_topic_segment_bytes,
        state.config.replication.offsets_topic_replication_factor,
    )
    .await?;
    // Applying the new topic gave this broker the shards of the partitions it leads.
    Ok(())
}

/// The partitions of `__consumer_offsets` this broker leads, with their replicas.
pub fn offsets_logs(state: &BrokerState) -> Vec<(i32, Arc<Replica>)> {
    led_partitions(state, OFFSETS_TOPIC)
}

/// Advances time in the coordinators until shutdown: the group coordinator every
/// [`TICK`], the transaction coordinator every
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms` (and at once, so that
/// transactions a crash left half-ended finish).
pub async fn run_timers(state: Arc<BrokerState>, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let txn_interval = u64::try_from(state.txns.config().abort_timed_out_interval_ms)
        .unwrap_or(10_000)
        .max(1);
    let mut txn_ticks = tokio::time::interval(Duration::from_millis(txn_interval));
    txn_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => state.groups.tick(&state).await,
            _ = txn_ticks.tick() => state.txns.tick(&state).await,
            _ = stopped.changed() => return,
        }
    }
}
