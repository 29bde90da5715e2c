//! Consumer groups seen from outside, as an operator's tool needs them: list, describe
//! (members, their assignments, committed offsets and lag), commit offsets on a group's
//! behalf (resetting them while it is inactive), and delete. Group requests go to the
//! group's coordinator, found with FindCoordinator.

use std::collections::BTreeMap;

use bytes::Bytes;
use spool_protocol::internal::ConsumerProtocolAssignment;
use spool_protocol::messages::{
    ConsumerGroupDescribeRequest, DeleteGroupsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    offset_commit_request,
};
use spool_protocol::{ErrorCode, Message};

use crate::admin::{Admin, OffsetSpec};
use crate::consumer::{IsolationLevel, TopicPartition};
use crate::error::{Error, Result};

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
    /// `classic` or `consumer` (KIP-848), when the broker says.
    pub group_type: String,
}

/// A member of a group and the partitions assigned to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub assignment: Vec<TopicPartition>,
}

/// A group's state and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// Kafka's state name: Empty, Stable, PreparingRebalance, …; Dead when unknown.
    pub state: String,
    pub protocol_type: String,
    /// The assignor (classic: the protocol the members agreed on).
    pub assignor: String,
    pub group_type: String,
    pub coordinator: i32,
    pub members: Vec<GroupMember>,
}

impl GroupDescription {
    /// Whether offsets may be changed on the group's behalf: no member is in it.
    pub fn is_inactive(&self) -> bool {
        self.members.is_empty() && matches!(self.state.as_str(), "Empty" | "Dead")
    }
}

/// One partition's committed offset, log end and lag for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// `None` when the group has no offset for the partition.
    pub committed: Option<i64>,
    pub log_end: i64,
    /// Log end minus committed offset; the whole log end when nothing was committed.
    pub lag: i64,
    /// The member the partition is assigned to, if any.
    pub member_id: Option<String>,
}

// FindCoordinator v4 and OffsetFetch v8 batch several groups per request; one at a time
// is what an operator's tool needs, so the single-group versions are used.
const FIND_COORDINATOR_SINGLE_MAX: i16 = 3;
const OFFSET_FETCH_SINGLE_MAX: i16 = 7;

