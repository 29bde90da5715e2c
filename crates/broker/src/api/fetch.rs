//! Fetch (versions 4-18): whole record batches from partition logs, up to the high
//! watermark (or the last stable offset for read_committed), within the response's and
//! each partition's `max_bytes` (the first batch always whole). read_committed answers
//! list the aborted transactions the returned batches overlap. Long polling: with fewer
//! than `min_bytes` available the request waits for appends, up to `max_wait_ms`.
//! From v7, incremental fetch sessions (KIP-227): see `fetch_session`.
//!
//! A fetch from another broker (`replica_id`, or `replica_state` from v15) is a follower
//! replicating the partitions this broker leads: it reads up to the log end offset, and
//! its fetch offset tells the leader what the follower holds (see `replica`). A follower
//! whose last fetched epoch ends earlier here than its fetch offset gets the diverging
//! epoch instead of records, and truncates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spool_log::{LogError, LogRead, PartitionLog};
use spool_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
    PartitionData,
};
use spool_protocol::messages::{FetchRequest, FetchResponse};
use spool_protocol::{ErrorCode, Uuid};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::acl::{Authz, operation};
use crate::config::ReplicaSelector;
use crate::fetch_session::{Context, INVALID_SESSION_ID, Outcome, PartitionKey, Reported, Wanted};
use crate::read_replica;
use crate::replica::{Replica, diverging_epoch};
use crate::state::{BrokerState, LeaderHints, lock, now_ms};
use crate::throttle;

const READ_COMMITTED: i8 = 1;
/// The first Fetch version with sessions.
const SESSIONS_VERSION: i16 = 7;
/// The first Fetch version naming topics by ID.
const TOPIC_IDS_VERSION: i16 = 13;
/// The first Fetch version with the consumer's rack: consumers may read from followers.
const FOLLOWER_READS_VERSION: i16 = 11;
/// The first Fetch version carrying a follower's ID in `replica_state`.
const REPLICA_STATE_VERSION: i16 = 15;
/// The first Fetch version whose NOT_LEADER_OR_FOLLOWER and FENCED_LEADER_EPOCH answers
/// say where the leader is (KIP-951).
const LEADER_HINTS_VERSION: i16 = 16;

/// The topic name of each wanted partition (`None` for an unknown topic ID).
fn topic_names(state: &BrokerState, wanted: &[Wanted], version: i16) -> Vec<Option<String>> {
    let mut resolved: Option<(Uuid, Option<String>)> = None;
    wanted
        .iter()
        .map(|w| {
            if version < TOPIC_IDS_VERSION {
                return Some(w.key.topic.clone());
            }
            let id = w.key.topic_id;
            match &resolved {
                Some((cached, name)) if *cached == id => name.clone(),
                _ => {
                    let name =
                        state.with_image(|image| image.topic_by_id(&id).map(|t| t.name.clone()));
                    resolved = Some((id, name.clone()));
                    name
                }
            }
        })
        .collect()
}

/// A partition's answer before anything is known of it: no offsets, no records.
fn empty_partition(index: i32) -> PartitionData {
    PartitionData {
        partition_index: index,
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        records: Some(Default::default()),
        ..Default::default()
    }
}

/// What a partition may still take of a response of `response_max` bytes of which
/// `total` are used: the first partition with data always gets its first batch whole.
fn budget(total: usize, response_max: usize) -> usize {
    if total == 0 {
        usize::MAX
    } else {
        response_max.saturating_sub(total)
    }
}

/// Puts the log's high watermark, last stable offset and log start offset into `data`.
fn put_offsets(data: &mut PartitionData, log: &PartitionLog) {
    data.high_watermark = log.high_watermark();
    data.last_stable_offset = log.last_stable_offset();
    data.log_start_offset = log.log_start_offset();
}

/// Puts what a log read returned into `data` (its records, or its error); the bytes
/// added.
fn put_records(data: &mut PartitionData, read: Option<Result<LogRead, LogError>>) -> usize {
    match read {
        Some(Ok(LogRead {
            range: Some(range), ..
        })) => match range.to_bytes() {
            Ok(bytes) => {
                let added = bytes.len();
                data.records = Some(bytes);
                added
            }
            Err(e) => {
                data.error_code = LogError::from(e).error_code().code();
                0
            }
        },
        Some(Err(e)) => {
            data.error_code = e.error_code().code();
            0
        }
        Some(Ok(_)) | None => 0,
    }
}

