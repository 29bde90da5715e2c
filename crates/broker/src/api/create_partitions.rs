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
        let refusal = match current {
            None => Some((
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{}` does not exist", topic.name),
            )),
            Some(current) if topic.count <= current => Some((
                ErrorCode::InvalidPartitions,
                format!(
                    "topic currently has {current} partitions, which is not less than the requested {}",
                    topic.count
                ),
            )),
            Some(_)
                if topic
                    .assignments
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|a| a.broker_ids != [state.config.node_id])) =>
            {
                Some((
                    ErrorCode::InvalidReplicaAssignment,
                    "new partitions can only be placed on this broker".into(),
                ))
            }
            Some(_) => None,
        };
        match refusal {
            Some((error, message)) => {
                result.error_code = error.code();
                result.error_message = Some(message);
            }
            None if request.validate_only => {}
            None => {
                let state = Arc::clone(state);
                let (name, count) = (topic.name.clone(), topic.count);
                if !matches!(
                    tokio::task::spawn_blocking(move || state.add_partitions(&name, count)).await,
                    Ok(Ok(()))
                ) {
                    result.error_code = ErrorCode::UnknownServerError.code();
                }
            }
        }
        results.push(result);
    }
    CreatePartitionsResponse {
        results,
        ..Default::default()
    }
}
