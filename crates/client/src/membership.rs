//! Membership of a consumer group under the classic rebalance protocol, as a
//! [`Consumer`](crate::Consumer) that subscribes holds it.
//!
//! Joining is JoinGroup then SyncGroup at the group's coordinator. The member the
//! coordinator names leader computes everyone's assignment with the range assignor (the
//! Java client's default: each topic's partitions split in ranges over the members
//! subscribed to it, in member ID order) and hands it over in its SyncGroup. A task then
//! heartbeats every `heartbeat_interval`; when the coordinator answers that the group is
//! rebalancing, or that this member's generation is over, the task stops and the next
//! `poll` joins again. Rebalances are eager: every partition is given up and the new
//! assignment starts from the group's committed offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::internal::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, consumer_protocol_assignment,
};
use spool_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest, join_group_request,
    leave_group_request, sync_group_request,
};
use spool_protocol::{ErrorCode, Message};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::consumer::TopicPartition;
use crate::error::{Error, Result};
use crate::groups::decode_assignment;

const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";
/// How much longer than the rebalance timeout a JoinGroup answer may take (the Java
/// client allows the same).
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// How a member keeps its place in a group.
#[derive(Debug, Clone)]
pub(crate) struct MemberTimeouts {
    pub session: Duration,
    pub rebalance: Duration,
    pub heartbeat_interval: Duration,
}

/// This member's standing in its group.
pub(crate) struct Membership {
    group: String,
    topics: Vec<String>,
    timeouts: MemberTimeouts,
    coordinator: Option<i32>,
    member_id: String,
    /// The generation joined, once joined.
    generation: Option<i32>,
    /// Set by the heartbeat task when this member must join again.
    rejoin: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }
}

