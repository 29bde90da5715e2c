//! OffsetCommit (versions 2–9): stores a group's committed offsets as records in
//! `__consumer_offsets`, answered once they are durable. The group, member and generation
//! are checked as Kafka checks them; partitions that do not exist get
//! UNKNOWN_TOPIC_OR_PARTITION.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::offset_commit_request::OffsetCommitRequestTopic;
use spool_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use spool_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs READ on the group (else GROUP_AUTHORIZATION_FAILED on every partition) and on
/// each topic (else TOPIC_AUTHORIZATION_FAILED on its partitions).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    mut request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    if !authz.group(operation::READ, &request.group_id) {
        return OffsetCommitResponse {
            topics: error(&request.topics, ErrorCode::GroupAuthorizationFailed),
            ..OffsetCommitResponse::default()
        };
    }
    let (allowed, denied) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|t| authz.topic(operation::READ, &t.name));
    request.topics = allowed;
    let exists = |topic: &str, partition: i32| state.has_partition(topic, partition);
    let answer = state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.commit_offsets(now, &request, version, &exists)
        })
        .await;
    let mut response = answer.unwrap_or_else(|code| OffsetCommitResponse {
        topics: error(&request.topics, code),
        ..OffsetCommitResponse::default()
    });
    (response.topics).extend(error(&denied, ErrorCode::TopicAuthorizationFailed));
    response
}

/// Every partition of `topics` answered `error`.
fn error(topics: &[OffsetCommitRequestTopic], error: ErrorCode) -> Vec<OffsetCommitResponseTopic> {
    topics
        .iter()
        .map(|t| OffsetCommitResponseTopic {
            name: t.name.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| OffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code: error.code(),
                    ..OffsetCommitResponsePartition::default()
                })
                .collect(),
            ..OffsetCommitResponseTopic::default()
        })
        .collect()
}
