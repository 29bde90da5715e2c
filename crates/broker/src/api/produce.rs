//! Produce (versions 3-13; advertised from 0 for librdkafka, see `compat`): append record
//! batches to partition logs. acks=0 gets no response, acks=1 is answered once the batch
//! is in the log, acks=all (-1) once it is on stable storage (group commit). Idempotent
//! producers' batches are checked by the log (sequence and epoch); a retry of a batch
//! already written is answered with the original offsets. A transactional batch must
//! belong to its producer's ongoing transaction (see [`join_transaction`]).
//!
//! Handling has two steps. [`append`] writes the batches and runs on the connection's
//! reader, one request at a time, so that pipelined produce requests land in the log in
//! the order they were sent (as Kafka processes a connection's requests in order). It
//! runs inline on the reader's task: an append is a write into the page cache, and a
//! hand-off to the blocking pool per request cost more than the write (at 10k requests/s
//! the hops alone backed requests up by half a second). A segment roll syncs the outgoing
//! segment and so holds that worker for the length of one fsync, once per segment.
//! [`respond`] waits for durability through the broker's flusher and builds the answer,
//! concurrently with later requests, so acks=all producers that pipeline share fsyncs.

use std::sync::Arc;
use std::time::Duration;

use spool_log::{AppendInfo, SharedLog};
use spool_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use spool_protocol::messages::{ProduceRequest, ProduceResponse};
use spool_protocol::record_batch::RecordBatches;
use spool_protocol::{ErrorCode, Uuid};

use crate::acl::{Authz, operation};
use crate::group::OFFSETS_TOPIC;
use crate::replica::Replica;
use crate::state::{BrokerState, LeaderHints, now_ms};
use crate::txn::TXN_TOPIC;
use crate::txn::runtime::join_or_verify;
use crate::txn::shard::Producer;

/// A produce request whose batches have been appended (or refused).
pub struct Appended {
    acks: i16,
    /// How long an acks=all answer may wait for the ISR.
    timeout: Duration,
    topics: Vec<AppendedTopic>,
}

/// A partition's append: its replica, what the append did and the leader epoch it was
/// stamped with; or the error to answer with.
type PartitionOutcome = Result<(Arc<Replica>, AppendInfo, i32), ErrorCode>;

struct AppendedTopic {
    /// The request's name (versions before 13), or the one its ID resolved to.
    name: String,
    topic_id: Uuid,
    partitions: Vec<(i32, PartitionOutcome)>,
}

fn partition_error(index: i32, error: ErrorCode) -> PartitionProduceResponse {
    PartitionProduceResponse {
        index,
        error_code: error.code(),
        base_offset: -1,
        ..Default::default()
    }
}

/// Produce versions from which a transactional write adds its partition to the
/// transaction itself (KIP-890 transaction version 2); older ones are verified.
const IMPLICIT_ADD_SINCE: i16 = 12;

/// A transactional write must belong to its producer's ongoing transaction. When the
/// partition already holds that transaction, it does; otherwise the coordinator adds the
/// partition (Produce v12+) or confirms it was added (KIP-890's verification), so a late
/// or stray write can never open a transaction nobody will end. Errors are the ones a
/// producer acts on: a fenced producer gets INVALID_PRODUCER_EPOCH, a transaction being
/// ended or a coordinator loading a retriable NOT_ENOUGH_REPLICAS, as Kafka answers.
async fn join_transaction(
    state: &BrokerState,
    transactional_id: Option<&str>,
    log: &SharedLog,
    (topic, partition): (&str, i32),
    producer: Producer,
    version: i16,
) -> Result<(), ErrorCode> {
    let Some(id) = transactional_id.filter(|id| !id.is_empty()) else {
        return Err(ErrorCode::InvalidTxnState);
    };
    let open_here = log.with_log(|l| {
        l.producer_state()
            .entry(producer.id)
            .is_some_and(|e| e.epoch == producer.epoch && e.current_txn_first_offset.is_some())
    });
    if open_here {
        return Ok(());
    }
    let implicit = version >= IMPLICIT_ADD_SINCE;
    let outcome = join_or_verify(state, id, producer, (topic, partition), implicit).await;
    outcome.map_err(|error| match error {
        ErrorCode::ProducerFenced => ErrorCode::InvalidProducerEpoch,
        ErrorCode::ConcurrentTransactions
        | ErrorCode::CoordinatorLoadInProgress
        | ErrorCode::CoordinatorNotAvailable
        | ErrorCode::NotCoordinator => ErrorCode::NotEnoughReplicas,
        ErrorCode::InvalidProducerIdMapping => ErrorCode::InvalidTxnState,
        other => other,
    })
}

