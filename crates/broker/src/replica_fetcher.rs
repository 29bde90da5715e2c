//! The replica fetcher: how a follower copies its partitions from their leaders, and how
//! a leader has the controller record ISR changes.
//!
//! One task per source broker fetches every partition this broker follows from it, with
//! Fetch as a Kafka follower sends it (`replica_id`, `last_fetched_epoch`), on its own
//! connection. Each round appends what came (keeping the leader's offsets and epochs),
//! truncates a tail the leader says diverged, and makes the appended data durable before
//! the next fetch: the next fetch's offset tells the leader what this broker holds, and it
//! counts toward acks=all only once it is on disk here. A partition that fails waits
//! `replica.fetch.backoff.ms` (a mismatch of leader epochs, which the metadata resolves,
//! a short moment) while the others go on. The task ends when it has nothing left to
//! fetch; [`ensure_fetchers`] starts the missing ones after each metadata change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use spool_log::{SharedLog, TopicPartition};
use spool_protocol::ErrorCode;
use spool_protocol::messages::alter_partition_request::{self, AlterPartitionRequest};
use spool_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use spool_protocol::messages::fetch_response::EpochEndOffset;
use spool_protocol::messages::{FetchRequest, FetchResponse, RequestBody, ResponseBody};
use tokio::time::Instant;

use crate::peers::Peers;
use crate::replica::{Divergence, Fetched, IsrChange, LeaderOffsets, Replica};
use crate::state::{BrokerState, blocking, lock, now_ms};
use crate::throttle;

/// The Fetch version followers send: topics by name, the follower's ID in the body, and
/// diverging epochs in the answer.
const FETCH_VERSION: i16 = 12;
/// The AlterPartition version leaders send (ISR members with their broker epochs).
const ALTER_PARTITION_VERSION: i16 = 3;
/// The shortest pause after a failure, whatever `replica.fetch.backoff.ms` says.
const MIN_BACKOFF_MS: u64 = 10;
/// The pause when every partition left to fetch is throttled and over the rate.
const THROTTLE_PAUSE: Duration = Duration::from_millis(100);
/// The pause after a leader-epoch mismatch: one side's metadata is about to catch up.
const EPOCH_MISMATCH_BACKOFF: Duration = Duration::from_millis(50);

/// A partition this broker follows from a source broker, at the epoch it follows, and
/// the offset its fetch starts from (its log end when the fetch is built).
struct Followed {
    tp: TopicPartition,
    replica: Arc<Replica>,
    epoch: i32,
    fetch_offset: i64,
}

impl Followed {
    fn fetched(&self, source: i32) -> Fetched {
        Fetched {
            leader: source,
            epoch: self.epoch,
            offset: self.fetch_offset,
        }
    }
}

fn followed_from(state: &BrokerState, source: i32) -> Vec<Followed> {
    state
        .replicas()
        .into_iter()
        .filter_map(|(tp, replica)| {
            let (leader, epoch) = replica.following()?;
            // A log that failed takes no more writes (the disk is the operator's now).
            (leader == source && !replica.log.is_failed()).then_some(Followed {
                tp,
                replica,
                epoch,
                fetch_offset: -1,
            })
        })
        .collect()
}

/// Starts a fetcher for each broker this one follows partitions from and has none for,
/// and has the running ones look again at what they follow.
pub fn ensure_fetchers(state: &Arc<BrokerState>) {
    state
        .followed_changed
        .send_modify(|n| *n = n.wrapping_add(1));
    let leaders: std::collections::BTreeSet<i32> = state
        .replicas()
        .iter()
        .filter_map(|(_, replica)| replica.following().map(|(leader, _)| leader))
        .collect();
    let mut running = lock(&state.fetchers);
    for leader in leaders {
        if running.insert(leader) {
            tokio::spawn(run(Arc::downgrade(state), leader));
        }
    }
}