/// One pass over `wanted` (whose topics are `names`), in order: each partition's data and
/// the bytes read in all.
fn read(
    state: &BrokerState,
    wanted: &[Wanted],
    (names, readable): (&[Option<String>], &[bool]),
    request: &FetchRequest,
    version: i16,
) -> (Vec<PartitionData>, usize) {
    let mut total = 0usize;
    let response_max = usize::try_from(request.max_bytes).unwrap_or(0);
    let mut out = Vec::with_capacity(wanted.len());
    for ((w, name), readable) in wanted.iter().zip(names).zip(readable) {
        let mut data = empty_partition(w.key.partition);
        if !readable {
            data.error_code = ErrorCode::TopicAuthorizationFailed.code();
            out.push(data);
            continue;
        }
        let replica = name
            .as_deref()
            .ok_or(ErrorCode::UnknownTopicOrPartition)
            .and_then(|name| {
                state.readable_replica(
                    name,
                    w.key.partition,
                    w.current_leader_epoch,
                    version >= FOLLOWER_READS_VERSION,
                )
            });
        let (replica, leads) = match replica {
            Ok(found) => found,
            Err(error) => {
                // Requests by topic ID learn of a missing partition as an unknown ID.
                data.error_code = match error {
                    ErrorCode::UnknownTopicOrPartition if version >= TOPIC_IDS_VERSION => {
                        ErrorCode::UnknownTopicId
                    }
                    other => other,
                }
                .code();
                out.push(data);
                continue;
            }
        };
        let log = &replica.log;
        let elsewhere = if leads && version >= FOLLOWER_READS_VERSION {
            closer_replica(state, &replica, &request.rack_id, w)
        } else {
            None
        };
        if let Some(follower) = elsewhere {
            // Sent elsewhere: the offsets, no records.
            log.with_log(|log| put_offsets(&mut data, log));
            data.preferred_read_replica = follower;
            out.push(data);
            continue;
        }
        // Past the response's budget, partitions are listed without records.
        let partition_max = usize::try_from(w.partition_max_bytes)
            .unwrap_or(0)
            .min(budget(total, response_max));
        let (read, aborted) = log.with_log(|log| {
            put_offsets(&mut data, log);
            let upper = if request.isolation_level == READ_COMMITTED {
                log.last_stable_offset()
            } else {
                log.high_watermark()
            };
            let read = if partition_max == 0 && total > 0 {
                None
            } else {
                Some(log.read(w.fetch_offset, partition_max as u64, upper))
            };
            // read_committed readers drop the records of aborted transactions: they are
            // told which ones the returned range overlaps.
            let aborted = match &read {
                Some(Ok(r)) if request.isolation_level == READ_COMMITTED && r.range.is_some() => {
                    log.aborted_transactions(w.fetch_offset, r.next_offset)
                }
                _ => Vec::new(),
            };
            (read, aborted)
        });
        total += put_records(&mut data, read);
        if request.isolation_level == READ_COMMITTED {
            data.aborted_transactions = Some(
                aborted
                    .into_iter()
                    .map(|t| AbortedTransaction {
                        producer_id: t.producer_id,
                        first_offset: t.first_offset,
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        out.push(data);
    }
    (out, total)
}

/// The follower a consumer at `wanted`'s fetch offset in rack `client_rack` should read
/// from instead of this leader, by `replica.selector.class` (see `read_replica`).
fn closer_replica(
    state: &BrokerState,
    replica: &Replica,
    client_rack: &str,
    wanted: &Wanted,
) -> Option<i32> {
    let selector = state.config.replication.selector;
    if selector == ReplicaSelector::Leader || client_rack.is_empty() {
        return None;
    }
    let candidates = replica.read_candidates(wanted.fetch_offset, state.clock_ms())?;
    state.with_image(|image| {
        read_replica::select(
            selector,
            client_rack,
            state.config.node_id,
            &candidates,
            |id| {
                image
                    .broker(id)
                    .filter(|b| !b.fenced)
                    .and_then(|b| b.rack.as_deref())
            },
        )
    })
}

/// The partitions a request names, in request order.
fn requested(request: &FetchRequest, version: i16) -> Vec<Wanted> {
    let by_id = version >= TOPIC_IDS_VERSION;
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| Wanted {
                key: key(by_id, &topic.topic, topic.topic_id, p.partition),
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes,
                current_leader_epoch: p.current_leader_epoch,
            })
        })
        .collect()
}

fn key(by_id: bool, topic: &str, topic_id: Uuid, partition: i32) -> PartitionKey {
    if by_id {
        PartitionKey {
            topic: String::new(),
            topic_id,
            partition,
        }
    } else {
        PartitionKey {
            topic: topic.to_string(),
            topic_id: Uuid::ZERO,
            partition,
        }
    }
}

fn outcome(data: &PartitionData) -> Outcome {
    Outcome {
        reported: Reported {
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            log_start_offset: data.log_start_offset,
        },
        has_records: data.records.as_ref().is_some_and(|r| !r.is_empty()),
        must_answer: data.error_code != 0 || data.preferred_read_replica >= 0,
    }
}

/// Groups partitions into topics, consecutive partitions of one topic together.
fn into_topics(partitions: Vec<(PartitionKey, PartitionData)>) -> Vec<FetchableTopicResponse> {
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (key, data) in partitions {
        match topics.last_mut() {
            Some(last) if last.topic == key.topic && last.topic_id == key.topic_id => {
                last.partitions.push(data)
            }
            _ => topics.push(FetchableTopicResponse {
                topic: key.topic,
                topic_id: key.topic_id,
                partitions: vec![data],
                ..Default::default()
            }),
        }
    }
    topics
}

fn error_response(error: ErrorCode) -> FetchResponse {
    FetchResponse {
        error_code: error.code(),
        session_id: INVALID_SESSION_ID,
        ..Default::default()
    }
}

/// Whether a fetch comes from a follower (its ID in `replica_id`, or from v15 in
/// `replica_state`).
pub fn from_follower(request: &FetchRequest, version: i16) -> bool {
    let replica_id = if version >= REPLICA_STATE_VERSION {
        request.replica_state.replica_id
    } else {
        request.replica_id
    };
    replica_id >= 0
}

/// A consumer needs READ on each topic it fetches, a follower CLUSTER_ACTION on the
/// cluster; what they may not read is answered TOPIC_AUTHORIZATION_FAILED, as in Kafka.
pub async fn handle(
    state: &Arc<BrokerState>,
    (listener, authz): (&str, &Authz<'_>),
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let replica_id = if version >= REPLICA_STATE_VERSION {
        request.replica_state.replica_id
    } else {
        request.replica_id
    };
    if replica_id >= 0 {
        if !authz.cluster(operation::CLUSTER_ACTION) {
            let refused = requested(&request, version).into_iter().map(|w| {
                let mut data = empty_partition(w.key.partition);
                data.error_code = ErrorCode::TopicAuthorizationFailed.code();
                (w.key, data)
            });
            return FetchResponse {
                responses: into_topics(refused.collect()),
                session_id: INVALID_SESSION_ID,
                ..Default::default()
            };
        }
        return replica_fetch(state, &request, version, replica_id).await;
    }
    let uses_topic_ids = version >= TOPIC_IDS_VERSION;
    let wanted = requested(&request, version);
    let context = if version < SESSIONS_VERSION {
        Context::Sessionless
    } else {
        let forgotten = request
            .forgotten_topics_data
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|&p| key(uses_topic_ids, &t.topic, t.topic_id, p))
            })
            .collect();
        let began = lock(&state.fetch_sessions).begin(
            request.session_id,
            request.session_epoch,
            uses_topic_ids,
            wanted.clone(),
            forgotten,
            now_ms(),
        );
        match began {
            Ok(context) => context,
            Err(error) => return error_response(error),
        }
    };
    let read_list = match &context {
        Context::Incremental { partitions, .. } => partitions.as_slice(),
        Context::Sessionless | Context::Full => wanted.as_slice(),
    };
    let partitions = long_poll(state, authz, read_list, &request, version).await;
    let mut session_id = INVALID_SESSION_ID;
    let mut answered: Vec<(PartitionKey, PartitionData)> = read_list
        .iter()
        .map(|w| w.key.clone())
        .zip(partitions)
        .collect();
    match &context {
        Context::Sessionless => {}
        Context::Full => {
            let opened = answered
                .iter()
                .zip(&wanted)
                .map(|((_, data), w)| (w.clone(), outcome(data).reported))
                .collect();
            session_id = lock(&state.fetch_sessions).create(uses_topic_ids, opened, now_ms());
        }
        Context::Incremental { id, .. } => {
            let outcomes: Vec<(PartitionKey, Outcome)> = answered
                .iter()
                .map(|(key, data)| (key.clone(), outcome(data)))
                .collect();
            if let Some(keep) = lock(&state.fetch_sessions).finish(*id, &outcomes) {
                session_id = *id;
                let mut keep = keep.into_iter();
                answered.retain(|_| keep.next().unwrap_or(false));
            }
        }
    }
    let node_endpoints = if version >= LEADER_HINTS_VERSION {
        put_leader_hints(state, listener, &mut answered)
    } else {
        Vec::new()
    };
    FetchResponse {
        responses: into_topics(answered),
        session_id,
        node_endpoints,
        ..Default::default()
    }
}

