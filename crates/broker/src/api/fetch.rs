//! Fetch (versions 4-18): whole record batches from partition logs, up to the high
//! watermark (or the last stable offset for read_committed), within the response's and
//! each partition's `max_bytes` (the first batch always whole). Long polling: with fewer
//! than `min_bytes` available the request waits for appends, up to `max_wait_ms`.
//! Incremental fetch sessions are not offered yet: every response carries session ID 0,
//! which KIP-227 lets clients read as "send full requests".

use std::sync::Arc;
use std::time::Duration;

use spool_log::LogError;
use spool_protocol::ErrorCode;
use spool_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use spool_protocol::messages::{FetchRequest, FetchResponse};
use tokio::time::Instant;

use crate::state::BrokerState;

const READ_COMMITTED: i8 = 1;

/// One pass over the requested partitions; returns the response and the bytes it holds.
fn read(state: &BrokerState, request: &FetchRequest, version: i16) -> (FetchResponse, usize) {
    let mut total = 0usize;
    let response_max = usize::try_from(request.max_bytes).unwrap_or(0);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = if version >= 13 {
            state.with_image(|image| image.topic_by_id(&topic.topic_id).map(|t| t.name.clone()))
        } else {
            Some(topic.topic.clone())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let mut data = PartitionData {
                partition_index: p.partition,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                records: Some(Default::default()),
                ..Default::default()
            };
            let log = name
                .as_deref()
                .and_then(|name| state.partition(name, p.partition));
            let Some(log) = log else {
                data.error_code = if version >= 13 {
                    ErrorCode::UnknownTopicId
                } else {
                    ErrorCode::UnknownTopicOrPartition
                }
                .code();
                partitions.push(data);
                continue;
            };
            // Past the response's budget, partitions are listed without records.
            let budget = if total == 0 {
                usize::MAX
            } else {
                response_max.saturating_sub(total)
            };
            let partition_max = usize::try_from(p.partition_max_bytes)
                .unwrap_or(0)
                .min(budget);
            let outcome = log.with_log(|log| {
                let upper = if request.isolation_level == READ_COMMITTED {
                    log.last_stable_offset()
                } else {
                    log.high_watermark()
                };
                let read = if partition_max == 0 && total > 0 {
                    None
                } else {
                    Some(log.read(p.fetch_offset, partition_max as u64, upper))
                };
                (
                    log.high_watermark(),
                    log.last_stable_offset(),
                    log.log_start_offset(),
                    read,
                )
            });
            let (high_watermark, last_stable_offset, log_start_offset, read) = outcome;
            data.high_watermark = high_watermark;
            data.last_stable_offset = last_stable_offset;
            data.log_start_offset = log_start_offset;
            match read {
                None => {}
                Some(Ok(read)) => {
                    if let Some(range) = read.range {
                        match range.to_bytes() {
                            Ok(bytes) => {
                                total += bytes.len();
                                data.records = Some(bytes);
                            }
                            Err(e) => data.error_code = LogError::from(e).error_code().code(),
                        }
                    }
                }
                Some(Err(e)) => data.error_code = e.error_code().code(),
            }
            if request.isolation_level == READ_COMMITTED {
                data.aborted_transactions = Some(Vec::new());
            }
            partitions.push(data);
        }
        topics.push(FetchableTopicResponse {
            topic: if version < 13 {
                topic.topic.clone()
            } else {
                String::new()
            },
            topic_id: if version >= 13 {
                topic.topic_id
            } else {
                Default::default()
            },
            partitions,
            ..Default::default()
        });
    }
    (
        FetchResponse {
            responses: topics,
            session_id: 0,
            ..Default::default()
        },
        total,
    )
}

pub async fn handle(
    state: &Arc<BrokerState>,
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    loop {
        // Register for wake-ups before reading, so an append in between is not missed.
        let appended = state.appended.notified();
        let (response, bytes) = read(state, &request, version);
        let errors = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0);
        if bytes >= min_bytes || errors || Instant::now() >= deadline {
            return response;
        }
        if tokio::time::timeout_at(deadline, appended).await.is_err() {
            return read(state, &request, version).0;
        }
    }
}
