//! ListGroups (versions 0–5; state filter from v4, type filter from v5): every group this
//! broker coordinates.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{ListGroupsRequest, ListGroupsResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Lists every group to a caller with DESCRIBE on the cluster, else only the groups it
/// may DESCRIBE.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: ListGroupsRequest,
    _version: i16,
) -> ListGroupsResponse {
    let everything = authz.cluster(operation::DESCRIBE);
    let (lists, loading) = state
        .groups
        .read_all(|shard| shard.list_groups(&request.states_filter, &request.types_filter));
    ListGroupsResponse {
        error_code: if loading {
            ErrorCode::CoordinatorLoadInProgress.code()
        } else {
            ErrorCode::None.code()
        },
        groups: lists
            .into_iter()
            .flatten()
            .filter(|g| everything || authz.group(operation::DESCRIBE, &g.group_id))
            .collect(),
        ..ListGroupsResponse::default()
    }
}
