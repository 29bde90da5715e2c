//! DescribeConfigs (versions 1-4): a topic's or the broker's configs, each with its source
//! and (when asked) its synonyms: the topic's own value, the broker setting that sets the
//! default, and Kafka's default.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use spool_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use crate::metadata::{METADATA_TOPIC, TOPIC_RESOURCE_TYPE};
use crate::state::BrokerState;
use crate::topic_configs::{ConfigType, TOPIC_CONFIGS, source};

/// `resource_type` of a broker.
pub const BROKER_RESOURCE_TYPE: i8 = 4;

fn entry(
    name: &str,
    mut synonyms: Vec<DescribeConfigsSynonym>,
    kind: ConfigType,
    include_synonyms: bool,
) -> DescribeConfigsResourceResult {
    let first = synonyms.first().cloned().unwrap_or_default();
    if !include_synonyms {
        synonyms.clear();
    }
    DescribeConfigsResourceResult {
        name: name.to_string(),
        value: first.value,
        read_only: false,
        config_source: first.source,
        is_sensitive: false,
        synonyms,
        config_type: kind as i8,
        ..Default::default()
    }
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym {
        name: name.to_string(),
        value: Some(value.to_string()),
        source,
        ..Default::default()
    }
}

pub fn handle(
    state: &Arc<BrokerState>,
    request: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let wanted = |name: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k == name))
        };
        let mut result = DescribeConfigsResult {
            resource_type: resource.resource_type,
            resource_name: resource.resource_name.clone(),
            ..Default::default()
        };
        match resource.resource_type {
            TOPIC_RESOURCE_TYPE => {
                let topic = state
                    .with_image(|image| image.topic(&resource.resource_name).cloned())
                    .filter(|t| !t.name.starts_with(METADATA_TOPIC));
                let Some(topic) = topic else {
                    result.error_code = ErrorCode::UnknownTopicOrPartition.code();
                    result.error_message =
                        Some(format!("topic `{}` does not exist", resource.resource_name));
                    results.push(result);
                    continue;
                };
                for def in TOPIC_CONFIGS.iter().filter(|d| wanted(d.name)) {
                    let mut synonyms = Vec::new();
                    if let Some(value) = topic.configs.get(def.name) {
                        synonyms.push(synonym(def.name, value, source::DYNAMIC_TOPIC_CONFIG));
                    }
                    if let Some(broker_name) = def.broker_synonym
                        && let Some(value) = state.config.explicit.get(broker_name)
                    {
                        synonyms.push(synonym(broker_name, value, source::STATIC_BROKER_CONFIG));
                    }
                    synonyms.push(synonym(
                        def.broker_synonym.unwrap_or(def.name),
                        def.default,
                        source::DEFAULT_CONFIG,
                    ));
                    result.configs.push(entry(
                        def.name,
                        synonyms,
                        def.kind,
                        request.include_synonyms,
                    ));
                }
            }
            BROKER_RESOURCE_TYPE
                if resource.resource_name.is_empty()
                    || resource.resource_name == state.config.node_id.to_string() =>
            {
                for (name, value) in state
                    .config
                    .describe()
                    .into_iter()
                    .filter(|(n, _)| wanted(n))
                {
                    let source = if state.config.explicit.contains_key(name) {
                        source::STATIC_BROKER_CONFIG
                    } else {
                        source::DEFAULT_CONFIG
                    };
                    result.configs.push(entry(
                        name,
                        vec![synonym(name, &value, source)],
                        ConfigType::String,
                        request.include_synonyms,
                    ));
                }
            }
            BROKER_RESOURCE_TYPE => {
                result.error_code = ErrorCode::InvalidRequest.code();
                result.error_message = Some(format!("this is broker {}", state.config.node_id));
            }
            other => {
                result.error_code = ErrorCode::InvalidRequest.code();
                result.error_message = Some(format!("resource type {other} is not served"));
            }
        }
        results.push(result);
    }
    DescribeConfigsResponse {
        results,
        ..Default::default()
    }
}
