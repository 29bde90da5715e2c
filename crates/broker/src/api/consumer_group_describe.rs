//! ConsumerGroupDescribe (versions 0–1): consumer groups (KIP-848) with their epochs,
//! assignor and members, each with its current and target assignment. A group that does
//! not exist, or is a classic group, gets GROUP_ID_NOT_FOUND (admin clients then fall back
//! to DescribeGroups).

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::consumer_group_describe_response::DescribedGroup;
use spool_protocol::messages::{ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse};

use crate::acl::{Authz, operation, resource};
use crate::group::shard::DEAD;
use crate::state::BrokerState;

/// Each group needs DESCRIBE (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        if !authz.group(operation::DESCRIBE, &group_id) {
            let error = ErrorCode::GroupAuthorizationFailed;
            groups.push(DescribedGroup {
                error_code: error.code(),
                error_message: Some(error.message().to_string()),
                group_id,
                ..DescribedGroup::default()
            });
            continue;
        }
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
            described.authorized_operations = authz.operations(resource::GROUP, &group_id);
        }
        groups.push(described);
    }
    ConsumerGroupDescribeResponse {
        groups,
        ..ConsumerGroupDescribeResponse::default()
    }
}
