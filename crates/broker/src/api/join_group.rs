//! JoinGroup (versions 0–9): a member joins a classic group and waits for the join phase
//! to complete (see `group::shard`). New dynamic members from v4 first get a member ID
//! with MEMBER_ID_REQUIRED.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use crate::acl::{Authz, operation};
use crate::group::shard::{Client, Parked};
use crate::state::BrokerState;

/// Needs READ on the group (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    (client, authz): (Client, &Authz<'_>),
    request: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    if !authz.group(operation::READ, &request.group_id) {
        let mut response = error(&request, ErrorCode::GroupAuthorizationFailed);
        if version < 7 {
            response.protocol_name = Some(String::new());
        }
        return response;
    }
    let answer = state
        .groups
        .run_parked(state, &request.group_id, |shard, now, token| {
            shard.join(now, token, &client, &request, version)
        })
        .await;
    let mut response = match answer {
        Ok(Parked::Join(response)) => response,
        Ok(Parked::Sync(_)) => error(&request, ErrorCode::UnknownServerError),
        Err(code) => error(&request, code),
    };
    tracing::debug!(
        group = %request.group_id,
        member = %request.member_id,
        answer_member = %response.member_id,
        error = response.error_code,
        generation = response.generation_id,
        leader = %response.leader,
        members = response.members.len(),
        "JoinGroup"
    );
    if version < 7 {
        // Before v7 the protocol name is not nullable.
        response.protocol_name.get_or_insert_with(String::new);
    }
    response
}

fn error(request: &JoinGroupRequest, error: ErrorCode) -> JoinGroupResponse {
    JoinGroupResponse {
        error_code: error.code(),
        generation_id: -1,
        member_id: request.member_id.clone(),
        ..JoinGroupResponse::default()
    }
}
