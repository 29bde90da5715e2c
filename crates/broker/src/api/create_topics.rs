//! CreateTopics (versions 2-7): create topics with a partition count (or explicit
//! assignments), configs and `validate_only`, answering per topic with Kafka's errors:
//! TOPIC_ALREADY_EXISTS, INVALID_TOPIC_EXCEPTION, INVALID_PARTITIONS,
//! INVALID_REPLICATION_FACTOR, INVALID_REPLICA_ASSIGNMENT, INVALID_CONFIG, INVALID_REQUEST
//! (a name given twice).

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::create_topics_response::CreatableTopicResult;
use spool_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, create_topics_request::CreatableTopic,
};

use super::metadata::valid_topic_name;
use crate::metadata::METADATA_TOPIC;
use crate::state::{BrokerState, validate_topic_configs};

/// What a topic will be created with, or why it cannot be.
fn plan(
    state: &BrokerState,
    topic: &CreatableTopic,
) -> Result<(i32, BTreeMap<String, String>), (ErrorCode, String)> {
    if !valid_topic_name(&topic.name) || topic.name.starts_with(METADATA_TOPIC) {
        return Err((
            ErrorCode::InvalidTopicException,
            format!("`{}` is not a valid topic name", topic.name),
        ));
    }
    if state.with_image(|image| image.topic(&topic.name).is_some()) {
        return Err((
            ErrorCode::TopicAlreadyExists,
            format!("topic `{}` already exists", topic.name),
        ));
    }
    let partitions = if topic.assignments.is_empty() {
        if topic.replication_factor != -1 && topic.replication_factor != 1 {
            return Err((
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {} is larger than the 1 available broker",
                    topic.replication_factor
                ),
            ));
        }
        match topic.num_partitions {
            -1 => state.config.num_partitions,
            n if n >= 1 => n,
            n => {
                return Err((
                    ErrorCode::InvalidPartitions,
                    format!("number of partitions must be at least 1, got {n}"),
                ));
            }
        }
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err((
                ErrorCode::InvalidRequest,
                "give either assignments or a partition count and replication factor".into(),
            ));
        }
        let mut indexes: Vec<i32> = topic
            .assignments
            .iter()
            .map(|a| a.partition_index)
            .collect();
        indexes.sort_unstable();
        let consecutive = indexes.iter().enumerate().all(|(i, &p)| p == i as i32);
        let on_this_broker = topic
            .assignments
            .iter()
            .all(|a| a.broker_ids == [state.config.node_id]);
        if !consecutive || !on_this_broker {
            return Err((
                ErrorCode::InvalidReplicaAssignment,
                "assignments must cover partitions 0..n on this broker alone".into(),
            ));
        }
        i32::try_from(indexes.len()).unwrap_or(i32::MAX)
    };
    let mut configs = BTreeMap::new();
    for config in &topic.configs {
        match &config.value {
            Some(value) => configs.insert(config.name.clone(), value.clone()),
            None => configs.remove(&config.name),
        };
    }
    validate_topic_configs(&state.log_defaults(), &configs)
        .map_err(|e| (ErrorCode::InvalidConfig, e))?;
    Ok((partitions, configs))
}

pub async fn handle(
    state: &Arc<BrokerState>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut result = CreatableTopicResult {
            name: topic.name.clone(),
            num_partitions: -1,
            replication_factor: -1,
            ..Default::default()
        };
        let duplicated = request
            .topics
            .iter()
            .filter(|t| t.name == topic.name)
            .count()
            > 1;
        let planned = if duplicated {
            Err((
                ErrorCode::InvalidRequest,
                format!("topic `{}` appears more than once", topic.name),
            ))
        } else {
            plan(state, topic)
        };
        match planned {
            Err((error, message)) => {
                result.error_code = error.code();
                result.error_message = Some(message);
            }
            Ok((partitions, configs)) => {
                if !request.validate_only {
                    let state = Arc::clone(state);
                    let name = topic.name.clone();
                    let created = tokio::task::spawn_blocking(move || {
                        state.create_topic(&name, partitions, &configs)
                    })
                    .await;
                    if !matches!(created, Ok(Ok(()))) {
                        result.error_code = ErrorCode::UnknownServerError.code();
                        result.error_message =
                            Some(format!("creating the topic failed: {created:?}"));
                    }
                }
                if version >= 5 && result.error_code == 0 {
                    result.num_partitions = partitions;
                    result.replication_factor = 1;
                }
                if version >= 7 && result.error_code == 0 && !request.validate_only {
                    result.topic_id = state
                        .with_image(|image| image.topic(&topic.name).map(|t| t.id))
                        .unwrap_or_default();
                }
            }
        }
        if version < 5 {
            result.num_partitions = -1;
            result.replication_factor = -1;
        }
        results.push(result);
    }
    CreateTopicsResponse {
        topics: results,
        ..Default::default()
    }
}