/// Points each partition answered NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH at its
/// leader as this broker knows it (KIP-951); returns those leaders' endpoints on
/// `listener`, for the response.
fn put_leader_hints(
    state: &BrokerState,
    listener: &str,
    answered: &mut [(PartitionKey, PartitionData)],
) -> Vec<NodeEndpoint> {
    let mut hints = LeaderHints::new(state, listener);
    for (key, data) in answered.iter_mut() {
        let misdirected = [ErrorCode::NotLeaderOrFollower, ErrorCode::FencedLeaderEpoch]
            .iter()
            .any(|e| e.code() == data.error_code);
        if !misdirected {
            continue;
        }
        let name = if key.topic.is_empty() {
            state.with_image(|image| image.topic_by_id(&key.topic_id).map(|t| t.name.clone()))
        } else {
            Some(key.topic.clone())
        };
        let Some(name) = name else { continue };
        let (leader_id, leader_epoch) = hints.leader_of(&name, key.partition);
        data.current_leader = LeaderIdAndEpoch {
            leader_id,
            leader_epoch,
            ..Default::default()
        };
    }
    hints
        .endpoints()
        .map(|b| NodeEndpoint {
            node_id: b.id,
            host: b.host,
            port: i32::from(b.port),
            rack: b.rack,
            ..Default::default()
        })
        .collect()
}

