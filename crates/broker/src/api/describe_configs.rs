//! DescribeConfigs (versions 1-4): a topic's or the broker's configs, each with its source
//! and (when asked) its synonyms, highest precedence first: the topic's own value, this
//! broker's dynamic setting, the cluster-wide dynamic setting, the static setting, and
//! Kafka's default. The empty broker name describes the cluster-wide dynamic settings.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use spool_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::incremental_alter_configs::config_access;
use crate::acl::{Authz, operation};
use crate::metadata::{BROKER_RESOURCE_TYPE, METADATA_TOPIC, TOPIC_RESOURCE_TYPE};
use crate::state::BrokerState;
use crate::topic_configs::{self, ConfigType, TOPIC_CONFIGS, source};

fn entry(
    name: &str,
    mut synonyms: Vec<DescribeConfigsSynonym>,
    kind: ConfigType,
    read_only: bool,
    include_synonyms: bool,
) -> DescribeConfigsResourceResult {
    let first = synonyms.first().cloned().unwrap_or_default();
    if !include_synonyms {
        synonyms.clear();
    }
    DescribeConfigsResourceResult {
        name: name.to_string(),
        value: first.value,
        read_only,
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

type Configs = std::collections::BTreeMap<String, String>;

/// The dynamic broker settings: this broker's own, and the cluster-wide defaults.
fn dynamic_broker_configs(state: &BrokerState) -> (Configs, Configs) {
    state.with_image(|image| {
        let own = image
            .broker_configs(&state.config.node_id.to_string())
            .cloned();
        let cluster = image.broker_configs("").cloned();
        (own.unwrap_or_default(), cluster.unwrap_or_default())
    })
}

/// The broker-level values of setting `name`, highest precedence first: this broker's
/// dynamic value, the cluster-wide dynamic value, then the static value (`statics`, when
/// the broker reports one; it is the default unless it was set explicitly).
fn broker_layers(
    state: &BrokerState,
    own: &Configs,
    cluster: &Configs,
    name: &str,
    statics: Option<&String>,
) -> Vec<DescribeConfigsSynonym> {
    let mut layers = Vec::new();
    if let Some(value) = own.get(name) {
        layers.push(synonym(name, value, source::DYNAMIC_BROKER_CONFIG));
    }
    if let Some(value) = cluster.get(name) {
        layers.push(synonym(name, value, source::DYNAMIC_DEFAULT_BROKER_CONFIG));
    }
    if let Some(value) = state.config.explicit.get(name) {
        let value = statics.unwrap_or(value);
        layers.push(synonym(name, value, source::STATIC_BROKER_CONFIG));
    } else if let Some(value) = statics {
        layers.push(synonym(name, value, source::DEFAULT_CONFIG));
    }
    layers
}

/// The type of broker setting `name`, and whether it is read-only: only the broker
/// defaults of topic settings and the throttle rates (dynamic, unlimited by default) can
/// change at run time.
fn broker_kind(name: &str) -> (ConfigType, bool) {
    match topic_configs::by_broker_synonym(name) {
        Some(def) => (def.kind, false),
        None if crate::throttle::RATES.contains(&name) => (ConfigType::Long, false),
        None => (ConfigType::String, true),
    }
}

/// Needs DESCRIBE_CONFIGS on the topic or, for a broker's settings, the cluster.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
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
        let access = config_access(
            authz,
            operation::DESCRIBE_CONFIGS,
            resource.resource_type,
            &resource.resource_name,
        );
        if let Err((error, message)) = access {
            result.error_code = error.code();
            result.error_message = Some(message);
            results.push(result);
            continue;
        }
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
                let (own, cluster) = dynamic_broker_configs(state);
                for def in TOPIC_CONFIGS.iter().filter(|d| wanted(d.name)) {
                    let mut synonyms = Vec::new();
                    if let Some(value) = topic.configs.get(def.name) {
                        synonyms.push(synonym(def.name, value, source::DYNAMIC_TOPIC_CONFIG));
                    }
                    if let Some(broker_name) = def.broker_synonym {
                        synonyms.extend(broker_layers(state, &own, &cluster, broker_name, None));
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
                        false,
                        request.include_synonyms,
                    ));
                }
            }
            BROKER_RESOURCE_TYPE if resource.resource_name.is_empty() => {
                let (_, cluster) = dynamic_broker_configs(state);
                for (name, value) in cluster.iter().filter(|(n, _)| wanted(n)) {
                    let (kind, read_only) = broker_kind(name);
                    result.configs.push(entry(
                        name,
                        vec![synonym(name, value, source::DYNAMIC_DEFAULT_BROKER_CONFIG)],
                        kind,
                        read_only,
                        request.include_synonyms,
                    ));
                }
            }
            BROKER_RESOURCE_TYPE if resource.resource_name == state.config.node_id.to_string() => {
                let (own, cluster) = dynamic_broker_configs(state);
                let statics = state.config.describe();
                let mut names: Vec<&str> = statics.iter().map(|(n, _)| *n).collect();
                for def in TOPIC_CONFIGS {
                    if let Some(name) = def.broker_synonym
                        && !names.contains(&name)
                    {
                        names.push(name);
                    }
                }
                names.extend(crate::throttle::RATES);
                for name in names.into_iter().filter(|n| wanted(n)) {
                    let value = statics.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
                    let mut synonyms = broker_layers(state, &own, &cluster, name, value);
                    let (kind, read_only) = broker_kind(name);
                    if value.is_none() {
                        let default = match topic_configs::by_broker_synonym(name) {
                            Some(def) => def.default,
                            None if !read_only => "9223372036854775807", // a throttle rate
                            None => "",
                        };
                        synonyms.push(synonym(name, default, source::DEFAULT_CONFIG));
                    }
                    result.configs.push(entry(
                        name,
                        synonyms,
                        kind,
                        read_only,
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
