//! OffsetForLeaderEpoch (versions 2-4): where a leader epoch ended, from the leader-epoch
//! cache, so replicas and consumers can detect a diverged log; FENCED_LEADER_EPOCH or
//! UNKNOWN_LEADER_EPOCH when the caller's view of the current epoch is off.

use std::sync::Arc;

use spool_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use spool_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::state::BrokerState;

pub fn handle(
    state: &Arc<BrokerState>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let mut result = EpochEndOffset {
                        partition: p.partition,
                        leader_epoch: -1,
                        end_offset: -1,
                        ..Default::default()
                    };
                    match state.leader_log(&topic.topic, p.partition, p.current_leader_epoch) {
                        Err(error) => result.error_code = error.code(),
                        Ok(log) => {
                            let (epoch, end_offset) =
                                log.with_log(|log| log.end_offset_for_epoch(p.leader_epoch));
                            result.leader_epoch = epoch;
                            result.end_offset = end_offset;
                        }
                    }
                    result
                })
                .collect();
            OffsetForLeaderTopicResult {
                topic: topic.topic,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    OffsetForLeaderEpochResponse {
        topics,
        ..Default::default()
    }
}
