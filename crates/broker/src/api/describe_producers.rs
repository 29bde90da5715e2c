//! DescribeProducers (version 0): the idempotent and transactional producers a partition
//! knows — epoch, last sequence and timestamp, coordinator epoch, and where the
//! producer's open transaction began (how operators find a transaction holding back the
//! last stable offset).

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use spool_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs READ on each topic (else TOPIC_AUTHORIZATION_FAILED).
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DescribeProducersRequest,
    _version: i16,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let allowed = authz.topic(operation::READ, &topic.name);
            TopicResponse {
                name: topic.name.clone(),
                partitions: topic
                    .partition_indexes
                    .iter()
                    .map(|&index| {
                        if allowed {
                            describe(state, &topic.name, index)
                        } else {
                            PartitionResponse {
                                partition_index: index,
                                error_code: ErrorCode::TopicAuthorizationFailed.code(),
                                ..Default::default()
                            }
                        }
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    DescribeProducersResponse {
        topics,
        ..Default::default()
    }
}

fn describe(state: &BrokerState, topic: &str, index: i32) -> PartitionResponse {
    let Some(log) = state.partition(topic, index) else {
        return PartitionResponse {
            partition_index: index,
            error_code: ErrorCode::UnknownTopicOrPartition.code(),
            ..Default::default()
        };
    };
    let mut active_producers: Vec<ProducerState> = log.with_log(|l| {
        l.producer_state()
            .entries()
            .map(|(producer_id, entry)| ProducerState {
                producer_id,
                producer_epoch: i32::from(entry.epoch),
                last_sequence: entry.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: entry.last_timestamp,
                coordinator_epoch: entry.coordinator_epoch,
                current_txn_start_offset: entry.current_txn_first_offset.unwrap_or(-1),
                ..Default::default()
            })
            .collect()
    });
    active_producers.sort_by_key(|p| p.producer_id);
    PartitionResponse {
        partition_index: index,
        active_producers,
        ..Default::default()
    }
}
