//! OffsetForLeaderEpoch (versions 2-4): where a leader epoch ended, from the leader-epoch
//! cache, so replicas and consumers can detect a diverged log; FENCED_LEADER_EPOCH or
//! UNKNOWN_LEADER_EPOCH when the caller's view of the current epoch is off.

use std::sync::Arc;

use spool_protocol::ErrorCode;
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
                    let current = state.with_image(|image| {
                        image.topic(&topic.topic).and_then(|t| {
                            t.partitions
                                .iter()
                                .find(|q| q.index == p.partition)
                                .map(|q| q.leader_epoch)
                        })
                    });
                    let (Some(current), Some(log)) =
                        (current, state.partition(&topic.topic, p.partition))
                    else {
                        result.error_code = ErrorCode::UnknownTopicOrPartition.code();
                        return result;
                    };
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch < current {
                        result.error_code = ErrorCode::FencedLeaderEpoch.code();
                    } else if p.current_leader_epoch > current {
                        result.error_code = ErrorCode::UnknownLeaderEpoch.code();
                    } else {
                        let (epoch, end_offset) =
                            log.with_log(|log| log.end_offset_for_epoch(p.leader_epoch));
                        result.leader_epoch = epoch;
                        result.end_offset = end_offset;
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