/// The wanted partitions whose topic is known, by name, for the wakeups.
fn named_partitions<'a>(wanted: &[Wanted], names: &'a [Option<String>]) -> Vec<(&'a str, i32)> {
    wanted
        .iter()
        .zip(names)
        .filter_map(|(w, name)| name.as_deref().map(|name| (name, w.key.partition)))
        .collect()
}

/// Reads until `min_bytes` are there, a partition has an error, or `max_wait_ms` passed.
async fn long_poll(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    wanted: &[Wanted],
    request: &FetchRequest,
    version: i16,
) -> Vec<PartitionData> {
    let names = topic_names(state, wanted, version);
    let mut checked: HashMap<&str, bool> = HashMap::new();
    let readable: Vec<bool> = names
        .iter()
        .map(|name| match name.as_deref() {
            None => true,
            Some(name) => *checked
                .entry(name)
                .or_insert_with(|| authz.topic(operation::READ, name)),
        })
        .collect();
    let partitions = named_partitions(wanted, &names);
    let data = wait_for_data(state, &partitions, request, || {
        read(state, wanted, (&names, &readable), request, version)
    })
    .await;
    for (name, partition) in names.iter().zip(&data) {
        if let (Some(name), Some(records)) = (name, &partition.records) {
            state.metrics.fetched(name, records);
        }
    }
    data
}

/// Runs `read` (partitions' data, bytes read) until it finds `min_bytes`, a partition
/// has an error, `max_wait_ms` passed, or the broker begins to close; appends to
/// `partitions` wake it early.
async fn wait_for_data(
    state: &BrokerState,
    partitions: &[(&str, i32)],
    request: &FetchRequest,
    mut read: impl FnMut() -> (Vec<PartitionData>, usize),
) -> Vec<PartitionData> {
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let waiter = Arc::new(Notify::new());
    loop {
        // Register before reading, so an append in between is not missed.
        let registration = state.wakeups.register(partitions, &waiter);
        let (data, bytes) = read();
        // An error, a diverging epoch or another replica to read from is answered at once.
        let urgent = data.iter().any(|p| {
            p.error_code != 0
                || p.diverging_epoch != EpochEndOffset::default()
                || p.preferred_read_replica >= 0
        });
        if bytes >= min_bytes || urgent || Instant::now() >= deadline {
            return data;
        }
        let _waiting = state.metrics.fetch_waiting();
        let woken = tokio::select! {
            woken = tokio::time::timeout_at(deadline, waiter.notified()) => woken.is_ok(),
            () = state.closing() => false,
        };
        if !woken {
            drop(registration);
            return read().0;
        }
    }
}