impl Membership {
    pub(crate) fn new(group: String, topics: Vec<String>, timeouts: MemberTimeouts) -> Self {
        Membership {
            group,
            topics,
            timeouts,
            coordinator: None,
            member_id: String::new(),
            generation: None,
            rejoin: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
        }
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// The generation this member is in, while it is in one.
    pub(crate) fn generation(&self) -> Option<i32> {
        self.generation
            .filter(|_| !self.rejoin.load(Ordering::Relaxed))
    }

    /// Whether the member must (re)join before it reads again.
    pub(crate) fn needs_join(&self) -> bool {
        self.generation().is_none()
    }

    /// Ends this generation: the next poll joins again.
    fn lost(&mut self, code: ErrorCode) {
        self.generation = None;
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
        match code {
            ErrorCode::UnknownMemberId | ErrorCode::FencedInstanceId => self.member_id.clear(),
            ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable => {
                self.coordinator = None;
            }
            _ => {}
        }
    }

    async fn coordinator(&mut self, admin: &Admin) -> Result<i32> {
        match self.coordinator {
            Some(node) => Ok(node),
            None => {
                let node = admin.find_coordinator(&self.group).await?;
                self.coordinator = Some(node);
                Ok(node)
            }
        }
    }

    fn context(&self) -> String {
        format!("group {}", self.group)
    }

    /// Joins the group (JoinGroup, then SyncGroup) and returns this member's partitions.
    /// Retriable answers (a rebalance starting over, a coordinator moving) are retried
    /// within the rebalance timeout.
    pub(crate) async fn join(&mut self, admin: &Admin) -> Result<Vec<TopicPartition>> {
        self.lost(ErrorCode::None);
        self.rejoin.store(false, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.timeouts.rebalance;
        loop {
            match self.try_join(admin).await {
                Ok(assignment) => {
                    self.start_heartbeats(admin);
                    return Ok(assignment);
                }
                Err(e) if rejoinable(&e) && tokio::time::Instant::now() < deadline => {
                    self.lost(e.code().unwrap_or(ErrorCode::None));
                    if e.code().is_none() {
                        // Unreachable or silent: look the coordinator up again, it may
                        // have moved with its broker gone.
                        self.coordinator = None;
                    }
                    if e.is_retriable() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_join(&mut self, admin: &Admin) -> Result<Vec<TopicPartition>> {
        let coordinator = self.coordinator(admin).await?;
        let subscription = ConsumerProtocolSubscription {
            topics: self.topics.clone(),
            ..Default::default()
        };
        let metadata = subscription.to_versioned_bytes(0).map_err(encode_error)?;
        let wait = self.timeouts.rebalance + JOIN_GRACE;
        let joined = loop {
            let request = JoinGroupRequest {
                group_id: self.group.clone(),
                session_timeout_ms: millis(self.timeouts.session),
                rebalance_timeout_ms: millis(self.timeouts.rebalance),
                member_id: self.member_id.clone(),
                protocol_type: PROTOCOL_TYPE.into(),
                protocols: vec![join_group_request::JoinGroupRequestProtocol {
                    name: ASSIGNOR.into(),
                    metadata: metadata.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let joined = admin
                .client()
                .send_to_waiting(coordinator, request, wait)
                .await?;
            // KIP-394: a first join only hands out the member ID to join with.
            if ErrorCode::from_wire(joined.error_code) == ErrorCode::MemberIdRequired
                && !joined.member_id.is_empty()
                && joined.member_id != self.member_id
            {
                self.member_id = joined.member_id;
                continue;
            }
            break joined;
        };
        Error::check(joined.error_code, self.context(), None)?;
        self.member_id = joined.member_id.clone();
        let assignments = if joined.leader == joined.member_id {
            let members: Vec<(String, Vec<String>)> = joined
                .members
                .iter()
                .map(|m| (m.member_id.clone(), subscribed_topics(m.metadata.clone())))
                .collect();
            let all: Vec<String> = members
                .iter()
                .flat_map(|(_, topics)| topics.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let metadata = admin.client().refresh_metadata(Some(&all)).await?;
            let counts: BTreeMap<String, i32> = all
                .iter()
                .filter_map(|t| {
                    let count = metadata.partition_count(t)?;
                    Some((t.clone(), i32::try_from(count).ok()?))
                })
                .collect();
            let mut assignments = Vec::new();
            for (member_id, partitions) in range_assign(&members, &counts) {
                assignments.push(sync_group_request::SyncGroupRequestAssignment {
                    member_id,
                    assignment: encode_assignment(&partitions)?,
                    ..Default::default()
                });
            }
            assignments
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest {
            group_id: self.group.clone(),
            generation_id: joined.generation_id,
            member_id: self.member_id.clone(),
            protocol_type: Some(PROTOCOL_TYPE.into()),
            protocol_name: Some(ASSIGNOR.into()),
            assignments,
            ..Default::default()
        };
        let synced = admin
            .client()
            .send_to_waiting(coordinator, request, wait)
            .await?;
        Error::check(synced.error_code, self.context(), None)?;
        self.generation = Some(joined.generation_id);
        Ok(decode_assignment(synced.assignment))
    }

    fn start_heartbeats(&mut self, admin: &Admin) {
        let (Some(coordinator), Some(generation)) = (self.coordinator, self.generation) else {
            return;
        };
        let client = admin.client().clone();
        let rejoin = Arc::clone(&self.rejoin);
        let interval = self.timeouts.heartbeat_interval;
        let request = HeartbeatRequest {
            group_id: self.group.clone(),
            generation_id: generation,
            member_id: self.member_id.clone(),
            ..Default::default()
        };
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match client.send_to(coordinator, request.clone()).await {
                    // A lost connection or a late answer is tried again next beat; the
                    // session timeout decides whether the member is gone.
                    Err(_) => continue,
                    Ok(answer) if answer.error_code == 0 => continue,
                    Ok(_) => {
                        rejoin.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }

    /// Commits `offsets` as this member. An answer saying the generation is over ends it,
    /// and the error is returned: the partitions may already be another member's.
    pub(crate) async fn commit(
        &mut self,
        admin: &Admin,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        // A generation the heartbeat found rebalancing may still commit: the coordinator
        // takes its commits until the rebalance completes.
        let (Some(coordinator), Some(generation)) = (self.coordinator, self.generation) else {
            return Err(Error::Kafka {
                code: ErrorCode::RebalanceInProgress,
                context: self.context(),
                message: Some("this member is not in a generation of the group".into()),
            });
        };
        let committed = admin
            .commit_as_member(
                coordinator,
                &self.group,
                (generation, &self.member_id),
                offsets,
            )
            .await;
        // A lost connection or a late answer leaves the generation to the heartbeats.
        if let Err(e) = &committed
            && let Some(code) = e.code()
            && rejoinable(e)
        {
            self.lost(code);
        }
        committed
    }

    /// Leaves the group, so that its partitions go to the other members at once rather
    /// than after the session timeout.
    pub(crate) async fn leave(&mut self, admin: &Admin) -> Result<()> {
        let joined = self.generation.is_some() && !self.member_id.is_empty();
        self.lost(ErrorCode::None);
        let Some(coordinator) = self.coordinator.filter(|_| joined) else {
            return Ok(());
        };
        let request = LeaveGroupRequest {
            group_id: self.group.clone(),
            members: vec![leave_group_request::MemberIdentity {
                member_id: std::mem::take(&mut self.member_id),
                reason: Some("the consumer is closing".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let left = admin.client().send_to(coordinator, request).await?;
        let mut codes = std::iter::once(left.error_code)
            .chain(left.members.iter().map(|m| m.error_code))
            .filter(|code| *code != 0);
        match codes.next() {
            Some(code) => Err(Error::kafka(code, self.context(), None)
                .unwrap_or_else(|| Error::Invalid(format!("group {}: leave failed", self.group)))),
            None => Ok(()),
        }
    }
}

/// Errors after which joining again is the remedy.
fn rejoinable(error: &Error) -> bool {
    match error.code() {
        Some(
            ErrorCode::RebalanceInProgress
            | ErrorCode::IllegalGeneration
            | ErrorCode::UnknownMemberId
            | ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorNotAvailable
            | ErrorCode::CoordinatorLoadInProgress,
        ) => true,
        Some(_) => false,
        None => error.is_retriable(),
    }
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

fn encode_error(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot encode group metadata: {e}"))
}

fn encode_assignment(partitions: &[TopicPartition]) -> Result<Bytes> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        topics.entry(topic).or_default().push(*partition);
    }
    let assignment = ConsumerProtocolAssignment {
        assigned_partitions: topics
            .into_iter()
            .map(
                |(topic, partitions)| consumer_protocol_assignment::TopicPartition {
                    topic: topic.to_string(),
                    partitions,
                },
            )
            .collect(),
        ..Default::default()
    };
    assignment.to_versioned_bytes(0).map_err(encode_error)
}

/// The topics a member's JoinGroup metadata subscribes to; none when it is unreadable.
fn subscribed_topics(bytes: Bytes) -> Vec<String> {
    ConsumerProtocolSubscription::from_versioned_bytes_newest(bytes)
        .map(|s| s.topics)
        .unwrap_or_default()
}

/// The range assignor: for each topic, its partitions in order are cut into as many
/// contiguous ranges as members subscribe to it (members in ID order, the first ones
/// taking one more when the count does not divide). Every member gets an entry.
pub(crate) fn range_assign(
    members: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut assignment: BTreeMap<String, Vec<TopicPartition>> = members
        .iter()
        .map(|(id, _)| (id.clone(), Vec::new()))
        .collect();
    for (topic, count) in partition_counts {
        let subscribers: BTreeSet<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        let Ok(n) = i32::try_from(subscribers.len()) else {
            continue;
        };
        if n == 0 {
            continue;
        }
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in (0..).zip(subscribers) {
            let take = each + i32::from(i < extra);
            if let Some(partitions) = assignment.get_mut(member) {
                partitions.extend((next..next + take).map(|p| (topic.clone(), p)));
            }
            next += take;
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(id, topics)| {
                (
                    id.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_range_assignor_cuts_each_topic_in_ranges_by_member_id() {
        let counts = BTreeMap::from([("a".to_string(), 7), ("b".to_string(), 2)]);
        let assigned = range_assign(
            &members(&[("m2", &["a", "b"]), ("m1", &["a", "b"]), ("m3", &["a"])]),
            &counts,
        );
        let parts = |m: &str| -> Vec<(String, i32)> { assigned[m].clone() };
        let tp = |t: &str, p: i32| (t.to_string(), p);
        assert_eq!(
            parts("m1"),
            vec![tp("a", 0), tp("a", 1), tp("a", 2), tp("b", 0)]
        );
        assert_eq!(parts("m2"), vec![tp("a", 3), tp("a", 4), tp("b", 1)]);
        assert_eq!(parts("m3"), vec![tp("a", 5), tp("a", 6)]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_without() {
        let counts = BTreeMap::from([("a".to_string(), 1)]);
        let assigned = range_assign(&members(&[("x", &["a"]), ("y", &["a"])]), &counts);
        assert_eq!(assigned["x"], vec![("a".to_string(), 0)]);
        assert!(assigned["y"].is_empty());
    }

    #[test]
    fn an_assignment_encodes_as_the_consumer_protocol_reads_it() {
        let partitions = vec![
            ("a".to_string(), 0),
            ("a".to_string(), 2),
            ("b".to_string(), 1),
        ];
        let encoded = encode_assignment(&partitions).unwrap();
        assert_eq!(decode_assignment(encoded), partitions);
        let subscription = ConsumerProtocolSubscription {
            topics: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(
            subscribed_topics(subscription.to_versioned_bytes(0).unwrap()),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(subscribed_topics(Bytes::from_static(b"\x00")).is_empty());
    }
}
