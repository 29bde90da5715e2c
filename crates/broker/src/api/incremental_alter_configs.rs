//! IncrementalAlterConfigs (versions 0-1): set, delete, append to or subtract from single
//! topic configs. Broker settings are static in this version: altering them is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use spool_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use spool_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::describe_configs::BROKER_RESOURCE_TYPE;
use crate::metadata::TOPIC_RESOURCE_TYPE;
use crate::state::{BrokerState, validate_topic_configs};
use crate::topic_configs::{self, ConfigType};

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

/// The topic's configs after the requested operations, or why they cannot be applied.
fn apply(
    current: &BTreeMap<String, String>,
    resource: &AlterConfigsResource,
) -> Result<BTreeMap<String, String>, (ErrorCode, String)> {
    let mut configs = current.clone();
    for change in &resource.configs {
        let def = topic_configs::find(&change.name).ok_or((
            ErrorCode::InvalidConfig,
            format!("unknown topic config `{}`", change.name),
        ))?;
        let value = change.value.clone().unwrap_or_default();
        match change.config_operation {
            SET => {
                configs.insert(change.name.clone(), value);
            }
            DELETE => {
                configs.remove(&change.name);
            }
            APPEND | SUBTRACT if def.kind == ConfigType::List => {
                let existing = configs
                    .get(&change.name)
                    .map_or(def.default, String::as_str);
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
                    ErrorCode::InvalidConfig,
                    format!(
                        "`{}` is not a list: APPEND and SUBTRACT do not apply",
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

/// Applies `compute` to a topic resource's configs and stores the result; shared by
/// IncrementalAlterConfigs and AlterConfigs.
pub async fn alter_topic(
    state: &Arc<BrokerState>,
    name: &str,
    validate_only: bool,
    compute: impl FnOnce(
        &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, (ErrorCode, String)>,
) -> Result<(), (ErrorCode, String)> {
    let current = state
        .with_image(|image| image.topic(name).map(|t| t.configs.clone()))
        .ok_or((
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        ))?;
    let configs = compute(&current)?;
    validate_topic_configs(&state.config.log, &configs)
        .map_err(|e| (ErrorCode::InvalidConfig, e))?;
    if validate_only {
        return Ok(());
    }
    let state = Arc::clone(state);
    let name = name.to_string();
    match tokio::task::spawn_blocking(move || state.set_topic_configs(&name, &configs)).await {
        Ok(Ok(())) => Ok(()),
        other => Err((
            ErrorCode::UnknownServerError,
            format!("storing the configs failed: {other:?}"),
        )),
    }
}

/// The outcome for one resource of an alter request, as (error code, message): topics are
/// altered with `compute`; broker settings are static in this version.
pub async fn alter_resource(
    state: &Arc<BrokerState>,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    compute: impl FnOnce(
        &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, (ErrorCode, String)>,
) -> (i16, Option<String>) {
    let outcome = match resource_type {
        TOPIC_RESOURCE_TYPE => alter_topic(state, name, validate_only, compute).await,
        BROKER_RESOURCE_TYPE => Err((
            ErrorCode::InvalidRequest,
            "broker settings are static in this version".to_string(),
        )),
        other => Err((
            ErrorCode::InvalidRequest,
            format!("resource type {other} is not served"),
        )),
    };
    match outcome {
        Ok(()) => (ErrorCode::None.code(), None),
        Err((error, message)) => (error.code(), Some(message)),
    }
}

pub async fn handle(
    state: &Arc<BrokerState>,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let (error_code, error_message) = alter_resource(
            state,
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
