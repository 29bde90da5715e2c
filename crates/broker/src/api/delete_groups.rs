//! DeleteGroups (versions 0–2): removes empty groups and their committed offsets.

use std::sync::Arc;

use spool_protocol::messages::delete_groups_response::DeletableGroupResult;
use spool_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let error = state
            .groups
            .run(state, &group_id, |shard, _| shard.delete_group(&group_id))
            .await
            .unwrap_or_else(|code| code);
        results.push(DeletableGroupResult {
            group_id,
            error_code: error.code(),
            ..DeletableGroupResult::default()
        });
    }
    DeleteGroupsResponse {
        results,
        ..DeleteGroupsResponse::default()
    }
}
