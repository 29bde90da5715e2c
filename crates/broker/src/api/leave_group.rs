//! LeaveGroup (versions 0–5; several members at once from v3, static members by instance
//! ID): the members go and the rest of the group rebalances.

use std::sync::Arc;

use spool_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
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
