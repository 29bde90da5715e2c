//! SyncGroup (versions 0–5): members wait for the leader's assignment of the generation
//! they joined, and each gets its own part.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use crate::acl::{Authz, operation};
use crate::group::shard::Parked;
use crate::state::BrokerState;

/// Needs READ on the group (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: SyncGroupRequest,
    _version: i16,
) -> SyncGroupResponse {
    if !authz.group(operation::READ, &request.group_id) {
        return error(ErrorCode::GroupAuthorizationFailed);
    }
    let answer = state
        .groups
        .run_parked(state, &request.group_id, |shard, now, token| {
            shard.sync(now, token, &request)
        })
        .await;
    let response = match answer {
        Ok(Parked::Sync(response)) => response,
        Ok(Parked::Join(_)) => error(ErrorCode::UnknownServerError),
        Err(code) => error(code),
    };
    tracing::debug!(
        group = %request.group_id,
        member = %request.member_id,
        generation = request.generation_id,
        assignments = request.assignments.len(),
        error = response.error_code,
        assignment_bytes = response.assignment.len(),
        "SyncGroup"
    );
    response
}

fn error(error: ErrorCode) -> SyncGroupResponse {
    SyncGroupResponse {
        error_code: error.code(),
        ..SyncGroupResponse::default()
    }
}
