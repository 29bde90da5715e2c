//! IncrementalAlterConfigs (versions 0-1): set, delete, append to or subtract from single
//! configs of a topic, of this broker (resource name = its node ID) or of every broker (the
//! cluster default, an empty name). Broker settings that can change at run time are the
//! `log.*` defaults of topic configs; the others are refused with INVALID_REQUEST, as Kafka
//! refuses every invalid broker config change.

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use spool_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use spool_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use crate::acl::{Authz, DENIED, operation};
use crate::metadata::{BROKER_RESOURCE_TYPE, TOPIC_RESOURCE_TYPE};
use crate::state::{BrokerState, validate_broker_configs, validate_topic_configs};
use crate::topic_configs::{self, ConfigType, TopicConfigDef};

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

/// What a refused change to this kind of resource answers: Kafka uses INVALID_CONFIG for
/// topics and INVALID_REQUEST for brokers.
fn refusal(resource_type: i8) -> ErrorCode {
    if resource_type == BROKER_RESOURCE_TYPE {
        ErrorCode::InvalidRequest
    } else {
        ErrorCode::InvalidConfig
    }
}

/// The definition of config `name` of a resource of `resource_type`, for list operations.
fn definition(resource_type: i8, name: &str) -> Option<&'static TopicConfigDef> {
    if resource_type == BROKER_RESOURCE_TYPE {
        topic_configs::by_broker_synonym(name)
    } else {
        topic_configs::find(name)
    }
}

/// The resource's configs after the requested operations, or why they cannot be applied.
/// Names and values are checked afterwards, as a whole.
fn apply(
    current: &BTreeMap<String, String>,
    resource: &AlterConfigsResource,
) -> Result<BTreeMap<String, String>, (ErrorCode, String)> {
    let mut configs = current.clone();
    for change in &resource.configs {
        let value = change.value.clone().unwrap_or_default();
        let list = definition(resource.resource_type, &change.name)
            .filter(|def| def.kind == ConfigType::List);
        match change.config_operation {
            SET => {
                configs.insert(change.name.clone(), value);
            }
            DELETE => {
                configs.remove(&change.name);
            }
            APPEND | SUBTRACT if list.is_some() => {
                let existing = configs
                    .get(&change.name)
                    .map_or(list.map_or("", |def| def.default), String::as_str);
                let mut items: Vec<String> = existing
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if change.config_operation == APPEND && !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    } else if change.config_operation == SUBTRACT {
                        items.retain(|i| i != item);
                    }
                }
                configs.insert(change.name.clone(), items.join(","));
            }
            APPEND | SUBTRACT => {
                return Err((
                    refusal(resource.resource_type),
                    format!(
                        "`{}` is not a known list: APPEND and SUBTRACT do not apply",
                        change.name
                    ),
                ));
            }
            other => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("unknown config operation {other}"),
                ));
            }
        }
    }
    Ok(configs)
}

/// Whether a request may `operation` (DESCRIBE_CONFIGS or ALTER_CONFIGS) the configs of a
/// resource: a topic's need the right on the topic, a broker's on the cluster. The error
/// is the one Kafka answers otherwise.
pub fn config_access(
    authz: &Authz<'_>,
    operation: i8,
    resource_type: i8,
    name: &str,
) -> Result<(), (ErrorCode, String)> {
    let (allowed, error) = if resource_type == TOPIC_RESOURCE_TYPE {
        (
            authz.topic(operation, name),
            ErrorCode::TopicAuthorizationFailed,
        )
    } else {
        (
            authz.cluster(operation),
            ErrorCode::ClusterAuthorizationFailed,
        )
    };
    if allowed {
        Ok(())
    } else {
        Err((error, DENIED.into()))
    }
}

/// Applies `compute` to a resource's stored configs (a topic's overrides or a broker's
/// dynamic settings), checks the result and stores it; shared by IncrementalAlterConfigs
/// and AlterConfigs. Needs ALTER_CONFIGS (see [`config_access`]). The outcome is (error
/// code, message).
pub async fn alter_resource(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    compute: impl FnOnce(
        &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, (ErrorCode, String)>,
) -> (i16, Option<String>) {
    let outcome: Result<(), (ErrorCode, String)> = async {
        config_access(authz, operation::ALTER_CONFIGS, resource_type, name)?;
        match resource_type {
            TOPIC_RESOURCE_TYPE => {}
            BROKER_RESOURCE_TYPE if name.is_empty() || name.parse::<u32>().is_ok() => {}
            BROKER_RESOURCE_TYPE => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("`{name}` is not a broker ID (or empty for the cluster default)"),
                ));
            }
            other => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("resource type {other} is not served"),
                ));
            }
        }
        let current = state
            .with_image(|image| image.resource_configs(resource_type, name))
            .ok_or((
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{name}` does not exist"),
            ))?;
        let configs = compute(&current)?;
        if resource_type == TOPIC_RESOURCE_TYPE {
            validate_topic_configs(&state.log_defaults(), &configs).map(|_| ())
        } else {
            validate_broker_configs(&state.config.log, &configs)
        }
        .map_err(|e| (refusal(resource_type), e))?;
        if validate_only {
            return Ok(());
        }
        state
            .set_configs(resource_type, name, configs)
            .await
            .map_err(|e| e.into_refusal("storing the configs failed"))
    }
    .await;
    match outcome {
        Ok(()) => (ErrorCode::None.code(), None),
        Err((error, message)) => (error.code(), Some(message)),
    }
}

pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let (error_code, error_message) = alter_resource(
            state,
            authz,
            resource.resource_type,
            &resource.resource_name,
            request.validate_only,
            |current| apply(current, resource),
        )
        .await;
        responses.push(AlterConfigsResourceResponse {
            error_code,
            error_message,
            resource_type: resource.resource_type,
            resource_name: resource.resource_name.clone(),
            ..Default::default()
        });
    }
    IncrementalAlterConfigsResponse {
        responses,
        ..Default::default()
    }
}