impl Admin {
    /// The node ID of `group`'s coordinator. A coordinator still loading is asked for
    /// again a few times.
    pub async fn find_coordinator(&self, group: &str) -> Result<i32> {
        let client = self.client();
        let mut attempts = 0;
        loop {
            let request = FindCoordinatorRequest {
                key: group.to_string(),
                key_type: 0,
                ..Default::default()
            };
            let metadata = client.metadata();
            let node = metadata.brokers.keys().next().copied();
            let response = match node {
                Some(node) => {
                    client
                        .send_to_capped(node, request, Some(FIND_COORDINATOR_SINGLE_MAX))
                        .await?
                }
                None => client.send_any(request).await?,
            };
            match Error::kafka(
                response.error_code,
                format!("group {group}"),
                response.error_message,
            ) {
                None => return Ok(response.node_id),
                Some(e) if e.is_retriable() && attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// Every group on every broker.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let client = self.client();
        let metadata = client.refresh_metadata(Some(&[])).await?;
        let mut groups = Vec::new();
        for node in metadata.brokers.keys() {
            let response = client.send_to(*node, ListGroupsRequest::default()).await?;
            Error::check(
                response.error_code,
                format!("broker {node} (ListGroups)"),
                None,
            )?;
            groups.extend(response.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id,
                protocol_type: g.protocol_type,
                state: g.group_state,
                group_type: g.group_type,
            }));
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// A group's state and members. A group the coordinator does not know is
    /// GROUP_ID_NOT_FOUND.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let coordinator = self.find_coordinator(group).await?;
        let client = self.client();
        let request = DescribeGroupsRequest {
            groups: vec![group.to_string()],
            ..Default::default()
        };
        let response = client.send_to(coordinator, request).await?;
        let described = response
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| missing_group(group))?;
        let code = ErrorCode::from_wire(described.error_code);
        let classic_unknown = code == ErrorCode::GroupIdNotFound
            || (code == ErrorCode::None && described.group_state == "Dead");
        if !classic_unknown {
            Error::check(
                described.error_code,
                format!("group {group}"),
                described.error_message,
            )?;
            return Ok(GroupDescription {
                group_id: described.group_id,
                state: described.group_state,
                protocol_type: described.protocol_type,
                assignor: described.protocol_data,
                group_type: "classic".into(),
                coordinator,
                members: described
                    .members
                    .into_iter()
                    .map(|m| GroupMember {
                        assignment: decode_assignment(m.member_assignment),
                        member_id: m.member_id,
                        instance_id: m.group_instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                    })
                    .collect(),
            });
        }
        // Not a classic group: perhaps one of the KIP-848 consumer protocol.
        let request = ConsumerGroupDescribeRequest {
            group_ids: vec![group.to_string()],
            ..Default::default()
        };
        let response = match client.send_to(coordinator, request).await {
            Ok(response) => response,
            Err(Error::Unsupported { .. }) => return Err(missing_group(group)),
            Err(e) => return Err(e),
        };
        let described = response
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| missing_group(group))?;
        Error::check(
            described.error_code,
            format!("group {group}"),
            described.error_message,
        )?;
        Ok(GroupDescription {
            group_id: described.group_id,
            state: consumer_group_state(&described.group_state),
            protocol_type: "consumer".into(),
            assignor: described.assignor_name,
            group_type: "consumer".into(),
            coordinator,
            members: described
                .members
                .into_iter()
                .map(|m| GroupMember {
                    assignment: m
                        .assignment
                        .topic_partitions
                        .into_iter()
                        .flat_map(|t| {
                            let name = t.topic_name;
                            t.partitions.into_iter().map(move |p| (name.clone(), p))
                        })
                        .collect(),
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                })
                .collect(),
        })
    }

    /// The offsets `group` has committed, per partition.
    pub async fn committed_offsets(&self, group: &str) -> Result<BTreeMap<TopicPartition, i64>> {
        let coordinator = self.find_coordinator(group).await?;
        let request = OffsetFetchRequest {
            group_id: group.to_string(),
            topics: None,
            ..Default::default()
        };
        let response = self
            .client()
            .send_to_capped(coordinator, request, Some(OFFSET_FETCH_SINGLE_MAX))
            .await?;
        Error::check(response.error_code, format!("group {group}"), None)?;
        let mut offsets = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                partition_result(group, &topic.name, p.partition_index, p.error_code)?;
                if p.committed_offset >= 0 {
                    offsets.insert((topic.name.clone(), p.partition_index), p.committed_offset);
                }
            }
        }
        Ok(offsets)
    }

    /// For each partition the group has an offset for or a member is assigned: the
    /// committed offset, the log end (the last stable offset, as a read_committed
    /// consumer's lag counts, when `isolation_level` says so) and the lag.
    pub async fn group_lag(
        &self,
        description: &GroupDescription,
        isolation_level: IsolationLevel,
    ) -> Result<Vec<PartitionLag>> {
        let committed = self.committed_offsets(&description.group_id).await?;
        let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
        for member in &description.members {
            for tp in &member.assignment {
                owners.insert(tp.clone(), member.member_id.clone());
            }
        }
        let mut partitions: Vec<TopicPartition> = committed.keys().cloned().collect();
        partitions.extend(owners.keys().cloned());
        partitions.sort();
        partitions.dedup();
        // Offsets of a topic deleted since are left out rather than failing the whole.
        let mut topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
        topics.dedup();
        let known = self.client().refresh_metadata(Some(&topics)).await?;
        partitions.retain(|(t, p)| {
            known
                .topics
                .get(t)
                .is_some_and(|t| t.partitions.len() > *p as usize)
        });
        let ends = self
            .list_offsets(&partitions, OffsetSpec::Latest, isolation_level)
            .await?;
        Ok(partitions
            .into_iter()
            .map(|tp| {
                let log_end = ends.get(&tp).copied().unwrap_or(0);
                let committed = committed.get(&tp).copied();
                PartitionLag {
                    lag: (log_end - committed.unwrap_or(0)).max(0),
                    committed,
                    log_end,
                    member_id: owners.get(&tp).cloned(),
                    topic: tp.0,
                    partition: tp.1,
                }
            })
            .collect())
    }

    /// Commits `offsets` for `group` as an admin client does (no generation, no member):
    /// the coordinator accepts it only while the group has no members.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let coordinator = self.find_coordinator(group).await?;
        self.commit_as_member(coordinator, group, (-1, ""), offsets)
            .await
    }

    /// Commits `offsets` for `group` at `coordinator` as the member `(generation,
    /// member_id)`; generation -1 and no member ID commit as an admin client does.
    pub(crate) async fn commit_as_member(
        &self,
        coordinator: i32,
        group: &str,
        (generation, member_id): (i32, &str),
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let mut topics: BTreeMap<&str, Vec<offset_commit_request::OffsetCommitRequestPartition>> =
            BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            topics.entry(topic).or_default().push(
                offset_commit_request::OffsetCommitRequestPartition {
                    partition_index: *partition,
                    committed_offset: *offset,
                    committed_metadata: Some(String::new()),
                    ..Default::default()
                },
            );
        }
        let request = OffsetCommitRequest {
            group_id: group.to_string(),
            generation_id_or_member_epoch: generation,
            member_id: member_id.to_string(),
            topics: topics
                .into_iter()
                .map(
                    |(name, partitions)| offset_commit_request::OffsetCommitRequestTopic {
                        name: name.to_string(),
                        partitions,
                        ..Default::default()
                    },
                )
                .collect(),
            ..Default::default()
        };
        let response = self.client().send_to(coordinator, request).await?;
        for topic in response.topics {
            for p in topic.partitions {
                partition_result(group, &topic.name, p.partition_index, p.error_code)?;
            }
        }
        Ok(())
    }

    /// Deletes groups (each must have no members: NON_EMPTY_GROUP otherwise).
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let coordinator = self.find_coordinator(group).await?;
        let request = DeleteGroupsRequest {
            groups_names: vec![group.to_string()],
            ..Default::default()
        };
        let response = self.client().send_to(coordinator, request).await?;
        for result in response.results {
            Error::check(
                result.error_code,
                format!("group {}", result.group_id),
                None,
            )?;
        }
        Ok(())
    }
}

