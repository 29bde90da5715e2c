//! CreatePartitions (versions 0-3): grow topics to a larger partition count.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use spool_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut result = CreatePartitionsTopicResult {
            name: topic.name.clone(),
            ..Default::default()
        };
        let current =
            state.with_image(|image| image.topic(&topic.name).map(|t| t.partitions.len() as i32));
        let assignments: Vec<Vec<i32>> = topic
            .assignments
            .iter()
            .flatten()
            .map(|a| a.broker_ids.clone())
            .collect();
        let outcome = match current {
            None => Err((
                ErrorCode::UnknownTopicOrPartition,
                format!("The topic '{}' does not exist.", topic.name),
            )),
            Some(current) if topic.count <= current => Err((
                ErrorCode::InvalidPartitions,
                format!(
                    "Topic currently has {current} partitions, which is higher than the \
                     requested {}.",
                    topic.count
                ),
            )),
            Some(_) if request.validate_only => Ok(()),
            Some(_) => state
                .add_partitions(&topic.name, topic.count, assignments)
                .await
                .map_err(|e| match e {
                    crate::BrokerError::Refused(code, message) => (code, message),
                    e => (ErrorCode::UnknownServerError, e.to_string()),
                }),
        };
        if let Err((error, message)) = outcome {
            result.error_code = error.code();
            result.error_message = Some(message);
        }
        results.push(result);
    }
    CreatePartitionsResponse {
        results,
        ..Default::default()
    }
}
