//! Consumer groups of the KIP-848 protocol: members heartbeat (ConsumerGroupHeartbeat)
//! with their subscription, and the coordinator assigns partitions itself.
//!
//! Three epochs drive it, as in Kafka:
//! - the **group epoch** moves whenever a member joins or leaves, a subscription changes,
//!   or the metadata of the subscribed topics changes (a topic or partitions added);
//! - the **assignment epoch** is the group epoch the target assignment was computed for
//!   (by the group's server-side assignor, [`super::assign`]);
//! - each **member epoch** is the assignment epoch the member has caught up with.
//!
//! A member catches up on its heartbeats: partitions it must give up are revoked first
//! (its epoch stays until it reports them gone, within its rebalance timeout), and a
//! partition another member still owns is handed over only once that member released it.
//! So no partition is ever owned by two members, and members that keep their partitions
//! are never stopped. Every change is written as Kafka's records (group epoch, member
//! metadata, target assignment, current assignment), which [`ConsumerGroup::replay`]
//! reads back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;
use spool_protocol::internal::consumer_group_current_member_assignment_value::TopicPartitions as StoredPartitions;
use spool_protocol::internal::consumer_group_target_assignment_member_value::TopicPartition as TargetPartitions;
use spool_protocol::internal::{
    ConsumerGroupCurrentMemberAssignmentValue, ConsumerGroupMemberMetadataValue,
    ConsumerGroupMetadataValue, ConsumerGroupTargetAssignmentMemberValue,
    ConsumerGroupTargetAssignmentMetadataValue,
};
use spool_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member as DescribedMember,
    TopicPartitions as DescribedPartitions,
};
use spool_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as WireAssignment, TopicPartitions as WirePartitions,
};
use spool_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use spool_protocol::{ErrorCode, Uuid};

use super::assign::{self, Assignment, MemberSpec};
use super::shard::Client;
use super::{GroupConfig, GroupRecord};

/// The member epoch of a member leaving the group.
pub const LEAVE_EPOCH: i32 = -1;
/// The member epoch of a static member leaving for now: it keeps its partitions until
/// its session times out or its instance rejoins.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// A request refused: the error code and the message for the client.
pub type Refusal = (ErrorCode, String);

/// The topics the coordinator can see.
pub trait TopicSource {
    /// The ID and partition count of an existing topic.
    fn topic(&self, name: &str) -> Option<(Uuid, i32)>;
    /// The name of the topic with this ID.
    fn topic_name(&self, id: &Uuid) -> Option<String>;
    /// The topics a subscription's regular expression may match (internal ones excluded).
    fn topic_names(&self) -> Vec<String>;
}

impl TopicSource for spool_metadata::MetadataImage {
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        spool_metadata::MetadataImage::topic(self, name).map(|t| (t.id, t.partitions.len() as i32))
    }

    fn topic_name(&self, id: &Uuid) -> Option<String> {
        self.topic_by_id(id).map(|t| t.name.clone())
    }

    fn topic_names(&self) -> Vec<String> {
        self.topics()
            .filter(|t| !t.is_internal())
            .map(|t| t.name.clone())
            .collect()
    }
}

/// Where a member is in catching up with its target assignment (Kafka's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable = 0,
    /// It must first give up partitions no longer its own.
    UnrevokedPartitions = 1,
    /// It waits for partitions other members still own.
    UnreleasedPartitions = 2,
}

