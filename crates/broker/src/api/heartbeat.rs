//! Heartbeat (versions 0–4): keeps a classic member's session alive;
//! REBALANCE_IN_PROGRESS tells it to rejoin.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs READ on the group (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    if !authz.group(operation::READ, &request.group_id) {
        return HeartbeatResponse {
            error_code: ErrorCode::GroupAuthorizationFailed.code(),
            ..HeartbeatResponse::default()
        };
    }
    let error = state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.heartbeat(
                now,
                &request.group_id,
                &request.member_id,
                request.group_instance_id.as_deref(),
                request.generation_id,
            )
        })
        .await
        .unwrap_or_else(|code| code);
    HeartbeatResponse {
        error_code: error.code(),
        ..HeartbeatResponse::default()
    }
}
