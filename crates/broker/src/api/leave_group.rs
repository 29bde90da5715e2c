//! LeaveGroup (versions 0–5; several members at once from v3, static members by instance
//! ID): the members go and the rest of the group rebalances.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs READ on the group (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    if !authz.group(operation::READ, &request.group_id) {
        return LeaveGroupResponse {
            error_code: ErrorCode::GroupAuthorizationFailed.code(),
            ..LeaveGroupResponse::default()
        };
    }
    state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.leave(now, &request, version)
        })
        .await
        .unwrap_or_else(|code| LeaveGroupResponse {
            error_code: code.code(),
            ..LeaveGroupResponse::default()
        })
}