impl MemberState {
    fn from_stored(value: i8) -> MemberState {
        match value {
            1 => MemberState::UnrevokedPartitions,
            2 => MemberState::UnreleasedPartitions,
            _ => MemberState::Stable,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub topic_names: Vec<String>,
    pub topic_regex: Option<String>,
    /// `topic_regex` compiled, anchored at both ends as Kafka matches.
    regex: Option<Regex>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub assigned: Assignment,
    pub pending_revocation: Assignment,
    session_deadline: i64,
    /// Set while partitions await revocation: when the member is fenced if they still do.
    revocation_deadline: Option<i64>,
}

impl ConsumerMember {
    fn new(id: String, now: i64, config: &GroupConfig) -> ConsumerMember {
        ConsumerMember {
            id,
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            topic_names: Vec::new(),
            topic_regex: None,
            regex: None,
            rebalance_timeout_ms: -1,
            server_assignor: None,
            epoch: 0,
            previous_epoch: -1,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
            session_deadline: now + i64::from(config.consumer_session_timeout_ms),
            revocation_deadline: None,
        }
    }

    fn subscribes_to(&self, topic: &str) -> bool {
        self.topic_names.iter().any(|t| t == topic)
            || self.regex.as_ref().is_some_and(|r| r.is_match(topic))
    }

    fn same_subscription(&self, other: &ConsumerMember) -> bool {
        self.topic_names == other.topic_names
            && self.topic_regex == other.topic_regex
            && self.server_assignor == other.server_assignor
    }

    fn same_metadata(&self, other: &ConsumerMember) -> bool {
        self.same_subscription(other)
            && self.instance_id == other.instance_id
            && self.rack_id == other.rack_id
            && self.client_id == other.client_id
            && self.client_host == other.client_host
            && self.rebalance_timeout_ms == other.rebalance_timeout_ms
    }

    fn set_regex(&mut self, regex: Option<String>) -> Result<(), Refusal> {
        self.regex = match &regex {
            None => None,
            Some(r) => Some(compile(r)?),
        };
        self.topic_regex = regex;
        Ok(())
    }

    /// Every partition it owns, including those it is revoking.
    fn owned(&self) -> impl Iterator<Item = (Uuid, i32)> + '_ {
        partitions(&self.assigned).chain(partitions(&self.pending_revocation))
    }
}

fn compile(regex: &str) -> Result<Regex, Refusal> {
    Regex::new(&format!("^(?:{regex})$")).map_err(|e| {
        (
            ErrorCode::InvalidRegularExpression,
            format!("SubscribedTopicRegex `{regex}` is not a valid regular expression: {e}"),
        )
    })
}

fn partitions(assignment: &Assignment) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    assignment
        .iter()
        .flat_map(|(topic, ps)| ps.iter().map(move |p| (*topic, *p)))
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .any(|(topic, ps)| b.get(topic).is_some_and(|other| !ps.is_disjoint(other)))
}

fn is_subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .all(|(topic, ps)| ps.is_empty() || b.get(topic).is_some_and(|other| ps.is_subset(other)))
}

/// One heartbeat being handled: what its steps need besides the group.
pub struct Context<'a> {
    pub group_id: &'a str,
    pub config: &'a GroupConfig,
    pub now: i64,
    pub client: &'a Client,
    pub topics: &'a dyn TopicSource,
    pub records: &'a mut Vec<GroupRecord>,
    pub new_member_id: &'a mut dyn FnMut() -> String,
}

/// Kafka's checks of a heartbeat before the group is looked at.
pub fn validate(
    request: &ConsumerGroupHeartbeatRequest,
    version: i16,
    config: &GroupConfig,
) -> Result<(), Refusal> {
    let invalid = |message: &str| Err((ErrorCode::InvalidRequest, message.to_string()));
    if request.group_id.is_empty() {
        return Err((ErrorCode::InvalidGroupId, "GroupId can't be empty.".into()));
    }
    if request.instance_id.as_deref() == Some("") {
        return invalid("InstanceId can't be empty.");
    }
    if request.rack_id.as_deref() == Some("") {
        return invalid("RackId can't be empty.");
    }
    match request.member_epoch {
        0 => {
            if request.member_id.is_empty() && version >= 1 {
                return invalid("MemberId can't be empty.");
            }
            if request.rebalance_timeout_ms == -1 {
                return invalid("RebalanceTimeoutMs must be provided in first request.");
            }
            if request
                .topic_partitions
                .as_ref()
                .is_none_or(|t| !t.is_empty())
            {
                return invalid("TopicPartitions must be empty when (re-)joining.");
            }
            let names = request
                .subscribed_topic_names
                .as_ref()
                .is_some_and(|n| !n.is_empty());
            let regex = request
                .subscribed_topic_regex
                .as_ref()
                .is_some_and(|r| !r.is_empty());
            if !names && !regex {
                return invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                );
            }
        }
        STATIC_LEAVE_EPOCH if request.instance_id.is_none() => {
            return invalid("InstanceId can't be null.");
        }
        epoch if epoch > 0 || epoch == LEAVE_EPOCH || epoch == STATIC_LEAVE_EPOCH => {
            if request.member_id.is_empty() {
                return invalid("MemberId can't be empty.");
            }
        }
        _ => return invalid("MemberEpoch is invalid."),
    }
    if let Some(assignor) = &request.server_assignor
        && !config.consumer_assignors.contains(assignor)
    {
        return Err((
            ErrorCode::UnsupportedAssignor,
            format!("ServerAssignor {assignor} is not supported."),
        ));
    }
    if let Some(regex) = request
        .subscribed_topic_regex
        .as_deref()
        .filter(|r| !r.is_empty())
    {
        compile(regex)?;
    }
    Ok(())
}

