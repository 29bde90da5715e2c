//! DescribeCluster (versions 0-2): the cluster ID, the controller and the brokers.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use spool_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};

use crate::acl::{Authz, CLUSTER_NAME, resource};
use crate::state::BrokerState;

/// `endpoint_type`: brokers (1) or controllers (2).
const BROKERS: i8 = 1;

/// With `include_cluster_authorized_operations`, the operations the caller may do on the
/// cluster.
pub fn handle(
    state: &Arc<BrokerState>,
    (listener, authz): (&str, &Authz<'_>),
    request: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse {
        cluster_id: state.config.cluster_id.clone(),
        controller_id: state.config.node_id,
        endpoint_type: if version >= 1 {
            request.endpoint_type
        } else {
            BROKERS
        },
        cluster_authorized_operations: if request.include_cluster_authorized_operations {
            authz.operations(resource::CLUSTER, CLUSTER_NAME)
        } else {
            i32::MIN
        },
        ..Default::default()
    };
    if version >= 1 && request.endpoint_type != BROKERS {
        // Controller endpoints are asked of controllers, not of brokers (KIP-919).
        response.error_code = ErrorCode::UnsupportedEndpointType.code();
        response.error_message =
            Some("this broker describes brokers; ask a controller for controllers".into());
        return response;
    }
    response.brokers = state
        .live_brokers(listener)
        .into_iter()
        .map(|b| DescribeClusterBroker {
            broker_id: b.id,
            host: b.host,
            port: i32::from(b.port),
            rack: b.rack,
            ..Default::default()
        })
        .collect();
    response
}
