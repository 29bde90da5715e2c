//! OffsetDelete (version 0): removes a group's committed offsets of topics it no longer
//! consumes; those of subscribed topics get GROUP_SUBSCRIBED_TO_TOPIC.

use std::sync::Arc;

use spool_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    state
        .groups
        .run(state, &request.group_id, |shard, _| {
            shard.delete_offsets(&request)
        })
        .await
        .unwrap_or_else(|code| OffsetDeleteResponse {
            error_code: code.code(),
            ..OffsetDeleteResponse::default()
        })
}