/// A group's per-partition answer (OffsetFetch, OffsetCommit) as a result.
fn partition_result(group: &str, topic: &str, partition: i32, code: i16) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Error::check(
        code,
        format!("group {group} topic {topic} partition {partition}"),
        None,
    )
}

fn missing_group(group: &str) -> Error {
    Error::Kafka {
        code: ErrorCode::GroupIdNotFound,
        context: format!("group {group}"),
        message: None,
    }
}

/// KIP-848 state names in the words the classic protocol uses for them.
fn consumer_group_state(state: &str) -> String {
    match state {
        "Empty" | "empty" => "Empty",
        "Assigning" | "assigning" => "Assigning",
        "Reconciling" | "reconciling" => "Reconciling",
        "Stable" | "stable" => "Stable",
        "Dead" | "dead" => "Dead",
        other => other,
    }
    .to_string()
}

/// The partitions in a consumer-protocol assignment (a version, then the body); anything
/// else (another protocol type, garbage) assigns nothing readable.
pub(crate) fn decode_assignment(bytes: Bytes) -> Vec<TopicPartition> {
    match ConsumerProtocolAssignment::from_versioned_bytes_newest(bytes) {
        Ok(assignment) => assignment
            .assigned_partitions
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic;
                t.partitions.into_iter().map(move |p| (topic.clone(), p))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}
