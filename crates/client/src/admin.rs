//! [`Admin`]: the cluster's management APIs — topics, partitions, configs and replica
//! reassignments — as plain async calls. Requests that change metadata go to any broker;
//! Kafka's brokers forward them to the active controller.

use std::collections::BTreeMap;

use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest,
    ListOffsetsRequest, ListPartitionReassignmentsRequest, alter_partition_reassignments_request,
    create_partitions_request, create_topics_request, delete_topics_request,
    describe_configs_request, incremental_alter_configs_request, list_offsets_request,
    list_partition_reassignments_request,
};

use crate::client::{Client, ClusterMetadata, TopicInfo};
use crate::consumer::{IsolationLevel, TopicPartition};
use crate::error::{Error, Result};

/// Which offset of a partition to look up (ListOffsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the high watermark, or the last stable offset with
    /// read_committed): where the next record will go.
    Latest,
    /// The first offset whose timestamp is at or after this many ms since the epoch; the
    /// log end offset when there is none.
    Timestamp(i64),
    /// This very offset.
    Offset(i64),
}

/// The resource types of DescribeConfigs and IncrementalAlterConfigs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigResource {
    Topic = 2,
    Broker = 4,
}

/// A topic to create. `None` partitions or replication factor take the broker's defaults
/// (`num.partitions`, `default.replication.factor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    pub configs: BTreeMap<String, String>,
}

/// A partition whose replicas are being moved (ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    /// The replicas now: the target and the ones still to be removed.
    pub replicas: Vec<i32>,
    /// Target replicas still catching up.
    pub adding: Vec<i32>,
    /// Replicas to drop once the added ones are in sync.
    pub removing: Vec<i32>,
}

/// One config entry as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub read_only: bool,
    pub is_sensitive: bool,
    /// Where the value comes from (Kafka's ConfigSource: 1 topic, 4 static broker, 5
    /// default, …).
    pub source: i8,
}

impl ConfigEntry {
    /// Whether the value was set on the resource itself rather than inherited.
    pub fn is_default(&self) -> bool {
        self.source == 5
    }
}

/// A change to one config entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(String, String),
    /// Back to the default.
    Delete(String),
}

