//! ConsumerGroupDescribe (versions 0–1): consumer groups (KIP-848) with their epochs,
//! assignor and members, each with its current and target assignment. A group that does
//! not exist, or is a classic group, gets GROUP_ID_NOT_FOUND (admin clients then fall back
//! to DescribeGroups).

use std::sync::Arc;

use spool_protocol::messages::consumer_group_describe_response::DescribedGroup;
use spool_protocol::messages::{ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse};

use crate::api::describe_groups::GROUP_OPERATIONS;
use crate::group::shard::DEAD;
use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        let found = state
            .groups
            .run(state, &group_id, |shard, _| {
                state.with_image(|image| shard.describe_consumer_group(&group_id, image))
            })
            .await;
        let mut described = found.unwrap_or_else(|error| DescribedGroup {
            error_code: error.code(),
            error_message: Some(error.message().to_string()),
            group_id: group_id.clone(),
            group_state: DEAD.to_string(),
            ..DescribedGroup::default()
        });
        if request.include_authorized_operations {
            described.authorized_operations = GROUP_OPERATIONS;
        }
        groups.push(described);
    }
    ConsumerGroupDescribeResponse {
        groups,
        ..ConsumerGroupDescribeResponse::default()
    }
}
