//! DescribeTopicPartitions (version 0, KIP-966): topic and partition metadata, paginated by
//! `response_partition_limit` with a cursor (topic name, partition index).

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use spool_protocol::messages::{DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse};

use crate::acl::{Authz, operation, resource};
use crate::metadata::METADATA_TOPIC;
use crate::state::BrokerState;

/// Topics need DESCRIBE: a named one without it gets TOPIC_AUTHORIZATION_FAILED, a
/// listing of every topic leaves it out.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DescribeTopicPartitionsRequest,
    _version: i16,
) -> DescribeTopicPartitionsResponse {
    let limit = usize::try_from(request.response_partition_limit)
        .unwrap_or(0)
        .max(1);
    let (cursor_topic, cursor_partition) = request
        .cursor
        .map_or((String::new(), 0), |c| (c.topic_name, c.partition_index));
    // An empty list asks for every topic; topics come back in name order.
    let mut names: Vec<String> = if request.topics.is_empty() {
        state.with_image(|image| {
            image
                .topics()
                .map(|t| t.name.clone())
                .filter(|n| !n.starts_with(METADATA_TOPIC))
                .filter(|n| authz.topic(operation::DESCRIBE, n))
                .collect()
        })
    } else {
        request.topics.into_iter().map(|t| t.name).collect()
    };
    names.sort();
    names.dedup();
    let mut topics = Vec::new();
    let mut emitted = 0usize;
    let mut next_cursor = None;
    for name in names.into_iter().filter(|n| *n >= cursor_topic) {
        if !authz.topic(operation::DESCRIBE, &name) {
            topics.push(DescribeTopicPartitionsResponseTopic {
                error_code: ErrorCode::TopicAuthorizationFailed.code(),
                name: Some(name),
                ..Default::default()
            });
            continue;
        }
        let Some(topic) = state
            .with_image(|image| image.topic(&name).cloned())
            .filter(|t| !t.name.starts_with(METADATA_TOPIC))
        else {
            topics.push(DescribeTopicPartitionsResponseTopic {
                error_code: ErrorCode::UnknownTopicOrPartition.code(),
                name: Some(name),
                ..Default::default()
            });
            continue;
        };
        let first = if name == cursor_topic {
            cursor_partition
        } else {
            0
        };
        let mut partitions = Vec::new();
        for p in topic.partitions.iter().filter(|p| p.index >= first) {
            if emitted == limit {
                next_cursor = Some(Cursor {
                    topic_name: name.clone(),
                    partition_index: p.index,
                    ..Default::default()
                });
                break;
            }
            partitions.push(DescribeTopicPartitionsResponsePartition {
                partition_index: p.index,
                leader_id: p.leader,
                leader_epoch: p.leader_epoch,
                replica_nodes: p.replicas.clone(),
                isr_nodes: p.isr.clone(),
                eligible_leader_replicas: Some(Vec::new()),
                last_known_elr: Some(Vec::new()),
                ..Default::default()
            });
            emitted += 1;
        }
        topics.push(DescribeTopicPartitionsResponseTopic {
            name: Some(name),
            topic_id: topic.id,
            is_internal: topic.is_internal(),
            topic_authorized_operations: authz.operations(resource::TOPIC, &topic.name),
            partitions,
            ..Default::default()
        });
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse {
        topics,
        next_cursor,
        ..Default::default()
    }
}
