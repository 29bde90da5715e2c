//! WriteTxnMarkers (version 1): the request a transaction coordinator sends partition
//! leaders to end a transaction. A coordinator writes the markers of the partitions its
//! own broker leads directly and sends this for the others. Each marker is durable before
//! the answer; a partition that does not exist here is UNKNOWN_TOPIC_OR_PARTITION, one
//! led by another broker NOT_LEADER_OR_FOLLOWER, a marker older than the partition's
//! producer epoch (nothing of the transaction open) INVALID_PRODUCER_EPOCH.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use spool_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use spool_protocol::record_batch::ControlRecordType;

use crate::acl::{Authz, operation};
use crate::state::BrokerState;
use crate::txn::runtime::write_marker;

/// Sent by transaction coordinators: needs CLUSTER_ACTION on the cluster (else
/// CLUSTER_AUTHORIZATION_FAILED on every partition).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: WriteTxnMarkersRequest,
    _version: i16,
) -> WriteTxnMarkersResponse {
    let allowed = authz.cluster(operation::CLUSTER_ACTION);
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in &request.markers {
        let kind = if marker.transaction_result {
            ControlRecordType::Commit
        } else {
            ControlRecordType::Abort
        };
        let producer = (marker.producer_id, marker.producer_epoch);
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in &marker.topics {
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for &partition in &topic.partition_indexes {
                let leader = state.partition_leader(&topic.name, partition);
                let error = if !allowed {
                    ErrorCode::ClusterAuthorizationFailed
                } else if leader.is_none() || state.partition(&topic.name, partition).is_none() {
                    ErrorCode::UnknownTopicOrPartition
                } else if leader.is_some_and(|(id, _)| id != state.config.node_id) {
                    ErrorCode::NotLeaderOrFollower
                } else {
                    let written = write_marker(
                        state,
                        &topic.name,
                        partition,
                        producer,
                        kind,
                        marker.coordinator_epoch,
                    );
                    match written {
                        Ok(Some(end)) => {
                            match state.wait_replicated(&topic.name, partition, end).await {
                                Ok(()) => ErrorCode::None,
                                Err(error) => error,
                            }
                        }
                        Ok(None) => ErrorCode::InvalidProducerEpoch,
                        Err(error) => error,
                    }
                };
                partitions.push(WritableTxnMarkerPartitionResult {
                    partition_index: partition,
                    error_code: error.code(),
                    ..Default::default()
                });
            }
            topics.push(WritableTxnMarkerTopicResult {
                name: topic.name.clone(),
                partitions,
                ..Default::default()
            });
        }
        markers.push(WritableTxnMarkerResult {
            producer_id: marker.producer_id,
            topics,
            ..Default::default()
        });
    }
    WriteTxnMarkersResponse {
        markers,
        ..Default::default()
    }
}
