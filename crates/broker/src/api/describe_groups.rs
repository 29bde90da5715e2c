//! DescribeGroups (versions 0–6): state, protocol and members of classic groups. A group
//! that does not exist is reported Dead (and, from v6, GROUP_ID_NOT_FOUND).

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_groups_response::DescribedGroup;
use spool_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use crate::acl::{Authz, operation, resource};
use crate::group::shard::DEAD;
use crate::state::BrokerState;

/// Each group needs DESCRIBE (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        if !authz.group(operation::DESCRIBE, &group_id) {
            let mut refused = dead(&group_id, ErrorCode::GroupAuthorizationFailed);
            refused.group_state = String::new();
            groups.push(refused);
            continue;
        }
        let found = state
            .groups
            .run(state, &group_id, |shard, _| shard.describe_group(&group_id))
            .await;
        let mut described = match found {
            Ok(Some(described)) => described,
            Ok(None) if version >= 6 => dead(&group_id, ErrorCode::GroupIdNotFound),
            Ok(None) => dead(&group_id, ErrorCode::None),
            Err(error) => dead(&group_id, error),
        };
        described.authorized_operations = if request.include_authorized_operations {
            authz.operations(resource::GROUP, &group_id)
        } else {
            i32::MIN
        };
        groups.push(described);
    }
    DescribeGroupsResponse {
        groups,
        ..DescribeGroupsResponse::default()
    }
}

fn dead(group_id: &str, error: ErrorCode) -> DescribedGroup {
    DescribedGroup {
        error_code: error.code(),
        error_message: (error != ErrorCode::None).then(|| error.message().to_string()),
        group_id: group_id.to_string(),
        group_state: DEAD.to_string(),
        ..DescribedGroup::default()
    }
}
