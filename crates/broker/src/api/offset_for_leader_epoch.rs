//! OffsetForLeaderEpoch (versions 2-4): where a leader epoch ended, from the leader-epoch
//! cache, so replicas and consumers can detect a diverged log; FENCED_LEADER_EPOCH or
//! UNKNOWN_LEADER_EPOCH when the caller's view of the current epoch is off.

use std::sync::Arc;

use spool_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use spool_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use spool_protocol::ErrorCode;

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Followers ask with CLUSTER_ACTION on the cluster, consumers with DESCRIBE on each topic
/// (else TOPIC_AUTHORIZATION_FAILED), as in Kafka.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let replica = authz.cluster(operation::CLUSTER_ACTION);
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let allowed = replica || authz.topic(operation::DESCRIBE, &topic.topic);
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let mut result = EpochEndOffset {
                        partition: p.partition,
                        leader_epoch: -1,
                        end_offset: -1,
                        ..Default::default()
                    };
                    if !allowed {
                        result.error_code = ErrorCode::TopicAuthorizationFailed.code();
                        return result;
                    }
                    match state.leader_log(&topic.topic, p.partition, p.current_leader_epoch) {
                        Err(error) => result.error_code = error.code(),
                        Ok(log) => {
                            let (epoch, end_offset) =
                                log.with_log(|log| log.end_offset_for_epoch(p.leader_epoch));
                            result.leader_epoch = epoch;
                            result.end_offset = end_offset;
                        }
                    }
                    result
                })
                .collect();
            OffsetForLeaderTopicResult {
                topic: topic.topic,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    OffsetForLeaderEpochResponse {
        topics,
        ..Default::default()
    }
}
