//! AlterConfigs (versions 0-2): replace a topic's whole set of configs (settings not given
//! return to their defaults). Broker settings are static in this version.

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use spool_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::describe_configs::BROKER_RESOURCE_TYPE;
use super::incremental_alter_configs::alter_topic;
use crate::metadata::TOPIC_RESOURCE_TYPE;
use crate::state::BrokerState;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let replacement: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| c.value.clone().map(|v| (c.name.clone(), v)))
            .collect();
        let outcome = match resource.resource_type {
            TOPIC_RESOURCE_TYPE => {
                alter_topic(
                    state,
                    &resource.resource_name,
                    request.validate_only,
                    |_| Ok(replacement),
                )
                .await
            }
            BROKER_RESOURCE_TYPE => Err((
                ErrorCode::InvalidRequest,
                "broker settings are static in this version".to_string(),
            )),
            other => Err((
                ErrorCode::InvalidRequest,
                format!("resource type {other} is not served"),
            )),
        };
        let (error_code, error_message) = match outcome {
            Ok(()) => (0, None),
            Err((error, message)) => (error.code(), Some(message)),
        };
        responses.push(AlterConfigsResourceResponse {
            error_code,
            error_message,
            resource_type: resource.resource_type,
            resource_name: resource.resource_name.clone(),
            ..Default::default()
        });
    }
    AlterConfigsResponse {
        responses,
        ..Default::default()
    }
}