/// Step one: append every batch of the request, in order (on the connection's reader),
/// waking the fetches waiting on each partition written. Only a transaction's first write
/// to a partition waits, for the transaction coordinator. A transactional producer needs
/// WRITE on its transactional ID, and every producer WRITE on the topics it writes.
pub async fn append(
    state: &BrokerState,
    authz: &Authz<'_>,
    request: ProduceRequest,
    version: i16,
) -> Appended {
    let acks = request.acks;
    let transaction_denied = request
        .transactional_id
        .as_deref()
        .is_some_and(|id| !authz.transactional_id(operation::WRITE, id));
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        // Version 13 names topics by ID.
        let name = if version >= 13 {
            state.with_image(|image| image.topic_by_id(&topic.topic_id).map(|t| t.name.clone()))
        } else {
            Some(topic.name.clone())
        };
        let denied = if transaction_denied {
            Some(ErrorCode::TransactionalIdAuthorizationFailed)
        } else {
            let allowed = name
                .as_deref()
                .is_none_or(|name| authz.topic(operation::WRITE, name));
            (!allowed).then_some(ErrorCode::TopicAuthorizationFailed)
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for partition in topic.partition_data {
            let index = partition.index;
            if let Some(error) = denied {
                partitions.push((index, Err(error)));
                continue;
            }
            if !matches!(acks, -1..=1) {
                partitions.push((index, Err(ErrorCode::InvalidRequiredAcks)));
                continue;
            }
            // Internal topics are written by their coordinators only, as in Kafka.
            if matches!(name.as_deref(), Some(OFFSETS_TOPIC | TXN_TOPIC)) {
                partitions.push((index, Err(ErrorCode::InvalidTopicException)));
                continue;
            }
            let replica = name
                .as_deref()
                .map(|name| state.leader_replica(name, index, -1));
            let (Some(Ok(replica)), Some(records)) = (replica.clone(), partition.records) else {
                let error = match replica {
                    None if version >= 13 => ErrorCode::UnknownTopicId,
                    Some(Err(error)) => error,
                    _ => ErrorCode::UnknownTopicOrPartition,
                };
                partitions.push((index, Err(error)));
                continue;
            };
            let transactional = RecordBatches::new(records.clone())
                .filter_map(Result::ok)
                .find(|b| b.is_transactional())
                .map(|b| Producer {
                    id: b.producer_id(),
                    epoch: b.producer_epoch(),
                });
            if let Some(producer) = transactional {
                let topic = name.as_deref().unwrap_or_default();
                let joined = join_transaction(
                    state,
                    request.transactional_id.as_deref(),
                    &replica.log,
                    (topic, index),
                    producer,
                    version,
                )
                .await;
                if let Err(error) = joined {
                    partitions.push((index, Err(error)));
                    continue;
                }
            }
            let size = records.len();
            let outcome = match replica.append_as_leader(records, acks, now_ms()) {
                Ok((info, epoch)) => {
                    let topic = name.as_deref().unwrap_or_default();
                    if !info.duplicate {
                        let count = u64::try_from(info.record_count).unwrap_or(0);
                        state.metrics.produced(topic, size, count);
                    } else {
                        tracing::debug!(
                            topic,
                            partition = index,
                            offset = info.first_offset,
                            "a producer's retry of a batch already written"
                        );
                    }
                    state.wakeups.wake(topic, index);
                    Ok((replica, info, epoch))
                }
                Err(error) => Err(error),
            };
            partitions.push((index, outcome));
        }
        topics.push(AppendedTopic {
            name: name.unwrap_or_default(),
            topic_id: topic.topic_id,
            partitions,
        });
    }
    Appended {
        acks,
        timeout: Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0)),
        topics,
    }
}

/// Produce versions whose NOT_LEADER_OR_FOLLOWER answers say where the leader is
/// (KIP-951), so that the producer moves on without asking for metadata first.
const LEADER_HINTS_VERSION: i16 = 10;

/// Step two: wait for durability when acks=all, then answer (nothing for acks=0). A
/// partition answered NOT_LEADER_OR_FOLLOWER carries its leader as this broker knows it,
/// and the response that leader's endpoint on `listener` (the request's).
pub async fn respond(
    state: &BrokerState,
    appended: Appended,
    version: i16,
    listener: &str,
) -> Option<ProduceResponse> {
    let Appended {
        acks,
        timeout,
        topics,
    } = appended;
    if acks == 0 {
        return None;
    }
    let _waiting = (acks == -1).then(|| state.metrics.produce_waiting());
    let mut responses = Vec::with_capacity(topics.len());
    let mut hints = LeaderHints::new(state, listener);
    for topic in topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (index, outcome) in topic.partitions {
            let mut response = match outcome {
                Err(error) => partition_error(index, error),
                Ok((replica, info, epoch)) => {
                    let log = &replica.log;
                    let end = info.last_offset + 1;
                    let durable = if acks == -1 {
                        match state.flusher.wait_durable(log, end).await {
                            Ok(()) => replica.wait_committed(epoch, end, timeout).await,
                            Err(error) => Err(error),
                        }
                    } else {
                        Ok(())
                    };
                    match durable {
                        Ok(()) => PartitionProduceResponse {
                            index,
                            error_code: ErrorCode::None.code(),
                            base_offset: info.first_offset,
                            log_append_time_ms: info.log_append_time_ms,
                            log_start_offset: log.with_log(|l| l.log_start_offset()),
                            ..Default::default()
                        },
                        Err(error) => partition_error(index, error),
                    }
                }
            };
            if version >= LEADER_HINTS_VERSION
                && response.error_code == ErrorCode::NotLeaderOrFollower.code()
            {
                let (leader_id, leader_epoch) = hints.leader_of(&topic.name, index);
                response.current_leader = LeaderIdAndEpoch {
                    leader_id,
                    leader_epoch,
                    ..Default::default()
                };
            }
            partitions.push(response);
        }
        responses.push(TopicProduceResponse {
            name: if version < 13 {
                topic.name
            } else {
                String::new()
            },
            topic_id: if version >= 13 {
                topic.topic_id
            } else {
                Uuid::ZERO
            },
            partition_responses: partitions,
            ..Default::default()
        });
    }
    Some(ProduceResponse {
        responses,
        node_endpoints: hints
            .endpoints()
            .map(|b| NodeEndpoint {
                node_id: b.id,
                host: b.host,
                port: i32::from(b.port),
                rack: b.rack,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}
