//! AlterPartitionReassignments (versions 0-1): starts or cancels moving partitions to
//! other brokers, decided by the active controller (see the metadata crate's
//! `reassignment`); this broker forwards the request and waits for the outcome.

use std::sync::Arc;

use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};

use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: AlterPartitionReassignmentsRequest,
    _version: i16,
) -> AlterPartitionReassignmentsResponse {
    state
        .node
        .controller
        .alter_partition_reassignments(request)
        .await
}