/// A consumer group's membership and assignments.
#[derive(Debug, Clone, Default)]
pub struct ConsumerGroup {
    pub epoch: i32,
    /// A hash of the subscribed topics' metadata at the last group epoch.
    metadata_hash: i64,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    /// Static members: instance ID → member ID.
    instances: HashMap<String, String>,
    pub target: BTreeMap<String, Assignment>,
    /// Who owns each partition now (assigned or being revoked).
    owners: HashMap<(Uuid, i32), String>,
    /// When the group last lost its last member (offsets of an empty group age from it).
    pub empty_since: i64,
}

impl ConsumerGroup {
    pub fn new(now: i64) -> ConsumerGroup {
        ConsumerGroup {
            empty_since: now,
            ..ConsumerGroup::default()
        }
    }

    /// Kafka's consumer group states: Empty, Assigning (the target is behind the group
    /// epoch), Reconciling (members are catching up) or Stable.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Whether a member subscribes to `topic` (by name or by regular expression).
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.members.values().any(|m| m.subscribes_to(topic))
    }

    /// The assignor the members ask for most (the default when none asks).
    pub fn assignor(&self, config: &GroupConfig) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some(name) = &member.server_assignor {
                *votes.entry(name).or_default() += 1;
            }
        }
        let most = votes.values().copied().max().unwrap_or(0);
        config
            .consumer_assignors
            .iter()
            .find(|a| most > 0 && votes.get(a.as_str()) == Some(&most))
            .or(config.consumer_assignors.first())
            .cloned()
            .unwrap_or_else(|| assign::ASSIGNORS[0].to_string())
    }

    // ---- the heartbeat ----

    /// ConsumerGroupHeartbeat for an existing group (created empty by the caller for a
    /// first member).
    pub fn heartbeat(
        &mut self,
        cx: &mut Context<'_>,
        request: &ConsumerGroupHeartbeatRequest,
    ) -> Result<ConsumerGroupHeartbeatResponse, Refusal> {
        if request.member_epoch == LEAVE_EPOCH || request.member_epoch == STATIC_LEAVE_EPOCH {
            return self.leave(cx, request);
        }
        let owned = request
            .topic_partitions
            .as_ref()
            .map(|topics| collect(topics.iter().map(|t| (t.topic_id, t.partitions.clone()))));
        let (mut member, arrival) = if request.member_epoch == 0 {
            self.joining_member(cx, request)?
        } else {
            (
                self.existing_member(request, owned.as_ref())?,
                Arrival::Known,
            )
        };
        let before = member.clone();
        if let Some(names) = &request.subscribed_topic_names {
            let mut names = names.clone();
            names.sort_unstable();
            names.dedup();
            member.topic_names = names;
        }
        if let Some(regex) = &request.subscribed_topic_regex {
            member.set_regex(Some(regex.clone()).filter(|r| !r.is_empty()))?;
        }
        if request.rebalance_timeout_ms != -1 {
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        }
        if request.server_assignor.is_some() {
            member.server_assignor = request.server_assignor.clone();
        }
        if request.rack_id.is_some() {
            member.rack_id = request.rack_id.clone();
        }
        member.instance_id = request.instance_id.clone().or(member.instance_id);
        member.client_id = cx.client.client_id.clone();
        member.client_host = cx.client.client_host.clone();
        member.session_deadline = cx.now + i64::from(cx.config.consumer_session_timeout_ms);

        let id = member.id.clone();
        if let Arrival::Replacing(old) = &arrival {
            self.replace(cx, old, &id);
        }
        let new = !matches!(arrival, Arrival::Known);
        if new || !member.same_metadata(&before) {
            cx.records.push(member_record(cx.group_id, &member));
        }
        let resubscribed = matches!(arrival, Arrival::New) || !member.same_subscription(&before);
        if let Some(instance) = &member.instance_id {
            self.instances.insert(instance.clone(), id.clone());
        }
        self.members.insert(id.clone(), member);

        let resolved = self.resolve(cx.topics);
        let hash = metadata_hash(&resolved);
        if resubscribed || hash != self.metadata_hash {
            self.metadata_hash = hash;
            self.bump(cx.group_id, cx.records);
        }
        if self.epoch > self.assignment_epoch {
            self.compute_target(cx, &resolved);
        }
        let reconciled = self.reconcile(&id, owned.as_ref(), cx.now);
        let Some(member) = self.members.get(&id) else {
            return Err((ErrorCode::UnknownMemberId, format!("Member {id} is gone.")));
        };
        if reconciled || new {
            cx.records.push(assignment_record(cx.group_id, member));
        }
        // Kafka sends the assignment on a full request (a join, or after an error) and
        // whenever it changed.
        let full = request.rebalance_timeout_ms != -1
            && (request.subscribed_topic_names.is_some()
                || request.subscribed_topic_regex.is_some())
            && request.topic_partitions.is_some();
        let send = request.member_epoch == 0 || full || member.assigned != before.assigned;
        Ok(ConsumerGroupHeartbeatResponse {
            member_id: Some(id.clone()),
            member_epoch: member.epoch,
            heartbeat_interval_ms: cx.config.consumer_heartbeat_interval_ms,
            assignment: send.then(|| WireAssignment {
                topic_partitions: lists(&member.assigned, |topic_id, partitions| WirePartitions {
                    topic_id,
                    partitions,
                    ..WirePartitions::default()
                }),
                ..WireAssignment::default()
            }),
            ..ConsumerGroupHeartbeatResponse::default()
        })
    }

    /// The member sending epoch 0: new, rejoining, or replacing a static member that left
    /// for now.
    fn joining_member(
        &mut self,
        cx: &mut Context<'_>,
        request: &ConsumerGroupHeartbeatRequest,
    ) -> Result<(ConsumerMember, Arrival), Refusal> {
        let id = if request.member_id.is_empty() {
            (cx.new_member_id)()
        } else {
            request.member_id.clone()
        };
        if let Some(instance) = &request.instance_id
            && let Some(current) = self.instances.get(instance).cloned()
            && current != id
        {
            let Some(old) = self.members.get(&current) else {
                return Err(unknown_member(&current));
            };
            if old.epoch != STATIC_LEAVE_EPOCH {
                return Err((
                    ErrorCode::UnreleasedInstanceId,
                    format!("Static member {current} with instance id {instance} is still active."),
                ));
            }
            // The new member carries on with the old one's partitions and epoch.
            let mut member = old.clone();
            member.id = id;
            member.epoch = old.previous_epoch.max(0);
            return Ok((member, Arrival::Replacing(current)));
        }
        if let Some(existing) = self.members.get(&id) {
            // A member rejoining starts over: it owns nothing until it is assigned again.
            let mut member = existing.clone();
            self.release(&id);
            member.epoch = 0;
            member.previous_epoch = -1;
            member.state = MemberState::Stable;
            member.assigned.clear();
            member.pending_revocation.clear();
            member.revocation_deadline = None;
            return Ok((member, Arrival::Rejoining));
        }
        if self.members.len() >= cx.config.consumer_max_size {
            return Err((
                ErrorCode::GroupMaxSizeReached,
                format!(
                    "The consumer group has reached its maximum capacity of {} members.",
                    cx.config.consumer_max_size
                ),
            ));
        }
        Ok((ConsumerMember::new(id, cx.now, cx.config), Arrival::New))
    }

    /// The member sending a positive epoch, checked against its current one: a member
    /// one epoch behind is accepted if it owns no more than it is assigned (the answer
    /// bumping it may have been lost).
    fn existing_member(
        &self,
        request: &ConsumerGroupHeartbeatRequest,
        owned: Option<&Assignment>,
    ) -> Result<ConsumerMember, Refusal> {
        let Some(member) = self.members.get(&request.member_id) else {
            return Err(unknown_member(&request.member_id));
        };
        if let Some(instance) = &request.instance_id {
            match self.instances.get(instance) {
                Some(current) if *current == request.member_id => {}
                Some(_) => {
                    return Err((
                        ErrorCode::FencedInstanceId,
                        format!("Instance id {instance} belongs to another member."),
                    ));
                }
                None => return Err(unknown_member(&request.member_id)),
            }
        }
        let epoch = request.member_epoch;
        let fenced = epoch > member.epoch
            || (epoch < member.epoch
                && (epoch != member.previous_epoch
                    || !owned.is_some_and(|o| is_subset(o, &member.assigned))));
        if fenced {
            return Err((
                ErrorCode::FencedMemberEpoch,
                format!(
                    "The member epoch {epoch} of {} does not match its current epoch {}.",
                    member.id, member.epoch
                ),
            ));
        }
        Ok(member.clone())
    }

    fn leave(
        &mut self,
        cx: &mut Context<'_>,
        request: &ConsumerGroupHeartbeatRequest,
    ) -> Result<ConsumerGroupHeartbeatResponse, Refusal> {
        let id = request.member_id.clone();
        if !self.members.contains_key(&id) {
            return Err(unknown_member(&id));
        }
        if let Some(instance) = &request.instance_id
            && self.instances.get(instance) != Some(&id)
        {
            return Err((
                ErrorCode::FencedInstanceId,
                format!("Instance id {instance} belongs to another member."),
            ));
        }
        let epoch = if request.member_epoch == STATIC_LEAVE_EPOCH {
            if let Some(member) = self.members.get_mut(&id) {
                if member.epoch != STATIC_LEAVE_EPOCH {
                    member.previous_epoch = member.epoch;
                }
                member.epoch = STATIC_LEAVE_EPOCH;
                cx.records.push(assignment_record(cx.group_id, member));
            }
            STATIC_LEAVE_EPOCH
        } else {
            self.remove_member(cx.group_id, &id, cx.now, cx.records);
            LEAVE_EPOCH
        };
        Ok(ConsumerGroupHeartbeatResponse {
            member_id: Some(id),
            member_epoch: epoch,
            heartbeat_interval_ms: cx.config.consumer_heartbeat_interval_ms,
            ..ConsumerGroupHeartbeatResponse::default()
        })
    }

    /// Moves a static member's place (target, owned partitions) to its new member ID.
    fn replace(&mut self, cx: &mut Context<'_>, old: &str, new: &str) {
        self.members.remove(old);
        cx.records.extend(member_tombstones(cx.group_id, old));
        if let Some(target) = self.target.remove(old) {
            cx.records.push(target_record(cx.group_id, new, &target));
            self.target.insert(new.to_string(), target);
        }
        for owner in self.owners.values_mut() {
            if owner == old {
                *owner = new.to_string();
            }
        }
    }

    /// Removes a member (it left, or was fenced) and moves the group epoch.
    pub fn remove_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        now: i64,
        records: &mut Vec<GroupRecord>,
    ) {
        if self.forget(member_id, now) {
            records.extend(member_tombstones(group_id, member_id));
            self.bump(group_id, records);
        }
    }

    /// Drops a member with its instance, target and partitions; whether it was there.
    fn forget(&mut self, member_id: &str, now: i64) -> bool {
        let Some(member) = self.members.remove(member_id) else {
            return false;
        };
        if let Some(instance) = &member.instance_id
            && self.instances.get(instance).map(String::as_str) == Some(member_id)
        {
            self.instances.remove(instance);
        }
        self.target.remove(member_id);
        self.release(member_id);
        if self.members.is_empty() {
            self.empty_since = now;
        }
        true
    }

    /// Every partition `member_id` owns becomes free.
    fn release(&mut self, member_id: &str) {
        self.owners.retain(|_, owner| owner != member_id);
    }

    fn bump(&mut self, group_id: &str, records: &mut Vec<GroupRecord>) {
        self.epoch += 1;
        records.push(GroupRecord::ConsumerGroup {
            group: group_id.to_string(),
            value: Some(ConsumerGroupMetadataValue {
                epoch: self.epoch,
                metadata_hash: self.metadata_hash,
                ..ConsumerGroupMetadataValue::default()
            }),
        });
    }

    /// The existing topics some member subscribes to, with their IDs and partition counts.
    fn resolve(&self, topics: &dyn TopicSource) -> BTreeMap<String, (Uuid, i32)> {
        let mut names: BTreeSet<String> = self
            .members
            .values()
            .flat_map(|m| m.topic_names.iter().cloned())
            .collect();
        if self.members.values().any(|m| m.regex.is_some()) {
            names.extend(
                topics
                    .topic_names()
                    .into_iter()
                    .filter(|name| self.subscribes_to(name)),
            );
        }
        names
            .into_iter()
            .filter_map(|name| topics.topic(&name).map(|meta| (name, meta)))
            .collect()
    }

    fn compute_target(&mut self, cx: &mut Context<'_>, resolved: &BTreeMap<String, (Uuid, i32)>) {
        let assignor = self.assignor(cx.config);
        let partitions: BTreeMap<Uuid, i32> = resolved.values().copied().collect();
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .map(|m| MemberSpec {
                id: &m.id,
                topics: resolved
                    .iter()
                    .filter(|(name, _)| m.subscribes_to(name))
                    .map(|(_, (id, _))| *id)
                    .collect(),
                current: self.target.get(&m.id),
            })
            .collect();
        let target = assign::assign(&assignor, &specs, &partitions);
        for (member, assignment) in &target {
            if self.target.get(member) != Some(assignment) {
                cx.records
                    .push(target_record(cx.group_id, member, assignment));
            }
        }
        self.target = target;
        self.assignment_epoch = self.epoch;
        cx.records.push(GroupRecord::TargetEpoch {
            group: cx.group_id.to_string(),
            value: Some(ConsumerGroupTargetAssignmentMetadataValue {
                assignment_epoch: self.assignment_epoch,
                ..ConsumerGroupTargetAssignmentMetadataValue::default()
            }),
        });
    }

    /// Moves a member toward its target assignment (Kafka's reconciliation). `owned` is
    /// what the member reported owning, when it did. Returns whether the member changed.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: i64) -> bool {
        let Some(mut member) = self.members.get(member_id).cloned() else {
            return false;
        };
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let target_epoch = self.assignment_epoch;
        match member.state {
            MemberState::UnrevokedPartitions => {
                // Done once the member reports owning none of the revoked partitions.
                match owned {
                    Some(owned) if !intersects(owned, &member.pending_revocation) => {
                        member.pending_revocation.clear();
                        member.revocation_deadline = None;
                    }
                    _ => return false,
                }
            }
            MemberState::Stable if member.epoch == target_epoch => return false,
            MemberState::Stable | MemberState::UnreleasedPartitions => {}
        }
        let mut keep = Assignment::new();
        let mut revoke = Assignment::new();
        for (topic, ps) in &member.assigned {
            for &p in ps {
                let stays = target.get(topic).is_some_and(|t| t.contains(&p));
                let set = if stays { &mut keep } else { &mut revoke };
                set.entry(*topic).or_default().insert(p);
            }
        }
        let still_owned = owned.is_none_or(|o| intersects(o, &revoke));
        if !revoke.is_empty() && still_owned {
            member.state = MemberState::UnrevokedPartitions;
            member.assigned = keep;
            member.pending_revocation = revoke;
            member.revocation_deadline = Some(now + i64::from(member.rebalance_timeout_ms.max(0)));
        } else {
            let mut unreleased = false;
            for (topic, p) in partitions(&target) {
                let free = self.owners.get(&(topic, p)).is_none_or(|o| o == member_id);
                if free {
                    keep.entry(topic).or_default().insert(p);
                } else {
                    unreleased = true;
                }
            }
            if member.epoch != target_epoch {
                member.previous_epoch = member.epoch;
                member.epoch = target_epoch;
            }
            member.assigned = keep;
            member.pending_revocation.clear();
            member.state = if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            };
        }
        let Some(current) = self.members.get_mut(member_id) else {
            return false;
        };
        let changed = current.epoch != member.epoch
            || current.state != member.state
            || current.assigned != member.assigned
            || current.pending_revocation != member.pending_revocation;
        for tp in current.owned() {
            self.owners.remove(&tp);
        }
        for tp in member.owned() {
            self.owners.insert(tp, member_id.to_string());
        }
        *current = member;
        changed
    }

    // ---- time ----

    /// Fences members whose session lapsed or who did not revoke within their rebalance
    /// timeout.
    pub fn tick(&mut self, group_id: &str, now: i64, records: &mut Vec<GroupRecord>) {
        let lapsed: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.session_deadline <= now || m.revocation_deadline.is_some_and(|d| d <= now)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in lapsed {
            self.remove_member(group_id, &id, now, records);
        }
    }

    // ---- loading ----

    /// Applies a stored record of this group (the group epoch record is the caller's).
    pub fn replay(&mut self, record: GroupRecord, now: i64, config: &GroupConfig) {
        match record {
            GroupRecord::ConsumerGroup {
                value: Some(value), ..
            } => {
                self.epoch = value.epoch;
                self.metadata_hash = value.metadata_hash;
            }
            GroupRecord::ConsumerMember { member, value, .. } => match value {
                Some(value) => {
                    let m = self
                        .members
                        .entry(member.clone())
                        .or_insert_with(|| ConsumerMember::new(member.clone(), now, config));
                    m.instance_id = value.instance_id;
                    m.rack_id = value.rack_id;
                    m.client_id = value.client_id;
                    m.client_host = value.client_host;
                    m.topic_names = value.subscribed_topic_names;
                    // A stored expression compiled when it was accepted.
                    let _ = m.set_regex(value.subscribed_topic_regex);
                    m.rebalance_timeout_ms = value.rebalance_timeout_ms;
                    m.server_assignor = value.server_assignor;
                    if let Some(instance) = &m.instance_id {
                        self.instances.insert(instance.clone(), member);
                    }
                }
                None => {
                    self.forget(&member, now);
                }
            },
            GroupRecord::TargetEpoch {
                value: Some(value), ..
            } => self.assignment_epoch = value.assignment_epoch,
            GroupRecord::TargetMember { member, value, .. } => match value {
                Some(value) => {
                    let topics = value.topic_partitions.into_iter();
                    let assignment = collect(topics.map(|t| (t.topic_id, t.partitions)));
                    self.target.insert(member, assignment);
                }
                None => {
                    self.target.remove(&member);
                }
            },
            GroupRecord::CurrentAssignment {
                member,
                value: Some(value),
                ..
            } => {
                let Some(m) = self.members.get_mut(&member) else {
                    return;
                };
                for tp in m.owned() {
                    self.owners.remove(&tp);
                }
                m.epoch = value.member_epoch;
                m.previous_epoch = value.previous_member_epoch;
                m.state = MemberState::from_stored(value.state);
                m.assigned = from_stored(value.assigned_partitions);
                m.pending_revocation = from_stored(value.partitions_pending_revocation);
                if m.state == MemberState::UnrevokedPartitions {
                    m.revocation_deadline = Some(now + i64::from(m.rebalance_timeout_ms.max(0)));
                }
                for tp in m.owned() {
                    self.owners.insert(tp, member.clone());
                }
            }
            _ => {}
        }
    }

    /// The records that remove the group (its members must be gone).
    pub fn tombstones(&self, group_id: &str) -> Vec<GroupRecord> {
        let mut records = Vec::new();
        for member in self.members.keys() {
            records.extend(member_tombstones(group_id, member));
        }
        records.push(GroupRecord::TargetEpoch {
            group: group_id.to_string(),
            value: None,
        });
        records.push(GroupRecord::ConsumerGroup {
            group: group_id.to_string(),
            value: None,
        });
        records
    }

    // ---- administration ----

    /// ConsumerGroupDescribe's view of the group.
    pub fn describe(
        &self,
        group_id: &str,
        config: &GroupConfig,
        topics: &dyn TopicSource,
    ) -> DescribedGroup {
        let describe = |assignment: &Assignment| DescribedAssignment {
            topic_partitions: lists(assignment, |topic_id, partitions| DescribedPartitions {
                topic_id,
                topic_name: topics.topic_name(&topic_id).unwrap_or_default(),
                partitions,
                ..DescribedPartitions::default()
            }),
            ..DescribedAssignment::default()
        };
        DescribedGroup {
            group_id: group_id.to_string(),
            group_state: self.state_name().to_string(),
            group_epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            assignor_name: self.assignor(config),
            members: self
                .members
                .values()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.topic_names.clone(),
                    subscribed_topic_regex: m.topic_regex.clone(),
                    assignment: describe(&m.assigned),
                    target_assignment: describe(
                        self.target.get(&m.id).unwrap_or(&Assignment::new()),
                    ),
                    // A member of the consumer protocol.
                    member_type: 1,
                    ..DescribedMember::default()
                })
                .collect(),
            ..DescribedGroup::default()
        }
    }
}

