//! ListPartitionReassignments (version 0): the reassignments under way, from this
//! broker's metadata image: each partition's replicas (current and target together) and
//! those being added and removed. With topics named, only their partitions being
//! reassigned; unknown ones are left out, as Kafka does.

use std::sync::Arc;

use spool_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use spool_protocol::messages::{
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

use spool_protocol::ErrorCode;

use crate::acl::{Authz, DENIED, operation};
use crate::state::BrokerState;

/// Needs DESCRIBE on the cluster (else CLUSTER_AUTHORIZATION_FAILED).
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: ListPartitionReassignmentsRequest,
    _version: i16,
) -> ListPartitionReassignmentsResponse {
    if !authz.cluster(operation::DESCRIBE) {
        return ListPartitionReassignmentsResponse {
            error_code: ErrorCode::ClusterAuthorizationFailed.code(),
            error_message: Some(DENIED.into()),
            ..Default::default()
        };
    }
    let topics = state.with_image(|image| {
        let wanted: Vec<(&str, Option<&[i32]>)> = match &request.topics {
            Some(topics) => topics
                .iter()
                .map(|t| (t.name.as_str(), Some(t.partition_indexes.as_slice())))
                .collect(),
            None => image.topics().map(|t| (t.name.as_str(), None)).collect(),
        };
        wanted
            .into_iter()
            .filter_map(|(name, indexes)| {
                let topic = image.topic(name)?;
                let partitions: Vec<OngoingPartitionReassignment> = topic
                    .partitions
                    .iter()
                    .filter(|p| p.is_reassigning())
                    .filter(|p| indexes.is_none_or(|wanted| wanted.contains(&p.index)))
                    .map(|p| OngoingPartitionReassignment {
                        partition_index: p.index,
                        replicas: p.replicas.clone(),
                        adding_replicas: p.adding_replicas.clone(),
                        removing_replicas: p.removing_replicas.clone(),
                        ..Default::default()
                    })
                    .collect();
                (!partitions.is_empty()).then(|| OngoingTopicReassignment {
                    name: name.to_string(),
                    partitions,
                    ..Default::default()
                })
            })
            .collect()
    });
    ListPartitionReassignmentsResponse {
        topics,
        ..Default::default()
    }
}
