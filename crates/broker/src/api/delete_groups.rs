//! DeleteGroups (versions 0–2): removes empty groups and their committed offsets.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::delete_groups_response::DeletableGroupResult;
use spool_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Each group needs DELETE (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        if !authz.group(operation::DELETE, &group_id) {
            results.push(DeletableGroupResult {
                group_id,
                error_code: ErrorCode::GroupAuthorizationFailed.code(),
                ..DeletableGroupResult::default()
            });
            continue;
        }
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