/// How a member came to send epoch 0.
enum Arrival {
    New,
    Rejoining,
    /// A static member's new incarnation; the old member ID.
    Replacing(String),
    /// Not joining: a heartbeat of a known member.
    Known,
}

fn unknown_member(member_id: &str) -> Refusal {
    (
        ErrorCode::UnknownMemberId,
        format!("Member {member_id} is not a member of the group."),
    )
}

/// A hash of topic names, IDs and partition counts (FNV-1a): it changes when a subscribed
/// topic appears, disappears, is recreated or grows.
fn metadata_hash(resolved: &BTreeMap<String, (Uuid, i32)>) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, (id, count)) in resolved {
        feed(name.as_bytes());
        feed(&[0]);
        feed(&id.0);
        feed(&count.to_be_bytes());
    }
    hash as i64
}

/// An assignment from topic IDs with their partitions (as the protocol and records list
/// them).
fn collect(topics: impl Iterator<Item = (Uuid, Vec<i32>)>) -> Assignment {
    let mut assignment = Assignment::new();
    for (topic, partitions) in topics {
        assignment.entry(topic).or_default().extend(partitions);
    }
    assignment
}

/// The assignment's topics that have partitions, each listed by `make`.
fn lists<T>(assignment: &Assignment, make: impl Fn(Uuid, Vec<i32>) -> T) -> Vec<T> {
    assignment
        .iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(topic, ps)| make(*topic, ps.iter().copied().collect()))
        .collect()
}

