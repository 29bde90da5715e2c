//! AlterPartitionReassignments (versions 0-1): starts or cancels moving partitions to
//! other brokers, decided by the active controller (see the metadata crate's
//! `reassignment`); this broker forwards the request and waits for the outcome.

use std::sync::Arc;

use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};

use spool_protocol::ErrorCode;

use crate::acl::{Authz, DENIED, operation};
use crate::state::BrokerState;

/// Needs ALTER on the cluster (else CLUSTER_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: AlterPartitionReassignmentsRequest,
    _version: i16,
) -> AlterPartitionReassignmentsResponse {
    if !authz.cluster(operation::ALTER) {
        return AlterPartitionReassignmentsResponse {
            error_code: ErrorCode::ClusterAuthorizationFailed.code(),
            error_message: Some(DENIED.into()),
            ..Default::default()
        };
    }
    state
        .node
        .controller
        .alter_partition_reassignments(request)
        .await
}
