//! ConsumerGroupHeartbeat (versions 0–1): the KIP-848 consumer group protocol. A member
//! joins with epoch 0, heartbeats with its epoch and what it owns, and leaves with -1
//! (-2 for a static member leaving for now); the coordinator answers with its epoch and,
//! when it changed, its assignment (see `group::consumer`). From v1 the member makes its
//! own member ID.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

use crate::acl::{Authz, operation};
use crate::group::shard::Client;
use crate::state::BrokerState;

/// Needs READ on the group (else GROUP_AUTHORIZATION_FAILED) and DESCRIBE on every topic
/// the member subscribes to by name (else TOPIC_AUTHORIZATION_FAILED), as in Kafka.
pub async fn handle(
    state: &Arc<BrokerState>,
    (client, authz): (Client, &Authz<'_>),
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> ConsumerGroupHeartbeatResponse {
    let refusal = if !authz.group(operation::READ, &request.group_id) {
        Some(ErrorCode::GroupAuthorizationFailed)
    } else {
        let topics = request.subscribed_topic_names.iter().flatten();
        let mut denied = topics.filter(|t| !authz.topic(operation::DESCRIBE, t));
        denied.next().map(|_| ErrorCode::TopicAuthorizationFailed)
    };
    if let Some(error) = refusal {
        return ConsumerGroupHeartbeatResponse {
            error_code: error.code(),
            error_message: Some(error.message().to_string()),
            ..ConsumerGroupHeartbeatResponse::default()
        };
    }
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
