//! CreatePartitions (versions 0-3): grow topics to a larger partition count.

use std::sync::Arc;

use spool_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use spool_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use spool_protocol::ErrorCode;

use crate::acl::{Authz, DENIED, operation};
use crate::api::Mutations;
use crate::metadata::controller::check_partition_growth;
use crate::state::BrokerState;

/// Needs ALTER on each topic (else TOPIC_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    (authz, mutations): (&Authz<'_>, &Mutations<'_>),
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut result = CreatePartitionsTopicResult {
            name: topic.name.clone(),
            ..Default::default()
        };
        let assignments: Vec<Vec<i32>> = topic
            .assignments
            .iter()
            .flatten()
            .map(|a| a.broker_ids.clone())
            .collect();
        let outcome = if !authz.topic(operation::ALTER, &topic.name) {
            Err((ErrorCode::TopicAuthorizationFailed, DENIED.to_string()))
        } else {
            let growth = state.with_image(|image| {
                check_partition_growth(image, &topic.name, topic.count)
                    .map(|(_, current)| topic.count - current)
            });
            match growth {
                Err(refusal) => Err(refusal),
                Ok(_) if request.validate_only => Ok(()),
                // The partitions added count against the controller_mutation_rate.
                Ok(added) => match mutations.admit(added) {
                    Err(refusal) => Err(refusal),
                    Ok(()) => state
                        .add_partitions(&topic.name, topic.count, assignments)
                        .await
                        .map_err(|e| e.into_refusal("adding partitions failed")),
                },
            }
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