fn from_stored(topics: Vec<StoredPartitions>) -> Assignment {
    collect(topics.into_iter().map(|t| (t.topic_id, t.partitions)))
}

fn to_stored(assignment: &Assignment) -> Vec<StoredPartitions> {
    lists(assignment, |topic_id, partitions| StoredPartitions {
        topic_id,
        partitions,
        ..StoredPartitions::default()
    })
}

fn member_record(group_id: &str, m: &ConsumerMember) -> GroupRecord {
    GroupRecord::ConsumerMember {
        group: group_id.to_string(),
        member: m.id.clone(),
        value: Some(ConsumerGroupMemberMetadataValue {
            instance_id: m.instance_id.clone(),
            rack_id: m.rack_id.clone(),
            client_id: m.client_id.clone(),
            client_host: m.client_host.clone(),
            subscribed_topic_names: m.topic_names.clone(),
            subscribed_topic_regex: m.topic_regex.clone(),
            rebalance_timeout_ms: m.rebalance_timeout_ms,
            server_assignor: m.server_assignor.clone(),
            ..ConsumerGroupMemberMetadataValue::default()
        }),
    }
}

fn assignment_record(group_id: &str, m: &ConsumerMember) -> GroupRecord {
    GroupRecord::CurrentAssignment {
        group: group_id.to_string(),
        member: m.id.clone(),
        value: Some(ConsumerGroupCurrentMemberAssignmentValue {
            member_epoch: m.epoch,
            previous_member_epoch: m.previous_epoch,
            state: m.state as i8,
            assigned_partitions: to_stored(&m.assigned),
            partitions_pending_revocation: to_stored(&m.pending_revocation),
            ..ConsumerGroupCurrentMemberAssignmentValue::default()
        }),
    }
}

fn target_record(group_id: &str, member_id: &str, assignment: &Assignment) -> GroupRecord {
    GroupRecord::TargetMember {
        group: group_id.to_string(),
        member: member_id.to_string(),
        value: Some(ConsumerGroupTargetAssignmentMemberValue {
            topic_partitions: lists(assignment, |topic_id, partitions| TargetPartitions {
                topic_id,
                partitions,
                ..TargetPartitions::default()
            }),
            ..ConsumerGroupTargetAssignmentMemberValue::default()
        }),
    }
}

/// A member's records removed, in Kafka's order: current assignment, target, metadata.
fn member_tombstones(group_id: &str, member_id: &str) -> [GroupRecord; 3] {
    [
        GroupRecord::CurrentAssignment {
            group: group_id.to_string(),
            member: member_id.to_string(),
            value: None,
        },
        GroupRecord::TargetMember {
            group: group_id.to_string(),
            member: member_id.to_string(),
            value: None,
        },
        GroupRecord::ConsumerMember {
            group: group_id.to_string(),
            member: member_id.to_string(),
            value: None,
        },
    ]
}

#[cfg(test)]
#[path = "consumer_tests.rs"]
mod tests;
