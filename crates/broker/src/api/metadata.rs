//! Metadata (versions 0-13): the broker, and the requested topics with their partitions,
//! auto-creating missing topics when the request and `auto.create.topics.enable` allow.
//! From v10 a topic may be asked for by ID alone (consumers of the KIP-848 protocol learn
//! their assignment as topic IDs); an unknown ID gets UNKNOWN_TOPIC_ID.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spool_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use spool_protocol::messages::{MetadataRequest, MetadataResponse};
use spool_protocol::{ErrorCode, Uuid};

use crate::acl::{Authz, CLUSTER_NAME, operation, resource};
use crate::metadata::{METADATA_TOPIC, MetadataImage, NO_LEADER, TopicMeta};
use crate::state::BrokerState;

/// Kafka's topic name rules: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A topic as Metadata describes it; replicas on brokers that are fenced or gone are
/// offline.
fn topic_response(image: &MetadataImage, topic: &TopicMeta, version: i16) -> MetadataResponseTopic {
    MetadataResponseTopic {
        error_code: ErrorCode::None.code(),
        name: Some(topic.name.clone()),
        topic_id: if version >= 10 {
            topic.id
        } else {
            Default::default()
        },
        is_internal: topic.is_internal(),
        partitions: topic
            .partitions
            .iter()
            .map(|p| MetadataResponsePartition {
                error_code: if p.leader == NO_LEADER {
                    ErrorCode::LeaderNotAvailable.code()
                } else {
                    ErrorCode::None.code()
                },
                partition_index: p.index,
                leader_id: p.leader,
                leader_epoch: if version >= 7 { p.leader_epoch } else { -1 },
                replica_nodes: p.replicas.clone(),
                isr_nodes: p.isr.clone(),
                offline_replicas: p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|&r| image.broker(r).is_none_or(|b| b.fenced))
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn error_topic(name: String, error: ErrorCode) -> MetadataResponseTopic {
    MetadataResponseTopic {
        error_code: error.code(),
        name: Some(name),
        ..Default::default()
    }
}

/// A topic asked for by name, or (from v10) by ID alone.
enum Asked {
    Name(String),
    Id(Uuid),
}

/// Topics are listed only to those who may DESCRIBE them: one asked for by name or ID
/// without that right gets TOPIC_AUTHORIZATION_FAILED (whether or not it exists), and a
/// listing of all topics leaves it out. Auto-creation also needs CREATE on the cluster or
/// the topic.
pub async fn handle(
    state: &Arc<BrokerState>,
    (listener, authz): (&str, &Authz<'_>),
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let requested: Option<Vec<Asked>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .filter_map(|t| match t.name {
                Some(name) => Some(Asked::Name(name)),
                None if t.topic_id != Uuid::default() => Some(Asked::Id(t.topic_id)),
                None => None,
            })
            .collect()
    });
    let describable = |name: &str| authz.topic(operation::DESCRIBE, name);
    let creatable =
        |name: &str| authz.cluster(operation::CREATE) || authz.topic(operation::CREATE, name);
    // Versions before 4 always auto-create; later ones ask.
    let allow_auto_create = state.config.auto_create_topics_enable
        && (version < 4 || request.allow_auto_topic_creation);
    let mut refused_creation = BTreeSet::new();
    if let (Some(names), true) = (&requested, allow_auto_create) {
        let missing: Vec<String> = state.with_image(|image| {
            names
                .iter()
                .filter_map(|asked| match asked {
                    Asked::Name(name) => Some(name),
                    Asked::Id(_) => None,
                })
                .filter(|n| {
                    valid_topic_name(n)
                        && !n.starts_with(METADATA_TOPIC)
                        && image.topic(n).is_none()
                        && describable(n)
                })
                .cloned()
                .collect()
        });
        for name in missing {
            if !creatable(&name) {
                refused_creation.insert(name);
                continue;
            }
            let partitions = state.config.num_partitions;
            let created = state
                .create_topic(&name, partitions, -1, Vec::new(), BTreeMap::new())
                .await;
            match created {
                Ok(()) | Err(crate::BrokerError::Refused(ErrorCode::TopicAlreadyExists, _)) => {}
                Err(e) => tracing::warn!(topic = %name, error = %e, "auto-creating a topic failed"),
            }
        }
    }
    let operations = request.include_topic_authorized_operations && version >= 8;
    let described = |image: &MetadataImage, topic: &TopicMeta| {
        let mut response = topic_response(image, topic, version);
        if operations {
            response.topic_authorized_operations = authz.operations(resource::TOPIC, &topic.name);
        }
        response
    };
    let topics = state.with_image(|image| match &requested {
        None => image
            .topics()
            .filter(|t| !t.name.starts_with(METADATA_TOPIC) && describable(&t.name))
            .map(|t| described(image, t))
            .collect(),
        Some(asked) => asked
            .iter()
            .map(|asked| match asked {
                Asked::Id(id) => match image.topic_by_id(id) {
                    Some(topic) if !topic.name.starts_with(METADATA_TOPIC) => {
                        if describable(&topic.name) {
                            described(image, topic)
                        } else {
                            MetadataResponseTopic {
                                error_code: ErrorCode::TopicAuthorizationFailed.code(),
                                topic_id: *id,
                                ..Default::default()
                            }
                        }
                    }
                    _ => MetadataResponseTopic {
                        error_code: ErrorCode::UnknownTopicId.code(),
                        topic_id: *id,
                        ..Default::default()
                    },
                },
                Asked::Name(name) if !describable(name) || refused_creation.contains(name) => {
                    error_topic(name.clone(), ErrorCode::TopicAuthorizationFailed)
                }
                Asked::Name(name) => match image.topic(name) {
                    Some(topic) if !name.starts_with(METADATA_TOPIC) => described(image, topic),
                    _ if !valid_topic_name(name) => {
                        error_topic(name.clone(), ErrorCode::InvalidTopicException)
                    }
                    _ => error_topic(name.clone(), ErrorCode::UnknownTopicOrPartition),
                },
            })
            .collect(),
    });
    let cluster_authorized_operations =
        if request.include_cluster_authorized_operations && (8..=10).contains(&version) {
            authz.operations(resource::CLUSTER, CLUSTER_NAME)
        } else {
            i32::MIN
        };
    MetadataResponse {
        // Brokers are described by their endpoint on the listener the request came in on.
        brokers: state
            .live_brokers(listener)
            .into_iter()
            .map(|b| MetadataResponseBroker {
                node_id: b.id,
                host: b.host,
                port: i32::from(b.port),
                rack: b.rack,
                ..Default::default()
            })
            .collect(),
        cluster_id: Some(state.config.cluster_id.clone()),
        controller_id: state.config.node_id,
        topics,
        cluster_authorized_operations,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::valid_topic_name;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        assert!(valid_topic_name("orders.v2_eu-west"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("with space"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }
}
