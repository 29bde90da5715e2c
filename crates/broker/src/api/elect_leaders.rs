//! ElectLeaders (versions 0-2): preferred (and, from v1, unclean) leader election, done
//! by the active controller (see `controller::elect_leaders`); this broker forwards the
//! request and waits for the outcome. Version 0 has no top-level error: a refusal of the
//! whole request is reported on each partition named.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use spool_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs ALTER on the cluster (else CLUSTER_AUTHORIZATION_FAILED, on the request and on
/// each partition named, as Kafka answers).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let named = request.topic_partitions.clone();
    let allowed = authz.cluster(operation::ALTER);
    let mut response = if allowed {
        state.node.controller.elect_leaders(request).await
    } else {
        ElectLeadersResponse {
            error_code: ErrorCode::ClusterAuthorizationFailed.code(),
            ..Default::default()
        }
    };
    if (version == 0 || !allowed) && response.error_code != ErrorCode::None.code() {
        let error_code = if version == 0 {
            std::mem::take(&mut response.error_code)
        } else {
            response.error_code
        };
        response.replica_election_results = named
            .unwrap_or_default()
            .into_iter()
            .map(|topic| ReplicaElectionResult {
                topic: topic.topic,
                partition_result: topic
                    .partitions
                    .into_iter()
                    .map(|partition_id| PartitionResult {
                        partition_id,
                        error_code,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
    }
    response
}