async fn run(weak: Weak<BrokerState>, source: i32) {
    let mut peers: Option<Peers> = None;
    // Partitions set aside after an error: until when, and at which epoch (a new epoch
    // ends the pause).
    let mut paused: HashMap<TopicPartition, (Instant, i32)> = HashMap::new();
    loop {
        let Some(state) = weak.upgrade() else {
            return;
        };
        let followed = {
            let mut running = lock(&state.fetchers);
            let followed = followed_from(&state, source);
            if followed.is_empty() {
                running.remove(&source);
                return;
            }
            followed
        };
        let config = state.config.replication.clone();
        let now = Instant::now();
        paused.retain(|tp, (until, epoch)| {
            *until > now && followed.iter().any(|f| f.tp == *tp && f.epoch == *epoch)
        });
        let mut ready: Vec<Followed> = followed
            .into_iter()
            .filter(|f| !paused.contains_key(&f.tp))
            .collect();
        let throttled = follower_throttled(&state, &ready);
        if !throttled.is_empty() && state.follower_quota.exceeded() {
            ready.retain(|f| !throttled.contains(&f.tp));
            if ready.is_empty() {
                drop(state);
                tokio::time::sleep(THROTTLE_PAUSE).await;
                continue;
            }
        }
        let backoff = Duration::from_millis(config.fetch_backoff_ms.max(MIN_BACKOFF_MS));
        let endpoint = state.broker_endpoint(source).filter(|_| !ready.is_empty());
        let Some((host, port)) = endpoint else {
            drop(state);
            let resume = paused.values().map(|(until, _)| *until).min();
            let wake = resume.map_or(now + backoff, |until| until.min(now + backoff));
            tokio::time::sleep_until(wake).await;
            continue;
        };
        let request = fetch_request(&state, &mut ready);
        let peers = peers.get_or_insert_with(|| {
            Peers::new(
                format!("spool-replica-fetcher-{}", state.config.node_id),
                Duration::from_millis(config.socket_timeout_ms),
                Arc::clone(&state.net),
            )
        });
        // No replica is held across the wait: a broker shutting down closes the logs. The
        // answer goes to the very replicas asked for, not to new ones of the same name.
        let asked: Vec<(TopicPartition, i32, i64, Weak<Replica>)> = ready
            .into_iter()
            .map(|f| (f.tp, f.epoch, f.fetch_offset, Arc::downgrade(&f.replica)))
            .collect();
        let mut changes = state.followed_changed.subscribe();
        drop(state);
        // A partition that starts to be followed from this broker while the fetch waits
        // (a leadership that moved here) would wait for the leader's long poll to end
        // (`replica.fetch.wait.max.ms`), and with it every acks=all write to the new
        // leader: the fetch is abandoned (its connection with it) and sent again.
        let answer = tokio::select! {
            answer = peers.send(&host, port, RequestBody::Fetch(request), FETCH_VERSION) => answer,
            () = newly_followed(&weak, source, &asked, &paused, &mut changes) => continue,
        };
        let response = match answer {
            Ok(ResponseBody::Fetch(response)) if response.error_code == 0 => response,
            Ok(ResponseBody::Fetch(response)) => {
                let error = ErrorCode::from_wire(response.error_code);
                tracing::warn!(source, ?error, "replica fetch refused");
                tokio::time::sleep(backoff).await;
                continue;
            }
            Ok(_) => {
                tracing::warn!(source, "replica fetch answered with another API");
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(source, error = %e, "replica fetch failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(state) = weak.upgrade() else {
            return;
        };
        let ready = asked
            .into_iter()
            .filter_map(|(tp, epoch, fetch_offset, replica)| {
                Some(Followed {
                    tp,
                    replica: replica.upgrade()?,
                    epoch,
                    fetch_offset,
                })
            })
            .collect();
        let throttled_bytes: usize = response
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter(|(t, p)| {
                throttled
                    .iter()
                    .any(|tp| tp.topic == t.topic && tp.partition == p.partition_index)
            })
            .map(|(_, p)| p.records.as_ref().map_or(0, |r| r.len()))
            .sum();
        state.follower_quota.record(throttled_bytes);
        for (tp, epoch, error) in apply_response(&state, source, ready, response).await {
            let pause = match error {
                ErrorCode::UnknownLeaderEpoch
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::NotLeaderOrFollower
                | ErrorCode::UnknownTopicOrPartition => EPOCH_MISMATCH_BACKOFF,
                _ => {
                    tracing::warn!(partition = %tp, source, ?error, "replica fetch of a partition failed");
                    backoff
                }
            };
            paused.insert(tp, (Instant::now() + pause, epoch));
        }
    }
}

/// Returns once this broker follows from `source` a partition (or a leader epoch) that
/// is neither in the fetch under way (`asked`) nor paused; never if the broker is gone.
async fn newly_followed(
    weak: &Weak<BrokerState>,
    source: i32,
    asked: &[(TopicPartition, i32, i64, Weak<Replica>)],
    paused: &HashMap<TopicPartition, (Instant, i32)>,
    changes: &mut tokio::sync::watch::Receiver<u64>,
) {
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        let Some(state) = weak.upgrade() else {
            return std::future::pending().await;
        };
        let gained = followed_from(&state, source).iter().any(|f| {
            !paused.contains_key(&f.tp)
                && !asked
                    .iter()
                    .any(|(tp, epoch, _, _)| *tp == f.tp && *epoch == f.epoch)
        });
        if gained {
            return;
        }
    }
}

/// The partitions of `followed` whose copying this follower throttles: it is not in their
/// ISR and their topic's `follower.replication.throttled.replicas` names its replica.
fn follower_throttled(state: &BrokerState, followed: &[Followed]) -> Vec<TopicPartition> {
    if !state.follower_quota.is_limited() {
        return Vec::new();
    }
    let me = state.config.node_id;
    state.with_image(|image| {
        followed
            .iter()
            .filter(|f| {
                image.topic(&f.tp.topic).is_some_and(|t| {
                    throttle::is_throttled(
                        &t.configs,
                        throttle::FOLLOWER_REPLICAS,
                        f.tp.partition,
                        me,
                    ) && t
                        .partitions
                        .iter()
                        .any(|p| p.index == f.tp.partition && !p.isr.contains(&me))
                })
            })
            .map(|f| f.tp.clone())
            .collect()
    })
}

/// A follower's fetch of `followed`, each from its log end offset (noted in each).
fn fetch_request(state: &BrokerState, followed: &mut [Followed]) -> FetchRequest {
    let config = &state.config.replication;
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for f in followed.iter_mut() {
        let partition = f.replica.log.with_log(|log| FetchPartition {
            partition: f.tp.partition,
            current_leader_epoch: f.epoch,
            fetch_offset: log.log_end_offset(),
            last_fetched_epoch: log.leader_epochs().latest_epoch().unwrap_or(-1),
            log_start_offset: log.log_start_offset(),
            partition_max_bytes: config.fetch_max_bytes,
            ..Default::default()
        });
        f.fetch_offset = partition.fetch_offset;
        topics.entry(&f.tp.topic).or_default().push(partition);
    }
    FetchRequest {
        replica_id: state.config.node_id,
        max_wait_ms: config.fetch_wait_max_ms,
        min_bytes: config.fetch_min_bytes,
        max_bytes: config.fetch_response_max_bytes,
        isolation_level: 0,
        session_id: 0,
        // Sessionless.
        session_epoch: -1,
        topics: topics
            .into_iter()
            .map(|(topic, partitions)| FetchTopic {
                topic: topic.to_string(),
                partitions,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Appends (or truncates) what the leader sent, then waits until the appended data is
/// durable. Returns the partitions that failed, with the epoch they were fetched at.
async fn apply_response(
    state: &Arc<BrokerState>,
    source: i32,
    ready: Vec<Followed>,
    response: FetchResponse,
) -> Vec<(TopicPartition, i32, ErrorCode)> {
    let applied = blocking(move || Ok(apply_blocking(source, &ready, response))).await;
    let Ok((mut failed, appended, moved)) = applied else {
        return Vec::new();
    };
    // Consumers reading from this follower (KIP-392) may read up to the new high
    // watermark at once: the leader's ISR holds it durably.
    for tp in moved {
        state.wakeups.wake(&tp.topic, tp.partition);
    }
    let logs: Vec<(Arc<SharedLog>, i64)> = appended
        .iter()
        .map(|(_, _, log, end)| (Arc::clone(log), *end))
        .collect();
    let durable = state.flusher.wait_all_durable(logs).await;
    for ((tp, epoch, _, _), outcome) in appended.into_iter().zip(durable) {
        match outcome {
            Ok(()) => state.wakeups.wake(&tp.topic, tp.partition),
            Err(error) => failed.push((tp, epoch, error)),
        }
    }
    failed
}

type Appended = Vec<(TopicPartition, i32, Arc<SharedLog>, i64)>;

/// Applies a fetch response: the partitions that failed, those appended to (with their
/// new log end offsets), and those whose high watermark moved.
fn apply_blocking(
    source: i32,
    ready: &[Followed],
    response: FetchResponse,
) -> (
    Vec<(TopicPartition, i32, ErrorCode)>,
    Appended,
    Vec<TopicPartition>,
) {
    let mut failed = Vec::new();
    let mut appended = Vec::new();
    let mut moved = Vec::new();
    let now = now_ms();
    for topic in response.responses {
        for p in topic.partitions {
            let Some(f) = ready
                .iter()
                .find(|f| f.tp.topic == topic.topic && f.tp.partition == p.partition_index)
            else {
                continue;
            };
            let following = f.fetched(source);
            let leader_at = LeaderOffsets {
                high_watermark: p.high_watermark,
                log_start_offset: p.log_start_offset,
            };
            let error = ErrorCode::from_wire(p.error_code);
            if error == ErrorCode::OffsetOutOfRange {
                // Refetched at once from the new log end; a reset that changed nothing
                // waits like any failure.
                match f.replica.reset_out_of_range(following, leader_at) {
                    Ok(true) => {}
                    Ok(false) => failed.push((f.tp.clone(), f.epoch, error)),
                    Err(error) => failed.push((f.tp.clone(), f.epoch, error)),
                }
                continue;
            }
            if error != ErrorCode::None {
                failed.push((f.tp.clone(), f.epoch, error));
                continue;
            }
            let outcome = if p.diverging_epoch != EpochEndOffset::default() {
                let divergence = Divergence {
                    epoch: p.diverging_epoch.epoch,
                    end_offset: p.diverging_epoch.end_offset,
                };
                f.replica
                    .truncate_diverged(following, divergence)
                    .map(|_| None)
            } else {
                let records = p.records.unwrap_or_default();
                let had_records = !records.is_empty();
                f.replica
                    .append_from_leader(following, records, leader_at, now)
                    .map(|appended| {
                        if appended.high_watermark_moved {
                            moved.push(f.tp.clone());
                        }
                        had_records.then_some(appended.log_end_offset)
                    })
            };
            match outcome {
                Ok(Some(end)) => {
                    appended.push((f.tp.clone(), f.epoch, Arc::clone(&f.replica.log), end))
                }
                Ok(None) => {}
                Err(error) => failed.push((f.tp.clone(), f.epoch, error)),
            }
        }
    }
    (failed, appended, moved)
}

/// Has the controller record the ISR a leader chose for partition `partition` of
/// `topic`, in the background. Should the controller refuse (or not answer), the change
/// is dropped and the leader asks again when the need arises.
pub fn send_isr_change(
    state: &Arc<BrokerState>,
    topic: &str,
    partition: i32,
    replica: &Arc<Replica>,
    change: IsrChange,
) {
    let Some(topic_id) = state.with_image(|image| image.topic(topic).map(|t| t.id)) else {
        replica.isr_change_failed(&change, state.clock_ms());
        return;
    };
    let new_isr_with_epochs = state.with_image(|image| {
        change
            .isr
            .iter()
            .map(|&b| alter_partition_request::BrokerState {
                broker_id: b,
                broker_epoch: image.broker(b).map_or(-1, |meta| meta.epoch),
                ..Default::default()
            })
            .collect()
    });
    let request = AlterPartitionRequest {
        broker_id: state.config.node_id,
        broker_epoch: state.node.broker_epoch(),
        topics: vec![alter_partition_request::TopicData {
            topic_id,
            partitions: vec![alter_partition_request::PartitionData {
                partition_index: partition,
                leader_epoch: change.leader_epoch,
                new_isr_with_epochs,
                partition_epoch: change.partition_epoch,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let controller = state.node.controller.clone();
    let before = replica.isr().map_or(0, |isr| isr.len());
    let replica = Arc::clone(replica);
    let topic = topic.to_string();
    let clock = Arc::downgrade(state);
    tokio::spawn(async move {
        let response = controller
            .alter_partition(request, ALTER_PARTITION_VERSION)
            .await;
        let error = match ErrorCode::from_wire(response.error_code) {
            ErrorCode::None => response
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| ErrorCode::from_wire(p.error_code))
                .find(|&e| e != ErrorCode::None)
                .unwrap_or(ErrorCode::None),
            error => error,
        };
        if error == ErrorCode::None {
            tracing::info!(%topic, partition, isr = ?change.isr, "ISR changed");
            if let Some(state) = clock.upgrade() {
                state.metrics.isr_changed(before, change.isr.len());
            }
        } else {
            tracing::info!(%topic, partition, isr = ?change.isr, ?error, "ISR change refused");
            if let Some(state) = clock.upgrade() {
                // No answer, or a partition epoch this leader has not seen yet: the change
                // may have been recorded all the same.
                let unresolved = matches!(
                    error,
                    ErrorCode::InvalidUpdateVersion
                        | ErrorCode::RequestTimedOut
                        | ErrorCode::NotController
                );
                if unresolved {
                    replica.isr_change_unresolved(&change, state.clock_ms());
                } else {
                    replica.isr_change_failed(&change, state.clock_ms());
                }
            }
        }
    });
}

/// Takes the followers that stopped keeping up out of the ISR of every partition this
/// broker leads, checking every half `replica.lag.time.max.ms` (as Kafka does), until
/// the broker is gone.
pub async fn run_isr_checks(state: Weak<BrokerState>, lag_max_ms: i64) {
    let interval = Duration::from_millis(u64::try_from(lag_max_ms / 2).unwrap_or(0).max(10));
    loop {
        tokio::time::sleep(interval).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let now = state.clock_ms();
        for (tp, replica) in state.replicas() {
            if let Some(change) = replica.shrink_lagging(now, lag_max_ms) {
                send_isr_change(&state, &tp.topic, tp.partition, &replica, change);
            }
        }
    }
}
