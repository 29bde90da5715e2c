//! ListOffsets (versions 0-10): the earliest (-2), latest (-1), max-timestamp (-3) or
//! by-timestamp offset of partitions.
//!
//! Version 0, which Kafka 4 no longer takes, is served for tools that send it without
//! asking ApiVersions first (sarama before 1.27, as in Burrow 1.2, asks for high
//! watermarks with it). Its answer is a list of at most `max_num_offsets` offsets; this
//! broker puts in it the one offset later versions answer (Kafka 3 listed the start
//! offsets of older segments after it, which no consumer of this version reads).

use std::sync::Arc;

use spool_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use spool_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use spool_protocol::ErrorCode;

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// read_committed consumers ask for offsets bounded by the last stable offset.
const READ_COMMITTED: i8 = 1;

/// Each topic needs DESCRIBE (else TOPIC_AUTHORIZATION_FAILED).
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let allowed = authz.topic(operation::DESCRIBE, &topic.name);
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let mut response = ListOffsetsPartitionResponse {
                        partition_index: p.partition_index,
                        timestamp: -1,
                        offset: -1,
                        ..Default::default()
                    };
                    if !allowed {
                        response.error_code = ErrorCode::TopicAuthorizationFailed.code();
                        return response;
                    }
                    let log = match state.leader_log(
                        &topic.name,
                        p.partition_index,
                        p.current_leader_epoch,
                    ) {
                        Ok(log) => log,
                        Err(error) => {
                            response.error_code = error.code();
                            return response;
                        }
                    };
                    let found = log.with_log(|log| match p.timestamp {
                        EARLIEST => Ok(Some((log.log_start_offset(), -1))),
                        LATEST if request.isolation_level == READ_COMMITTED => {
                            Ok(Some((log.last_stable_offset(), -1)))
                        }
                        LATEST => Ok(Some((log.high_watermark(), -1))),
                        MAX_TIMESTAMP => log.max_timestamp_offset(),
                        timestamp => log.offset_for_timestamp(timestamp).map(|found| {
                            found.filter(|(offset, _)| *offset < log.high_watermark())
                        }),
                    });
                    match found {
                        Ok(Some((offset, timestamp))) => {
                            response.offset = offset;
                            response.timestamp = timestamp;
                            if version >= 4 {
                                response.leader_epoch = 0;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => response.error_code = e.error_code().code(),
                    }
                    if version == 0 {
                        into_old_style(&mut response, p.max_num_offsets);
                    }
                    response
                })
                .collect();
            ListOffsetsTopicResponse {
                name: topic.name,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    ListOffsetsResponse {
        topics,
        ..Default::default()
    }
}

/// Moves a found offset into version 0's list of offsets (empty when none was found or
/// none was asked for).
fn into_old_style(response: &mut ListOffsetsPartitionResponse, max_num_offsets: i32) {
    if response.offset >= 0 && max_num_offsets > 0 {
        response.old_style_offsets = vec![response.offset];
    }
    response.offset = -1;
    response.timestamp = -1;
}
