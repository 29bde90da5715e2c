//! ListGroups (versions 0–5; state filter from v4, type filter from v5): every group this
//! broker coordinates.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{ListGroupsRequest, ListGroupsResponse};

use crate::state::BrokerState;

pub fn handle(
    state: &Arc<BrokerState>,
    request: ListGroupsRequest,
    _version: i16,
) -> ListGroupsResponse {
    let (lists, loading) = state
        .groups
        .read_all(|shard| shard.list_groups(&request.states_filter, &request.types_filter));
    ListGroupsResponse {
        error_code: if loading {
            ErrorCode::CoordinatorLoadInProgress.code()
        } else {
            ErrorCode::None.code()
        },
        groups: lists.into_iter().flatten().collect(),
        ..ListGroupsResponse::default()
    }
}
