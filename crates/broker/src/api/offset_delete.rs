//! OffsetDelete (version 0): removes a group's committed offsets of topics it no longer
//! consumes; those of subscribed topics get GROUP_SUBSCRIBED_TO_TOPIC.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use spool_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs DELETE on the group (else GROUP_AUTHORIZATION_FAILED) and READ on each topic
/// (else TOPIC_AUTHORIZATION_FAILED on its partitions).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    mut request: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    if !authz.group(operation::DELETE, &request.group_id) {
        return OffsetDeleteResponse {
            error_code: ErrorCode::GroupAuthorizationFailed.code(),
            ..OffsetDeleteResponse::default()
        };
    }
    let (allowed, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|t| authz.topic(operation::READ, &t.name));
    request.topics = allowed;
    let mut response = state
        .groups
        .run(state, &request.group_id, |shard, _| {
            shard.delete_offsets(&request)
        })
        .await
        .unwrap_or_else(|code| OffsetDeleteResponse {
            error_code: code.code(),
            ..OffsetDeleteResponse::default()
        });
    if response.error_code == ErrorCode::None.code() {
        response.topics.extend(denied.into_iter().map(|t| {
            OffsetDeleteResponseTopic {
                name: t.name,
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| OffsetDeleteResponsePartition {
                        partition_index: p.partition_index,
                        error_code: ErrorCode::TopicAuthorizationFailed.code(),
                    })
                    .collect(),
            }
        }));
    }
    response
}