/// The cluster's management APIs.
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the topics, all or none failing alone: the first error is returned.
    pub async fn create_topics(&self, topics: &[NewTopic], validate_only: bool) -> Result<()> {
        let request = CreateTopicsRequest {
            topics: topics
                .iter()
                .map(|t| create_topics_request::CreatableTopic {
                    name: t.name.clone(),
                    num_partitions: t.partitions.unwrap_or(-1),
                    replication_factor: t.replication_factor.unwrap_or(-1),
                    configs: t
                        .configs
                        .iter()
                        .map(
                            |(name, value)| create_topics_request::CreatableTopicConfig {
                                name: name.clone(),
                                value: Some(value.clone()),
                                ..Default::default()
                            },
                        )
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            timeout_ms: timeout_ms(&self.client),
            validate_only,
            ..Default::default()
        };
        let response = self.client.send_any(request).await?;
        for topic in response.topics {
            Error::check(
                topic.error_code,
                format!("topic {}", topic.name),
                topic.error_message,
            )?;
        }
        Ok(())
    }

    /// Deletes the topics by name.
    pub async fn delete_topics(&self, names: &[String]) -> Result<()> {
        let request = DeleteTopicsRequest {
            topics: names
                .iter()
                .map(|name| delete_topics_request::DeleteTopicState {
                    name: Some(name.clone()),
                    ..Default::default()
                })
                .collect(),
            topic_names: names.to_vec(),
            timeout_ms: timeout_ms(&self.client),
            ..Default::default()
        };
        let response = self.client.send_any(request).await?;
        for topic in response.responses {
            let name = topic.name.unwrap_or_default();
            Error::check(
                topic.error_code,
                format!("topic {name}"),
                topic.error_message,
            )?;
        }
        Ok(())
    }

    /// Every topic and broker in the cluster (internal topics included).
    pub async fn cluster(&self) -> Result<std::sync::Arc<ClusterMetadata>> {
        self.client.refresh_metadata(None).await
    }

    /// One topic's partitions, leaders and replicas.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let metadata = self
            .client
            .refresh_metadata(Some(&[name.to_string()]))
            .await?;
        metadata
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| crate::client::unknown_topic(name))
    }

    /// Grows `topic` to `count` partitions.
    pub async fn create_partitions(
        &self,
        topic: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<()> {
        let request = CreatePartitionsRequest {
            topics: vec![create_partitions_request::CreatePartitionsTopic {
                name: topic.to_string(),
                count,
                assignments: None,
                ..Default::default()
            }],
            timeout_ms: timeout_ms(&self.client),
            validate_only,
            ..Default::default()
        };
        let response = self.client.send_any(request).await?;
        for result in response.results {
            Error::check(
                result.error_code,
                format!("topic {}", result.name),
                result.error_message,
            )?;
        }
        Ok(())
    }

    /// Moves `partition` of `topic` to the brokers `replicas` (the first is the preferred
    /// leader), or with `None` cancels the partition's ongoing move. The call returns once
    /// the controller has accepted it; the copy goes on in the background until
    /// [`Admin::list_reassignments`] no longer lists the partition.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: Option<Vec<i32>>,
    ) -> Result<()> {
        let request = AlterPartitionReassignmentsRequest {
            timeout_ms: timeout_ms(&self.client),
            topics: vec![alter_partition_reassignments_request::ReassignableTopic {
                name: topic.to_string(),
                partitions: vec![
                    alter_partition_reassignments_request::ReassignablePartition {
                        partition_index: partition,
                        replicas,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let response = self.client.send_any(request).await?;
        Error::check(
            response.error_code,
            format!("topic {topic} partition {partition}"),
            response.error_message,
        )?;
        for result in response.responses.iter().flat_map(|t| &t.partitions) {
            Error::check(
                result.error_code,
                format!("topic {topic} partition {}", result.partition_index),
                result.error_message.clone(),
            )?;
        }
        Ok(())
    }

    /// The ongoing reassignments, of every topic or of `topic` only.
    pub async fn list_reassignments(&self, topic: Option<&str>) -> Result<Vec<Reassignment>> {
        let topics = match topic {
            None => None,
            Some(name) => {
                let count = self.client.topic(name).await?.partitions.len();
                let indexes = (0..i32::try_from(count).unwrap_or(i32::MAX)).collect();
                Some(vec![
                    list_partition_reassignments_request::ListPartitionReassignmentsTopics {
                        name: name.to_string(),
                        partition_indexes: indexes,
                        ..Default::default()
                    },
                ])
            }
        };
        let request = ListPartitionReassignmentsRequest {
            timeout_ms: timeout_ms(&self.client),
            topics,
            ..Default::default()
        };
        let response = self.client.send_any(request).await?;
        Error::check(
            response.error_code,
            "ListPartitionReassignments",
            response.error_message,
        )?;
        let mut moves: Vec<Reassignment> = response
            .topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name;
                t.partitions.into_iter().map(move |p| Reassignment {
                    topic: name.clone(),
                    partition: p.partition_index,
                    replicas: p.replicas,
                    adding: p.adding_replicas,
                    removing: p.removing_replicas,
                })
            })
            .collect();
        moves.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(moves)
    }

    /// The config of a topic or broker; `keys` narrows it to those names.
    pub async fn describe_configs(
        &self,
        resource: ConfigResource,
        name: &str,
        keys: Option<&[String]>,
    ) -> Result<Vec<ConfigEntry>> {
        let request = DescribeConfigsRequest {
            resources: vec![describe_configs_request::DescribeConfigsResource {
                resource_type: resource as i8,
                resource_name: name.to_string(),
                configuration_keys: keys.map(<[String]>::to_vec),
                ..Default::default()
            }],
            ..Default::default()
        };
        let response = match resource {
            // A broker's own config is only that broker's to describe.
            ConfigResource::Broker => {
                let node_id = name
                    .parse()
                    .map_err(|_| Error::Invalid(format!("broker {name:?} is not a node ID")))?;
                self.client.send_to(node_id, request).await?
            }
            ConfigResource::Topic => self.client.send_any(request).await?,
        };
        let mut entries = Vec::new();
        for result in response.results {
            let context = format!("{} {}", resource.noun(), result.resource_name);
            Error::check(result.error_code, context, result.error_message)?;
            entries.extend(result.configs.into_iter().map(|c| ConfigEntry {
                name: c.name,
                value: c.value,
                read_only: c.read_only,
                is_sensitive: c.is_sensitive,
                source: c.config_source,
            }));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Sets or deletes config entries of a topic or broker (IncrementalAlterConfigs).
    pub async fn alter_configs(
        &self,
        resource: ConfigResource,
        name: &str,
        changes: &[ConfigChange],
        validate_only: bool,
    ) -> Result<()> {
        const SET: i8 = 0;
        const DELETE: i8 = 1;
        let request = IncrementalAlterConfigsRequest {
            resources: vec![incremental_alter_configs_request::AlterConfigsResource {
                resource_type: resource as i8,
                resource_name: name.to_string(),
                configs: changes
                    .iter()
                    .map(|change| match change {
                        ConfigChange::Set(key, value) => {
                            incremental_alter_configs_request::AlterableConfig {
                                name: key.clone(),
                                config_operation: SET,
                                value: Some(value.clone()),
                                ..Default::default()
                            }
                        }
                        ConfigChange::Delete(key) => {
                            incremental_alter_configs_request::AlterableConfig {
                                name: key.clone(),
                                config_operation: DELETE,
                                value: None,
                                ..Default::default()
                            }
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            validate_only,
            ..Default::default()
        };
        let response = self.client.send_any(request).await?;
        for result in response.responses {
            let context = format!("{} {}", resource.noun(), result.resource_name);
            Error::check(result.error_code, context, result.error_message)?;
        }
        Ok(())
    }
}

impl Admin {
    /// The offset `spec` names in each of `partitions`, asking each partition's leader.
    pub async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
        isolation_level: IsolationLevel,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        const EARLIEST: i64 = -2;
        const LATEST: i64 = -1;
        let timestamp = match spec {
            OffsetSpec::Earliest => EARLIEST,
            OffsetSpec::Latest => LATEST,
            OffsetSpec::Timestamp(ms) => ms,
            OffsetSpec::Offset(offset) => {
                return Ok(partitions.iter().map(|tp| (tp.clone(), offset)).collect());
            }
        };
        let mut topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
        topics.sort();
        topics.dedup();
        let mut metadata = self.client.metadata();
        if topics.iter().any(|t| !metadata.topics.contains_key(t)) {
            metadata = self.client.refresh_metadata(Some(&topics)).await?;
        }
        let mut by_leader: BTreeMap<i32, BTreeMap<&str, Vec<i32>>> = BTreeMap::new();
        for (topic, partition) in partitions {
            let info = metadata
                .topics
                .get(topic)
                .ok_or_else(|| crate::client::unknown_topic(topic))?;
            let leader = info
                .partitions
                .get(usize::try_from(*partition).unwrap_or(usize::MAX))
                .map(|p| p.leader)
                .ok_or_else(|| Error::Kafka {
                    code: spool_protocol::ErrorCode::UnknownTopicOrPartition,
                    context: format!("topic {topic} partition {partition}"),
                    message: None,
                })?;
            by_leader
                .entry(leader)
                .or_default()
                .entry(topic)
                .or_default()
                .push(*partition);
        }
        let mut offsets = BTreeMap::new();
        for (leader, topics) in by_leader {
            let request = ListOffsetsRequest {
                replica_id: -1,
                isolation_level: isolation_level as i8,
                topics: topics
                    .into_iter()
                    .map(
                        |(name, partitions)| list_offsets_request::ListOffsetsTopic {
                            name: name.to_string(),
                            partitions: partitions
                                .into_iter()
                                .map(
                                    |partition_index| list_offsets_request::ListOffsetsPartition {
                                        partition_index,
                                        timestamp,
                                        ..Default::default()
                                    },
                                )
                                .collect(),
                            ..Default::default()
                        },
                    )
                    .collect(),
                timeout_ms: timeout_ms(&self.client),
                ..Default::default()
            };
            let response = self.client.send_to(leader, request).await?;
            for topic in response.topics {
                for partition in topic.partitions {
                    let context = format!(
                        "topic {} partition {} on broker {leader}",
                        topic.name, partition.partition_index
                    );
                    Error::check(partition.error_code, context, None)?;
                    offsets.insert(
                        (topic.name.clone(), partition.partition_index),
                        partition.offset,
                    );
                }
            }
        }
        // A time after every record has no offset (-1): the log end offset stands for it,
        // as Kafka's consumers seek there.
        if offsets.values().any(|offset| *offset < 0) && matches!(spec, OffsetSpec::Timestamp(_)) {
            let missing: Vec<TopicPartition> = offsets
                .iter()
                .filter(|(_, offset)| **offset < 0)
                .map(|(tp, _)| tp.clone())
                .collect();
            let ends =
                Box::pin(self.list_offsets(&missing, OffsetSpec::Latest, isolation_level)).await?;
            offsets.extend(ends);
        }
        Ok(offsets)
    }
}

impl ConfigResource {
    fn noun(self) -> &'static str {
        match self {
            ConfigResource::Topic => "topic",
            ConfigResource::Broker => "broker",
        }
    }
}

/// The time a controller may take over a request, as Kafka's admin client sends it.
fn timeout_ms(client: &Client) -> i32 {
    i32::try_from(client.config().request_timeout.as_millis()).unwrap_or(i32::MAX)
}
