//! DeleteTopics (versions 1-6): delete topics by name, or (version 6) by ID.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::Uuid;
use spool_protocol::messages::delete_topics_response::DeletableTopicResult;
use spool_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};

use crate::acl::{Authz, operation};
use crate::api::Mutations;
use crate::metadata::METADATA_TOPIC;
use crate::state::BrokerState;

/// Deleting a topic needs DELETE on it (else TOPIC_AUTHORIZATION_FAILED); a topic named
/// by ID is not named back to whoever may not DESCRIBE it.
pub async fn handle(
    state: &Arc<BrokerState>,
    (authz, mutations): (&Authz<'_>, &Mutations<'_>),
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // Version 6 lists (name or ID) pairs; earlier versions list names.
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::ZERO))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, topic_id) in targets {
        let by_id = name.is_none() && topic_id != Uuid::ZERO;
        let resolved = match &name {
            Some(name) => Some(name.clone()),
            None => state.with_image(|image| image.topic_by_id(&topic_id).map(|t| t.name.clone())),
        };
        let hidden = by_id
            && resolved
                .as_deref()
                .is_some_and(|n| !authz.topic(operation::DESCRIBE, n));
        let mut result = DeletableTopicResult {
            name: if hidden {
                None
            } else if version >= 6 {
                resolved.clone()
            } else {
                name.clone()
            },
            topic_id,
            ..Default::default()
        };
        let outcome = match resolved.filter(|n| !n.starts_with(METADATA_TOPIC)) {
            None => Err(if by_id {
                ErrorCode::UnknownTopicId
            } else {
                ErrorCode::UnknownTopicOrPartition
            }),
            Some(name) if !authz.topic(operation::DELETE, &name) => {
                Err(ErrorCode::TopicAuthorizationFailed)
            }
            Some(name) => {
                // The partitions deleted count against the controller_mutation_rate.
                let partitions = state.with_image(|image| {
                    image
                        .topic(&name)
                        .map_or(0, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
                });
                match mutations.admit(partitions) {
                    Err((error, message)) => {
                        result.error_message = Some(message);
                        Err(error)
                    }
                    Ok(()) => match state.delete_topic(&name).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(ErrorCode::UnknownTopicOrPartition),
                        Err(e) => Err(e.into_refusal("deleting the topic failed").0),
                    },
                }
            }
        };
        if let Err(error) = outcome {
            result.error_code = error.code();
        }
        if version < 6 {
            result.topic_id = Uuid::ZERO;
        }
        responses.push(result);
    }
    DeleteTopicsResponse {
        responses,
        ..Default::default()
    }
}
