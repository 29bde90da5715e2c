//! DeleteRecords (versions 0-2): move partitions' log start offsets forward; offset -1
//! means the high watermark.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use spool_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Needs DELETE on each topic (else TOPIC_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let allowed = authz.topic(operation::DELETE, &topic.name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut result = DeleteRecordsPartitionResult {
                partition_index: p.partition_index,
                low_watermark: -1,
                ..Default::default()
            };
            match state.partition(&topic.name, p.partition_index) {
                _ if !allowed => result.error_code = ErrorCode::TopicAuthorizationFailed.code(),
                None => result.error_code = ErrorCode::UnknownTopicOrPartition.code(),
                Some(log) => {
                    let outcome = tokio::task::spawn_blocking(move || {
                        log.with_log(|log| {
                            let target = if p.offset == -1 {
                                log.high_watermark()
                            } else {
                                p.offset
                            };
                            if target < 0 || target > log.high_watermark() {
                                return Err(ErrorCode::OffsetOutOfRange);
                            }
                            log.advance_log_start_offset(target)
                                .map_err(|e| e.error_code())?;
                            Ok(log.log_start_offset())
                        })
                    })
                    .await;
                    match outcome {
                        Ok(Ok(low_watermark)) => result.low_watermark = low_watermark,
                        Ok(Err(error)) => result.error_code = error.code(),
                        Err(_) => result.error_code = ErrorCode::UnknownServerError.code(),
                    }
                }
            }
            partitions.push(result);
        }
        topics.push(DeleteRecordsTopicResult {
            name: topic.name,
            partitions,
            ..Default::default()
        });
    }
    DeleteRecordsResponse {
        topics,
        ..Default::default()
    }
}