/// A follower's fetch (sessionless, by topic name or ID as its version says): records
/// how far the follower got, then reads up to each log end offset.
async fn replica_fetch(
    state: &Arc<BrokerState>,
    request: &FetchRequest,
    version: i16,
    follower: i32,
) -> FetchResponse {
    let wanted = requested(request, version);
    let names = topic_names(state, &wanted, version);
    // Per partition: the epoch of the follower's last batch, and its log start offset.
    let held: Vec<(i32, i64)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.last_fetched_epoch, p.log_start_offset))
        })
        .collect();
    let partitions = named_partitions(&wanted, &names);
    let mut first = true;
    let data = wait_for_data(state, &partitions, request, || {
        let mut total = 0;
        let response_max = usize::try_from(request.max_bytes).unwrap_or(0);
        let data = wanted
            .iter()
            .zip(&names)
            .zip(&held)
            .map(|((w, name), &held)| {
                let (data, bytes) = read_for_follower(
                    state,
                    (name.as_deref(), w, held),
                    follower,
                    first,
                    budget(total, response_max),
                );
                total += bytes;
                data
            })
            .collect();
        first = false;
        (data, total)
    })
    .await;
    let answered = wanted.iter().map(|w| w.key.clone()).zip(data).collect();
    FetchResponse {
        responses: into_topics(answered),
        session_id: INVALID_SESSION_ID,
        ..Default::default()
    }
}

/// One partition of a follower's fetch, within `budget` bytes: the diverging epoch when
/// the follower's log parted from this one, else the records from its fetch offset up to
/// the log end offset. When `record` is set, what the follower holds is recorded (not for
/// a diverged log, whose offsets mean nothing here).
fn read_for_follower(
    state: &Arc<BrokerState>,
    (name, wanted, (last_fetched_epoch, log_start)): (Option<&str>, &Wanted, (i32, i64)),
    follower: i32,
    record: bool,
    budget: usize,
) -> (PartitionData, usize) {
    let mut data = empty_partition(wanted.key.partition);
    let replica = name
        .ok_or(ErrorCode::UnknownTopicOrPartition)
        .and_then(|name| {
            state.leader_replica(name, wanted.key.partition, wanted.current_leader_epoch)
        });
    let replica = match replica {
        Ok(replica) => replica,
        Err(error) => {
            data.error_code = error.code();
            return (data, 0);
        }
    };
    let offset = wanted.fetch_offset;
    let (diverging, end) = replica.log.with_log(|log| {
        (
            diverging_epoch(log, last_fetched_epoch, offset),
            log.log_end_offset(),
        )
    });
    if record && diverging.is_none() && offset <= end {
        match replica.follower_fetched(follower, offset, log_start, state.clock_ms()) {
            Ok(note) => {
                let name = name.unwrap_or_default();
                if note.high_watermark_moved {
                    state.wakeups.wake(name, wanted.key.partition);
                }
                if let Some(change) = note.expand {
                    crate::replica_fetcher::send_isr_change(
                        state,
                        name,
                        wanted.key.partition,
                        &replica,
                        change,
                    );
                }
            }
            Err(error) => {
                data.error_code = error.code();
                return (data, 0);
            }
        }
    }
    let partition_max = usize::try_from(wanted.partition_max_bytes)
        .unwrap_or(0)
        .min(budget);
    let throttled = leader_throttles(state, name, wanted.key.partition, &replica, follower);
    let held_back = throttled && state.leader_quota.exceeded();
    let read = replica.log.with_log(|log| {
        put_offsets(&mut data, log);
        match diverging {
            Some(_) => None,
            None if held_back => None,
            None => Some(log.read(offset, partition_max as u64, log.log_end_offset())),
        }
    });
    if let Some((epoch, end_offset)) = diverging {
        data.diverging_epoch.epoch = epoch;
        data.diverging_epoch.end_offset = end_offset;
        return (data, 0);
    }
    let bytes = put_records(&mut data, read);
    if throttled {
        state.leader_quota.record(bytes);
    }
    (data, bytes)
}

/// Whether this leader throttles what `follower` copies of the partition: it is not in
/// the ISR and the topic's `leader.replication.throttled.replicas` names this broker's
/// replica.
fn leader_throttles(
    state: &BrokerState,
    name: Option<&str>,
    partition: i32,
    replica: &Replica,
    follower: i32,
) -> bool {
    let Some(name) = name else { return false };
    let me = state.config.node_id;
    state.leader_quota.is_limited()
        && replica.isr().is_some_and(|isr| !isr.contains(&follower))
        && state.with_image(|image| {
            image.topic(name).is_some_and(|t| {
                throttle::is_throttled(&t.configs, throttle::LEADER_REPLICAS, partition, me)
            })
        })
}
