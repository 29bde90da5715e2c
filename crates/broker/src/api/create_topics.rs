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
use crate::acl::{Authz, DENIED, operation};
use crate::api::Mutations;
use crate::metadata::METADATA_TOPIC;
use crate::metadata::controller::place_replicas;
use crate::state::{BrokerState, validate_topic_configs};

/// What a topic is to be created with.
struct Plan {
    partitions: i32,
    /// -1 for `default.replication.factor`.
    replication_factor: i16,
    /// The replicas of each partition in order, when the request places them.
    assignments: Vec<Vec<i32>>,
    configs: BTreeMap<String, String>,
}

/// What a topic will be created with, or why it cannot be. The controller checks the
/// replicas: the factor against the registered brokers, the assignments' brokers.
fn plan(state: &BrokerState, topic: &CreatableTopic) -> Result<Plan, (ErrorCode, String)> {
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
    let mut assignments = Vec::new();
    let partitions = if topic.assignments.is_empty() {
        if topic.replication_factor == 0 || topic.replication_factor < -1 {
            return Err((
                ErrorCode::InvalidReplicationFactor,
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
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
        let mut sorted: Vec<_> = topic.assignments.iter().collect();
        sorted.sort_by_key(|a| a.partition_index);
        let consecutive = sorted
            .iter()
            .enumerate()
            .all(|(i, a)| a.partition_index == i as i32);
        if !consecutive {
            return Err((
                ErrorCode::InvalidReplicaAssignment,
                "Partitions should be a consecutive 0-based integer sequence.".into(),
            ));
        }
        assignments = sorted.iter().map(|a| a.broker_ids.clone()).collect();
        i32::try_from(assignments.len()).unwrap_or(i32::MAX)
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
    Ok(Plan {
        partitions,
        replication_factor: topic.replication_factor,
        assignments,
        configs,
    })
}

/// For `validate_only`: whether the controller could place the replicas now.
fn validate_placement(
    state: &BrokerState,
    plan: &Plan,
    factor: i16,
) -> Result<(), (ErrorCode, String)> {
    if !plan.assignments.is_empty() {
        return Ok(());
    }
    state
        .with_image(|image| place_replicas(image, 0, plan.partitions, factor))
        .map(|_| ())
}

/// Creating a topic needs CREATE on the cluster or on the topic (else
/// TOPIC_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    (authz, mutations): (&Authz<'_>, &Mutations<'_>),
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let cluster_create = authz.cluster(operation::CREATE);
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
        } else if !cluster_create && !authz.topic(operation::CREATE, &topic.name) {
            Err((ErrorCode::TopicAuthorizationFailed, DENIED.into()))
        } else {
            plan(state, topic)
        };
        match planned {
            Err((error, message)) => {
                result.error_code = error.code();
                result.error_message = Some(message);
            }
            Ok(plan) => {
                let factor = match plan.assignments.first() {
                    Some(replicas) => i16::try_from(replicas.len()).unwrap_or(i16::MAX),
                    None if plan.replication_factor == -1 => {
                        state.config.default_replication_factor
                    }
                    None => plan.replication_factor,
                };
                let outcome = if request.validate_only {
                    validate_placement(state, &plan, factor)
                } else if let Err(refusal) = mutations.admit(plan.partitions) {
                    // The partitions created count against the controller_mutation_rate.
                    Err(refusal)
                } else {
                    state
                        .create_topic(
                            &topic.name,
                            plan.partitions,
                            plan.replication_factor,
                            plan.assignments,
                            plan.configs,
                        )
                        .await
                        .map_err(|e| e.into_refusal("creating the topic failed"))
                };
                if let Err((error, message)) = outcome {
                    result.error_code = error.code();
                    result.error_message = Some(message);
                }
                if version >= 5 && result.error_code == 0 {
                    result.num_partitions = plan.partitions;
                    result.replication_factor = factor;
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
