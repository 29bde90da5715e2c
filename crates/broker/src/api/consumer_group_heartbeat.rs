//! ConsumerGroupHeartbeat (versions 0–1): the KIP-848 consumer group protocol. A member
//! joins with epoch 0, heartbeats with its epoch and what it owns, and leaves with -1
//! (-2 for a static member leaving for now); the coordinator answers with its epoch and,
//! when it changed, its assignment (see `group::consumer`). From v1 the member makes its
//! own member ID.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

use crate::group::shard::Client;
use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    client: Client,
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> ConsumerGroupHeartbeatResponse {
    let answer = state
        .groups
        .run(state, &request.group_id, |shard, now| {
            state.with_image(|image| {
                shard.consumer_heartbeat(now, &client, &request, version, image)
            })
        })
        .await;
    let response = answer.unwrap_or_else(|error| ConsumerGroupHeartbeatResponse {
        error_code: error.code(),
        ..ConsumerGroupHeartbeatResponse::default()
    });
    tracing::debug!(
        group = %request.group_id,
        member = %request.member_id,
        epoch = request.member_epoch,
        error = response.error_code,
        answer_epoch = response.member_epoch,
        assigned = response.assignment.as_ref().map(|a| a.topic_partitions.iter().map(|t| t.partitions.len()).sum::<usize>()),
        "ConsumerGroupHeartbeat"
    );
    if response.error_code != ErrorCode::None.code() {
        tracing::debug!(message = ?response.error_message, "ConsumerGroupHeartbeat refused");
    }
    response
}
