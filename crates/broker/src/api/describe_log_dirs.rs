//! DescribeLogDirs (versions 1-4): the data directory and the size of every partition in it.

use std::sync::Arc;

use spool_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use spool_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use spool_protocol::ErrorCode;

use crate::acl::{Authz, operation};
use crate::metadata::METADATA_TOPIC;
use crate::state::BrokerState;

/// Needs DESCRIBE on the cluster: otherwise CLUSTER_AUTHORIZATION_FAILED from version 3,
/// and no directories before (the versions without an error field), as in Kafka.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    if !authz.cluster(operation::DESCRIBE) {
        return DescribeLogDirsResponse {
            error_code: if version >= 3 {
                ErrorCode::ClusterAuthorizationFailed.code()
            } else {
                ErrorCode::None.code()
            },
            ..Default::default()
        };
    }
    // `None` asks for every partition.
    let wanted: Vec<(String, Vec<i32>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic, t.partitions))
            .collect(),
        None => state.with_image(|image| {
            image
                .topics()
                .filter(|t| !t.name.starts_with(METADATA_TOPIC))
                .map(|t| {
                    (
                        t.name.clone(),
                        t.partitions.iter().map(|p| p.index).collect(),
                    )
                })
                .collect()
        }),
    };
    let topics = wanted
        .into_iter()
        .filter_map(|(name, indexes)| {
            let partitions: Vec<DescribeLogDirsPartition> = indexes
                .into_iter()
                .filter_map(|index| {
                    let log = state.partition(&name, index)?;
                    let size = log.with_log(|log| log.size_bytes());
                    Some(DescribeLogDirsPartition {
                        partition_index: index,
                        partition_size: i64::try_from(size).unwrap_or(i64::MAX),
                        offset_lag: 0,
                        ..Default::default()
                    })
                })
                .collect();
            (!partitions.is_empty()).then_some(DescribeLogDirsTopic {
                name,
                partitions,
                ..Default::default()
            })
        })
        .collect();
    let log_dir = std::fs::canonicalize(&state.config.data_dir)
        .unwrap_or_else(|_| state.config.data_dir.clone());
    DescribeLogDirsResponse {
        results: vec![DescribeLogDirsResult {
            log_dir: log_dir.display().to_string(),
            topics,
            total_bytes: -1,
            usable_bytes: -1,
            ..Default::default()
        }],
        ..Default::default()
    }
}
