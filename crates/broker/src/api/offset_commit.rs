//! OffsetCommit (versions 2–9): stores a group's committed offsets as records in
//! `__consumer_offsets`, answered once they are durable. The group, member and generation
//! are checked as Kafka checks them; partitions that do not exist get
//! UNKNOWN_TOPIC_OR_PARTITION.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use spool_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let exists = |topic: &str, partition: i32| state.has_partition(topic, partition);
    let answer = state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.commit_offsets(now, &request, version, &exists)
        })
        .await;
    answer.unwrap_or_else(|code| error(&request, code))
}

fn error(request: &OffsetCommitRequest, error: ErrorCode) -> OffsetCommitResponse {
    OffsetCommitResponse {
        topics: request
            .topics
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
            .collect(),
        ..OffsetCommitResponse::default()
    }
}
