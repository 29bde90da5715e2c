//! Produce (versions 3-13; advertised from 0 for librdkafka, see `compat`): append record
//! batches to partition logs. acks=0 gets no response, acks=1 is answered once the batch
//! is in the log, acks=all (-1) once it is on stable storage (group commit).

use std::sync::Arc;

use spool_log::{AppendInfo, LogError};
use spool_protocol::ErrorCode;
use spool_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use spool_protocol::messages::{ProduceRequest, ProduceResponse};

use crate::state::{BrokerState, now_ms};

fn partition_error(index: i32, error: ErrorCode) -> PartitionProduceResponse {
    PartitionProduceResponse {
        index,
        error_code: error.code(),
        base_offset: -1,
        ..Default::default()
    }
}

pub async fn handle(
    state: &Arc<BrokerState>,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        // Version 13 names topics by ID.
        let name = if version >= 13 {
            state.with_image(|image| image.topic_by_id(&topic.topic_id).map(|t| t.name.clone()))
        } else {
            Some(topic.name.clone())
        };
        // Appends run side by side on the blocking pool (they write and may fsync); their
        // answers are collected in request order.
        let mut pending = Vec::with_capacity(topic.partition_data.len());
        for partition in topic.partition_data {
            let index = partition.index;
            if !matches!(acks, -1..=1) {
                pending.push((index, Err(ErrorCode::InvalidRequiredAcks)));
                continue;
            }
            let log = name
                .as_deref()
                .and_then(|name| state.partition(name, index));
            let (Some(log), Some(records)) = (log, partition.records) else {
                let error = if name.is_none() && version >= 13 {
                    ErrorCode::UnknownTopicId
                } else {
                    ErrorCode::UnknownTopicOrPartition
                };
                pending.push((index, Err(error)));
                continue;
            };
            let task = tokio::task::spawn_blocking(move || -> Result<AppendInfo, LogError> {
                let now = now_ms();
                let info = if acks == -1 {
                    log.append_durably(records, 0, now)?
                } else {
                    log.append(records, 0, now)?
                };
                // One replica: the ISR has the batch as soon as the leader does.
                log.with_log(|l| l.advance_high_watermark(info.last_offset + 1));
                Ok(info)
            });
            pending.push((index, Ok(task)));
        }
        let mut partitions = Vec::with_capacity(pending.len());
        for (index, outcome) in pending {
            let response = match outcome {
                Err(error) => partition_error(index, error),
                Ok(task) => match task.await {
                    Ok(Ok(info)) => PartitionProduceResponse {
                        index,
                        error_code: ErrorCode::None.code(),
                        base_offset: info.first_offset,
                        log_append_time_ms: info.log_append_time_ms,
                        log_start_offset: state
                            .partition(name.as_deref().unwrap_or_default(), index)
                            .map_or(0, |l| l.with_log(|l| l.log_start_offset())),
                        ..Default::default()
                    },
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "produce refused");
                        partition_error(index, e.error_code())
                    }
                    Err(_) => partition_error(index, ErrorCode::UnknownServerError),
                },
            };
            partitions.push(response);
        }
        topics.push(TopicProduceResponse {
            name: if version < 13 {
                topic.name
            } else {
                String::new()
            },
            topic_id: if version >= 13 {
                topic.topic_id
            } else {
                Default::default()
            },
            partition_responses: partitions,
            ..Default::default()
        });
    }
    state.appended.notify_waiters();
    (acks != 0).then(|| ProduceResponse {
        responses: topics,
        ..Default::default()
    })
}
