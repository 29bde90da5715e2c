//! The groups of one `__consumer_offsets` partition as a state machine: requests and the
//! passage of time come in (with the time as an argument), records to append and
//! responses come out ([`Effects`]). Nothing here touches a socket, a clock or a file.
//!
//! Classic groups follow Kafka's states: Empty → PreparingRebalance (members join; a new
//! group first waits `group.initial.rebalance.delay.ms` for more) → CompletingRebalance
//! (the leader computes the assignment) → Stable, and back to PreparingRebalance whenever
//! a member joins, leaves, changes its subscription or misses its session timeout. A
//! group deleted or expired is Dead: it is removed. JoinGroup and SyncGroup park until the
//! phase they wait for completes; their answers come out as [`Parked`] responses under
//! the token the caller gave.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use spool_protocol::internal::group_metadata_value::MemberMetadata;
use spool_protocol::internal::{
    ConsumerProtocolSubscription, GroupMetadataValue, OffsetCommitValue,
};
use spool_protocol::messages::consumer_group_describe_response::DescribedGroup as DescribedConsumerGroup;
use spool_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use spool_protocol::messages::join_group_response::JoinGroupResponseMember;
use spool_protocol::messages::leave_group_response::MemberResponse;
use spool_protocol::messages::list_groups_response::ListedGroup;
use spool_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use spool_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use spool_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use spool_protocol::{ErrorCode, Message, Uuid};

mod txn_offsets;

use super::consumer::{self, ConsumerGroup, TopicSource};
use super::{GroupConfig, GroupRecord};

/// A group's committed offsets by topic: each partition with its offset, if any.
pub type TopicOffsets = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// Identifies a parked request (a JoinGroup or SyncGroup waiting for its phase).
pub type Token = u64;

/// The answer to a parked request.
#[derive(Debug, Clone, PartialEq)]
pub enum Parked {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
}

/// What a step produced: records to append (in order) and parked requests answered. The
/// answers may be sent only once the records are durable.
#[derive(Debug, Default)]
pub struct Effects {
    pub records: Vec<GroupRecord>,
    /// Records to write in a producer's transactional batch (TxnOffsetCommit).
    pub txn_records: Vec<TxnRecords>,
    pub completed: Vec<(Token, Parked)>,
}

/// Offset records a transactional producer committed, written in its batch.
#[derive(Debug)]
pub struct TxnRecords {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub records: Vec<GroupRecord>,
}

/// Offsets committed in open transactions, by producer: (group, topic, partition).
type PendingOffsets = BTreeMap<(String, String, i32), Committed>;

/// Who sent a request: the client ID from its header and the address it came from.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// The name of the state of a group that does not exist.
pub const DEAD: &str = "Dead";

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Set by OffsetCommit v2–4's retention time; otherwise the group's state decides.
    pub expire_timestamp: Option<i64>,
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    /// The protocols the member supports, in its order of preference, with their metadata.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    awaiting_join: Option<Token>,
    awaiting_sync: Option<Token>,
    /// Whether the member sent SyncGroup for the current generation.
    synced: bool,
    session_deadline: i64,
}

impl Member {
    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(name, _)| name == p))
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    state: GroupState,
    /// When the group entered its state (Kafka's `current_state_timestamp`).
    state_since: i64,
    /// `None` for a group that only stores offsets (a "simple" group).
    protocol_type: Option<String>,
    generation: i32,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Static members: `group.instance.id` → member ID.
    instances: HashMap<String, String>,
    /// Member IDs handed out with MEMBER_ID_REQUIRED, and when they lapse unused.
    pending: HashMap<String, i64>,
    /// PreparingRebalance: when the join phase ends even if members are missing.
    /// CompletingRebalance and Stable: when members that have not synced are removed.
    phase_deadline: i64,
    /// A new group's initial delay, extended as members arrive: the join phase does not
    /// complete before it.
    initial_delay_until: Option<i64>,
    offsets: BTreeMap<(String, i32), Committed>,
    /// Set for a consumer group (the KIP-848 protocol); the classic fields are then unused.
    consumer: Option<ConsumerGroup>,
}

impl Group {
    fn new(id: &str, now: i64) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            state_since: now,
            protocol_type: None,
            generation: 0,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            instances: HashMap::new(),
            pending: HashMap::new(),
            phase_deadline: i64::MAX,
            initial_delay_until: None,
            offsets: BTreeMap::new(),
            consumer: None,
        }
    }

    /// Drops the classic group's membership (its metadata was removed or the group
    /// became a consumer group); the offsets stay.
    fn clear_classic(&mut self) {
        self.state = GroupState::Empty;
        self.protocol_type = None;
        self.generation = 0;
        self.protocol = None;
        self.leader = None;
        self.members.clear();
        self.instances.clear();
        self.pending.clear();
    }

    /// Nothing left to keep: no classic or consumer membership and no offsets.
    fn is_vacant(&self) -> bool {
        self.protocol_type.is_none() && self.consumer.is_none() && self.offsets.is_empty()
    }

    /// Whether members of the group subscribe to `topic` (unknown counts as yes).
    fn subscribes_to(&self, topic: &str) -> bool {
        match &self.consumer {
            Some(consumer) => consumer.subscribes_to(topic),
            None if self.state == GroupState::Empty => false,
            None => self
                .subscribed_topics()
                .is_none_or(|topics| topics.iter().any(|t| t == topic)),
        }
    }

    fn transition(&mut self, state: GroupState, now: i64) {
        self.state = state;
        self.state_since = now;
    }

    fn is_full(&self, config: &GroupConfig) -> bool {
        self.members.len() + self.pending.len() >= config.max_size
    }

    /// Whether a member with these protocols may join: an empty group takes any; otherwise
    /// the protocol type must match and one protocol must be common to every member.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.state == GroupState::Empty || self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect();
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name.as_str()))
                && let Some(vote) = votes.iter_mut().find(|(c, _)| c == name)
            {
                vote.1 += 1;
            }
        }
        // The first candidate among those with the most votes.
        let most = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .into_iter()
            .find(|(_, n)| *n == most)
            .map(|(name, _)| name.to_string())
    }

    fn metadata_record(&self) -> GroupRecord {
        GroupRecord::Group {
            group: self.id.clone(),
            value: Some(GroupMetadataValue {
                protocol_type: self.protocol_type.clone().unwrap_or_default(),
                generation: self.generation,
                protocol: self.protocol.clone(),
                leader: self.leader.clone(),
                current_state_timestamp: self.state_since,
                members: self
                    .members
                    .values()
                    .map(|m| MemberMetadata {
                        member_id: m.id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        rebalance_timeout: m.rebalance_timeout_ms,
                        session_timeout: m.session_timeout_ms,
                        subscription: m.metadata(self.protocol.as_deref()),
                        assignment: m.assignment.clone(),
                        ..MemberMetadata::default()
                    })
                    .collect(),
                ..GroupMetadataValue::default()
            }),
        }
    }

    /// The JoinGroup answer for `member_id` in the current generation; the leader gets
    /// every member's metadata.
    fn join_response(&self, member_id: &str, skip_assignment: bool) -> JoinGroupResponse {
        let is_leader = self.leader.as_deref() == Some(member_id);
        JoinGroupResponse {
            error_code: ErrorCode::None.code(),
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment: is_leader && skip_assignment,
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| JoinGroupResponseMember {
                        member_id: m.id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        metadata: m.metadata(self.protocol.as_deref()),
                        ..JoinGroupResponseMember::default()
                    })
                    .collect()
            } else {
                Vec::new()
            },
            ..JoinGroupResponse::default()
        }
    }

    /// The topics the members subscribe to, when the group uses the consumer protocol and
    /// every subscription decodes; `None` when unknown.
    fn subscribed_topics(&self) -> Option<Vec<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let mut topics = Vec::new();
        for member in self.members.values() {
            let subscription = ConsumerProtocolSubscription::from_versioned_bytes_newest(
                member.metadata(self.protocol.as_deref()),
            )
            .ok()?;
            topics.extend(subscription.topics);
        }
        Some(topics)
    }
}

fn join_error(member_id: &str, error: ErrorCode) -> JoinGroupResponse {
    JoinGroupResponse {
        error_code: error.code(),
        generation_id: -1,
        member_id: member_id.to_string(),
        ..JoinGroupResponse::default()
    }
}

/// Why a JoinGroup is answered at once with an error, and the member ID to answer with.
struct JoinRefusal {
    member_id: String,
    error: ErrorCode,
}

impl JoinRefusal {
    fn new(member_id: &str, error: ErrorCode) -> JoinRefusal {
        JoinRefusal {
            member_id: member_id.to_string(),
            error,
        }
    }
}

fn sync_error(error: ErrorCode) -> SyncGroupResponse {
    SyncGroupResponse {
        error_code: error.code(),
        ..SyncGroupResponse::default()
    }
}

/// The groups of one `__consumer_offsets` partition.
pub struct Shard {
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
    new_uuid: Box<dyn FnMut() -> Uuid + Send>,
    effects: Effects,
    next_offset_check: i64,
    /// Offsets of open transactions, by producer ID.
    pending_txn: HashMap<i64, PendingOffsets>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl Shard {
    /// An empty shard; `new_uuid` makes member IDs unique.
    pub fn new(config: GroupConfig, new_uuid: Box<dyn FnMut() -> Uuid + Send>) -> Shard {
        Shard {
            config,
            groups: BTreeMap::new(),
            new_uuid,
            effects: Effects::default(),
            next_offset_check: i64::MIN,
            pending_txn: HashMap::new(),
        }
    }

    /// What the steps since the last call produced.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    fn complete(&mut self, token: Option<Token>, answer: Parked) {
        if let Some(token) = token {
            self.effects.completed.push((token, answer));
        }
    }

    // ---- loading ----

    /// Applies one stored record while loading the partition.
    pub fn replay(&mut self, record: GroupRecord, now: i64) {
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(value) => {
                    let expire = (value.expire_timestamp >= 0).then_some(value.expire_timestamp);
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, now))
                        .offsets
                        .insert(
                            (topic, partition),
                            Committed {
                                offset: value.offset,
                                leader_epoch: value.leader_epoch,
                                metadata: value.metadata,
                                commit_timestamp: value.commit_timestamp,
                                expire_timestamp: expire,
                            },
                        );
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                        if g.is_vacant() {
                            self.groups.remove(&group);
                        }
                    }
                }
            },
            GroupRecord::Group { group, value } => match value {
                Some(value) => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, now));
                    g.protocol_type = Some(value.protocol_type);
                    g.generation = value.generation;
                    g.protocol = value.protocol;
                    g.leader = value.leader;
                    g.state_since = value.current_state_timestamp;
                    g.members.clear();
                    g.instances.clear();
                    for m in value.members {
                        if let Some(instance) = &m.group_instance_id {
                            g.instances.insert(instance.clone(), m.member_id.clone());
                        }
                        g.members.insert(
                            m.member_id.clone(),
                            Member {
                                id: m.member_id,
                                instance_id: m.group_instance_id,
                                client_id: m.client_id,
                                client_host: m.client_host,
                                session_timeout_ms: m.session_timeout,
                                rebalance_timeout_ms: m.rebalance_timeout,
                                protocols: vec![(
                                    g.protocol.clone().unwrap_or_default(),
                                    m.subscription,
                                )],
                                assignment: m.assignment,
                                awaiting_join: None,
                                awaiting_sync: None,
                                synced: true,
                                session_deadline: now + i64::from(m.session_timeout),
                            },
                        );
                    }
                    g.state = if g.members.is_empty() {
                        GroupState::Empty
                    } else {
                        GroupState::Stable
                    };
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.clear_classic();
                        if g.is_vacant() {
                            self.groups.remove(&group);
                        }
                    }
                }
            },
            GroupRecord::ConsumerGroup {
                ref group,
                value: None,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.consumer = None;
                    if g.is_vacant() {
                        self.groups.remove(group);
                    }
                }
            }
            record => {
                let group = record.group().to_string();
                let tombstone = record.is_tombstone();
                let g = match self.groups.get_mut(&group) {
                    Some(g) => g,
                    None if tombstone => return,
                    None => self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, now)),
                };
                if g.consumer.is_none() && tombstone {
                    return;
                }
                g.consumer
                    .get_or_insert_with(|| ConsumerGroup::new(now))
                    .replay(record, now, &self.config);
            }
        }
    }

    // ---- classic protocol ----

    /// JoinGroup. The answer comes out under `token`, at once or when the join phase
    /// completes.
    pub fn join(
        &mut self,
        now: i64,
        token: Token,
        client: &Client,
        request: &JoinGroupRequest,
        version: i16,
    ) {
        if let Err(refusal) = self.try_join(now, token, client, request, version) {
            let answer = join_error(&refusal.member_id, refusal.error);
            self.complete(Some(token), Parked::Join(answer));
        }
    }

    fn try_join(
        &mut self,
        now: i64,
        token: Token,
        client: &Client,
        request: &JoinGroupRequest,
        version: i16,
    ) -> Result<(), JoinRefusal> {
        let member_id = request.member_id.as_str();
        let fail = |error| JoinRefusal::new(member_id, error);
        if request.group_id.is_empty() {
            return Err(fail(ErrorCode::InvalidGroupId));
        }
        if request.session_timeout_ms < self.config.min_session_timeout_ms
            || request.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return Err(fail(ErrorCode::InvalidSessionTimeout));
        }
        let protocols: Vec<(String, Bytes)> = request
            .protocols
            .iter()
            .map(|p| (p.name.clone(), p.metadata.clone()))
            .collect();
        if !self.groups.contains_key(&request.group_id) {
            if !member_id.is_empty() {
                return Err(fail(ErrorCode::UnknownMemberId));
            }
            self.groups
                .insert(request.group_id.clone(), Group::new(&request.group_id, now));
        }
        let config = self.config.clone();
        let fresh = (self.new_uuid)();
        let group = self
            .groups
            .get_mut(&request.group_id)
            .ok_or_else(|| fail(ErrorCode::UnknownMemberId))?;
        if let Some(consumer) = &group.consumer {
            if !consumer.members.is_empty() {
                return Err(fail(ErrorCode::InconsistentGroupProtocol));
            }
            // An empty consumer group becomes a classic group.
            self.effects.records.extend(consumer.tombstones(&group.id));
            group.consumer = None;
        }
        if !group.supports(&request.protocol_type, &protocols) {
            if group.members.is_empty() && group.is_vacant() {
                self.groups.remove(&request.group_id);
            }
            return Err(fail(ErrorCode::InconsistentGroupProtocol));
        }
        // Version 0 has no rebalance timeout: the session timeout serves for both.
        let rebalance_timeout_ms = if request.rebalance_timeout_ms < 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        };
        let join = Join {
            config: &config,
            now,
            token,
            client,
            request,
            rebalance_timeout_ms,
            protocols,
            version,
        };
        if member_id.is_empty() {
            join_unknown(group, &mut self.effects, join, fresh, version)
        } else {
            join_known(group, &mut self.effects, join)
        }
    }

    /// SyncGroup. The answer comes out under `token`, at once or when the leader's
    /// assignment arrives.
    pub fn sync(&mut self, now: i64, token: Token, request: &SyncGroupRequest) {
        let answer = match self.groups.get_mut(&request.group_id) {
            None => Err(ErrorCode::UnknownMemberId),
            Some(group) => sync(group, &mut self.effects, now, token, request),
        };
        if let Err(error) = answer {
            self.complete(Some(token), Parked::Sync(sync_error(error)));
        }
    }

    /// Heartbeat: keeps the member's session alive; REBALANCE_IN_PROGRESS tells it to
    /// rejoin.
    pub fn heartbeat(
        &mut self,
        now: i64,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> ErrorCode {
        let Some(group) = self.groups.get_mut(group_id) else {
            return ErrorCode::UnknownMemberId;
        };
        if let Err(error) = validate_member(group, member_id, instance_id) {
            return error;
        }
        if generation != group.generation {
            return ErrorCode::IllegalGeneration;
        }
        let state = group.state;
        if let Some(member) = group.members.get_mut(member_id) {
            member.session_deadline = now + i64::from(member.session_timeout_ms);
        }
        match state {
            GroupState::Empty => ErrorCode::UnknownMemberId,
            GroupState::PreparingRebalance => ErrorCode::RebalanceInProgress,
            GroupState::CompletingRebalance | GroupState::Stable => ErrorCode::None,
        }
    }

    /// LeaveGroup: removes each member (by member ID, or by instance ID for static
    /// members) and rebalances the rest.
    pub fn leave(
        &mut self,
        now: i64,
        request: &LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        let identities: Vec<(String, Option<String>)> = if version >= 3 {
            request
                .members
                .iter()
                .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
                .collect()
        } else {
            vec![(request.member_id.clone(), None)]
        };
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            return LeaveGroupResponse {
                error_code: ErrorCode::UnknownMemberId.code(),
                ..LeaveGroupResponse::default()
            };
        };
        let mut responses = Vec::new();
        for (member_id, instance_id) in identities {
            let error = match &instance_id {
                Some(instance) => match group.instances.get(instance).cloned() {
                    None => ErrorCode::UnknownMemberId,
                    Some(current) if !member_id.is_empty() && member_id != current => {
                        ErrorCode::FencedInstanceId
                    }
                    Some(current) => {
                        remove_member(group, &self.config, &mut self.effects, now, &current);
                        ErrorCode::None
                    }
                },
                None if group.pending.remove(&member_id).is_some() => {
                    maybe_complete_join(group, &mut self.effects, now);
                    ErrorCode::None
                }
                None if group.members.contains_key(&member_id) => {
                    remove_member(group, &self.config, &mut self.effects, now, &member_id);
                    ErrorCode::None
                }
                None => ErrorCode::UnknownMemberId,
            };
            responses.push(MemberResponse {
                member_id,
                group_instance_id: instance_id,
                error_code: error.code(),
                ..MemberResponse::default()
            });
        }
        if version >= 3 {
            LeaveGroupResponse {
                members: responses,
                ..LeaveGroupResponse::default()
            }
        } else {
            LeaveGroupResponse {
                error_code: responses.first().map_or(0, |r| r.error_code),
                ..LeaveGroupResponse::default()
            }
        }
    }

    // ---- consumer groups (KIP-848) ----

    /// ConsumerGroupHeartbeat: joins, heartbeats and leaves of consumer group members,
    /// answered at once (the records it wrote are in the effects).
    pub fn consumer_heartbeat(
        &mut self,
        now: i64,
        client: &Client,
        request: &ConsumerGroupHeartbeatRequest,
        version: i16,
        topics: &dyn TopicSource,
    ) -> ConsumerGroupHeartbeatResponse {
        let answer = self.try_consumer_heartbeat(now, client, request, version, topics);
        answer.unwrap_or_else(|(error, message)| ConsumerGroupHeartbeatResponse {
            error_code: error.code(),
            error_message: Some(message),
            ..ConsumerGroupHeartbeatResponse::default()
        })
    }

    fn try_consumer_heartbeat(
        &mut self,
        now: i64,
        client: &Client,
        request: &ConsumerGroupHeartbeatRequest,
        version: i16,
        topics: &dyn TopicSource,
    ) -> Result<ConsumerGroupHeartbeatResponse, consumer::Refusal> {
        consumer::validate(request, version, &self.config)?;
        let group_id = &request.group_id;
        let not_found = || {
            (
                ErrorCode::GroupIdNotFound,
                format!("Group {group_id} is not a consumer group."),
            )
        };
        if !self.groups.contains_key(group_id) {
            if request.member_epoch != 0 {
                return Err(not_found());
            }
            self.groups
                .insert(group_id.clone(), Group::new(group_id, now));
        }
        let group = self.groups.get_mut(group_id).ok_or_else(not_found)?;
        if group.consumer.is_none() {
            if group.state != GroupState::Empty || !group.members.is_empty() {
                return Err(not_found());
            }
            // An empty classic group (or one holding only offsets) becomes a consumer group.
            if group.protocol_type.is_some() {
                self.effects.records.push(GroupRecord::Group {
                    group: group_id.clone(),
                    value: None,
                });
                group.clear_classic();
            }
            group.consumer = Some(ConsumerGroup::new(now));
        }
        let Some(consumer_group) = group.consumer.as_mut() else {
            return Err(not_found());
        };
        let new_uuid = &mut self.new_uuid;
        let mut new_member_id = || new_uuid().to_string();
        let mut cx = consumer::Context {
            group_id,
            config: &self.config,
            now,
            client,
            topics,
            records: &mut self.effects.records,
            new_member_id: &mut new_member_id,
        };
        let answer = consumer_group.heartbeat(&mut cx, request);
        if answer.is_err() && consumer_group.members.is_empty() && consumer_group.epoch == 0 {
            // Nothing was written for a group that a refused first member would have made.
            group.consumer = None;
            if group.is_vacant() {
                self.groups.remove(group_id);
            }
        }
        answer
    }

    /// ConsumerGroupDescribe of one group: GROUP_ID_NOT_FOUND when it does not exist or
    /// is a classic group.
    pub fn describe_consumer_group(
        &self,
        group_id: &str,
        topics: &dyn TopicSource,
    ) -> DescribedConsumerGroup {
        match self.groups.get(group_id).and_then(|g| g.consumer.as_ref()) {
            Some(consumer) => consumer.describe(group_id, &self.config, topics),
            None => {
                let message = if self.groups.contains_key(group_id) {
                    format!("Group {group_id} is not a consumer group.")
                } else {
                    format!("Group {group_id} not found.")
                };
                DescribedConsumerGroup {
                    error_code: ErrorCode::GroupIdNotFound.code(),
                    error_message: Some(message),
                    group_id: group_id.to_string(),
                    group_state: DEAD.to_string(),
                    ..DescribedConsumerGroup::default()
                }
            }
        }
    }

    /// OffsetFetch v9's member check: a consumer group member fetching with its member ID
    /// and epoch must be current (UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH otherwise).
    pub fn check_fetching_member(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> Result<(), ErrorCode> {
        let Some(consumer) = self.groups.get(group_id).and_then(|g| g.consumer.as_ref()) else {
            return Ok(());
        };
        let member_id = member_id.unwrap_or_default();
        if member_id.is_empty() && member_epoch < 0 {
            return Ok(());
        }
        match consumer.members.get(member_id) {
            None => Err(ErrorCode::UnknownMemberId),
            Some(member) if member.epoch != member_epoch => Err(ErrorCode::StaleMemberEpoch),
            Some(_) => Ok(()),
        }
    }

    // ---- offsets ----

    /// OffsetCommit. `exists` tells whether a topic partition exists (others are answered
    /// UNKNOWN_TOPIC_OR_PARTITION).
    pub fn commit_offsets(
        &mut self,
        now: i64,
        request: &OffsetCommitRequest,
        version: i16,
        exists: &dyn Fn(&str, i32) -> bool,
    ) -> OffsetCommitResponse {
        let group_error = self.validate_commit(now, request, version).err();
        let config = &self.config;
        let mut topics = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let metadata = p.committed_metadata.clone().unwrap_or_default();
                let refused = refused_commit(
                    group_error,
                    exists(&topic.name, p.partition_index),
                    &metadata,
                    config,
                );
                let error = if let Some(error) = refused {
                    error
                } else {
                    let committed = Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp: now,
                        expire_timestamp: (request.retention_time_ms >= 0)
                            .then(|| now.saturating_add(request.retention_time_ms)),
                    };
                    self.effects.records.push(offset_record(
                        &request.group_id,
                        &topic.name,
                        p.partition_index,
                        &committed,
                    ));
                    if let Some(group) = self.groups.get_mut(&request.group_id) {
                        group
                            .offsets
                            .insert((topic.name.clone(), p.partition_index), committed);
                    }
                    ErrorCode::None
                };
                partitions.push(OffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code: error.code(),
                    ..OffsetCommitResponsePartition::default()
                });
            }
            topics.push(OffsetCommitResponseTopic {
                name: topic.name.clone(),
                partitions,
                ..OffsetCommitResponseTopic::default()
            });
        }
        OffsetCommitResponse {
            topics,
            ..OffsetCommitResponse::default()
        }
    }

    /// Kafka's checks of a commit's group, member and generation; a commit without a
    /// generation to a group that does not exist creates a simple (offsets-only) group.
    fn validate_commit(
        &mut self,
        now: i64,
        request: &OffsetCommitRequest,
        version: i16,
    ) -> Result<(), ErrorCode> {
        if request.group_id.is_empty() {
            return Err(ErrorCode::InvalidGroupId);
        }
        let generation = request.generation_id_or_member_epoch;
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            if generation < 0 {
                self.groups
                    .insert(request.group_id.clone(), Group::new(&request.group_id, now));
                return Ok(());
            }
            return Err(if version >= 9 {
                ErrorCode::GroupIdNotFound
            } else {
                ErrorCode::IllegalGeneration
            });
        };
        let anonymous =
            generation < 0 && request.member_id.is_empty() && request.group_instance_id.is_none();
        if let Some(consumer) = &group.consumer {
            // Kafka's checks for a consumer group: an anonymous commit only while it is
            // empty; a member's commit with its current member epoch (OffsetCommit v9+).
            if generation < 0 && request.member_id.is_empty() {
                return if consumer.members.is_empty() {
                    Ok(())
                } else {
                    Err(ErrorCode::UnknownMemberId)
                };
            }
            let Some(member) = consumer.members.get(&request.member_id) else {
                return Err(ErrorCode::UnknownMemberId);
            };
            if version < 9 {
                return Err(ErrorCode::UnsupportedVersion);
            }
            if generation != member.epoch {
                return Err(ErrorCode::StaleMemberEpoch);
            }
            return Ok(());
        }
        if anonymous {
            if group.state != GroupState::Empty {
                return Err(ErrorCode::UnknownMemberId);
            }
            return Ok(());
        }
        validate_member(
            group,
            &request.member_id,
            request.group_instance_id.as_deref(),
        )?;
        if generation != group.generation {
            return Err(ErrorCode::IllegalGeneration);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(ErrorCode::RebalanceInProgress);
        }
        if let Some(member) = group.members.get_mut(&request.member_id) {
            member.session_deadline = now + i64::from(member.session_timeout_ms);
        }
        Ok(())
    }

    /// The committed offsets of `group_id`: of the partitions asked for (`None` for every
    /// partition with an offset), each with its offset if there is one.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> TopicOffsets {
        let group = self.groups.get(group_id);
        match topics {
            Some(topics) => topics
                .iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .iter()
                        .map(|&p| {
                            let committed = group
                                .and_then(|g| g.offsets.get(&(topic.clone(), p)))
                                .cloned();
                            (p, committed)
                        })
                        .collect();
                    (topic.clone(), found)
                })
                .collect(),
            None => {
                let mut by_topic: TopicOffsets = Vec::new();
                for ((topic, partition), committed) in group.iter().flat_map(|g| &g.offsets) {
                    match by_topic.last_mut() {
                        Some((t, partitions)) if t == topic => {
                            partitions.push((*partition, Some(committed.clone())))
                        }
                        _ => by_topic
                            .push((topic.clone(), vec![(*partition, Some(committed.clone()))])),
                    }
                }
                by_topic
            }
        }
    }

    /// OffsetDelete: removes committed offsets of topics the group does not subscribe to.
    pub fn delete_offsets(&mut self, request: &OffsetDeleteRequest) -> OffsetDeleteResponse {
        let error = |error: ErrorCode| OffsetDeleteResponse {
            error_code: error.code(),
            ..OffsetDeleteResponse::default()
        };
        if request.group_id.is_empty() {
            return error(ErrorCode::InvalidGroupId);
        }
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            return error(ErrorCode::GroupIdNotFound);
        };
        let mut topics = Vec::new();
        for topic in &request.topics {
            let subscribed = group.subscribes_to(&topic.name);
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let error = if subscribed {
                        ErrorCode::GroupSubscribedToTopic
                    } else {
                        let key = (topic.name.clone(), p.partition_index);
                        if group.offsets.remove(&key).is_some() {
                            self.effects.records.push(GroupRecord::Offset {
                                group: group.id.clone(),
                                topic: key.0,
                                partition: key.1,
                                value: None,
                            });
                        }
                        ErrorCode::None
                    };
                    OffsetDeleteResponsePartition {
                        partition_index: p.partition_index,
                        error_code: error.code(),
                    }
                })
                .collect();
            topics.push(OffsetDeleteResponseTopic {
                name: topic.name.clone(),
                partitions,
            });
        }
        OffsetDeleteResponse {
            topics,
            ..OffsetDeleteResponse::default()
        }
    }

    // ---- administration ----

    /// ListGroups, filtered by state and type names (case-insensitive; empty filters
    /// match every group).
    pub fn list_groups(&self, states: &[String], types: &[String]) -> Vec<ListedGroup> {
        let matches = |filter: &[String], value: &str| {
            filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
        };
        self.groups
            .values()
            .map(|g| match &g.consumer {
                Some(consumer) => (g, "consumer", consumer.state_name(), "consumer"),
                None => {
                    let protocol_type = g.protocol_type.as_deref().unwrap_or_default();
                    (g, "classic", g.state.name(), protocol_type)
                }
            })
            .filter(|(_, kind, state, _)| matches(states, state) && matches(types, kind))
            .map(|(g, kind, state, protocol_type)| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: protocol_type.to_string(),
                group_state: state.to_string(),
                group_type: kind.to_string(),
                ..ListedGroup::default()
            })
            .collect()
    }

    /// DescribeGroups for one group; `None` when it does not exist.
    pub fn describe_group(&self, group_id: &str) -> Option<DescribedGroup> {
        let group = self.groups.get(group_id)?;
        if group.consumer.is_some() {
            return Some(DescribedGroup {
                error_code: ErrorCode::GroupIdNotFound.code(),
                error_message: Some(format!("Group {group_id} is not a classic group.")),
                group_id: group_id.to_string(),
                group_state: DEAD.to_string(),
                ..DescribedGroup::default()
            });
        }
        let stable = group.state == GroupState::Stable;
        Some(DescribedGroup {
            error_code: ErrorCode::None.code(),
            group_id: group.id.clone(),
            group_state: group.state.name().to_string(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            // Kafka shows the protocol, metadata and assignments only of a stable group.
            protocol_data: if stable {
                group.protocol.clone().unwrap_or_default()
            } else {
                String::new()
            },
            members: group
                .members
                .values()
                .map(|m| DescribedGroupMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    member_metadata: if stable {
                        m.metadata(group.protocol.as_deref())
                    } else {
                        Bytes::new()
                    },
                    member_assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                    ..DescribedGroupMember::default()
                })
                .collect(),
            ..DescribedGroup::default()
        })
    }

    /// DeleteGroups for one group: only an empty group can go, with its offsets.
    pub fn delete_group(&mut self, group_id: &str) -> ErrorCode {
        if group_id.is_empty() {
            return ErrorCode::InvalidGroupId;
        }
        let Some(group) = self.groups.get(group_id) else {
            return ErrorCode::GroupIdNotFound;
        };
        let has_members = group
            .consumer
            .as_ref()
            .is_some_and(|c| !c.members.is_empty());
        if group.state != GroupState::Empty || has_members {
            return ErrorCode::NonEmptyGroup;
        }
        if let Some(group) = self.groups.remove(group_id) {
            self.effects.records.extend(remove_group_records(&group));
        }
        ErrorCode::None
    }

    /// The committed offsets of a group (for lag), or `None` when the group does not exist.
    pub fn committed(&self, group_id: &str) -> Option<Vec<((String, i32), i64)>> {
        self.groups.get(group_id).map(|g| {
            g.offsets
                .iter()
                .map(|(tp, c)| (tp.clone(), c.offset))
                .collect()
        })
    }

    /// The state of a group, `None` when it does not exist.
    pub fn state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    pub fn group_ids(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    // ---- time ----

    /// Moves time to `now`: ends initial delays and join phases, removes members whose
    /// session lapsed or who never synced, and expires offsets.
    pub fn tick(&mut self, now: i64) {
        let config = self.config.clone();
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            match &mut group.consumer {
                Some(consumer) => consumer.tick(&id, now, &mut self.effects.records),
                None => tick_group(group, &config, &mut self.effects, now),
            }
        }
        if now >= self.next_offset_check {
            self.next_offset_check = now.saturating_add(config.offsets_retention_check_interval_ms);
            self.expire_offsets(now);
        }
    }

    /// Removes offsets past their retention (Kafka's KIP-211 rules) and then groups left
    /// empty with no offsets.
    pub fn expire_offsets(&mut self, now: i64) {
        let retention = self.config.offsets_retention_ms;
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            let unsubscribed: Option<Vec<String>> = match (group.state, &group.protocol_type) {
                (GroupState::Stable, Some(_)) => group.subscribed_topics(),
                _ => None,
            };
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|((topic, _), c)| {
                    let base = match (&group.consumer, group.state, &group.protocol_type) {
                        // An empty consumer group's offsets age from when it became empty;
                        // a consumer group with members loses only topics it stopped
                        // reading.
                        (Some(consumer), _, _) if consumer.members.is_empty() => {
                            consumer.empty_since
                        }
                        (Some(consumer), _, _) if consumer.subscribes_to(topic) => return false,
                        (Some(_), _, _) => c.commit_timestamp,
                        // An empty group's offsets age from when it became empty.
                        (None, GroupState::Empty, Some(_)) => group.state_since,
                        // A simple group's offsets age from their commit.
                        (None, GroupState::Empty, None) => c.commit_timestamp,
                        // A stable consumer group loses only topics it stopped reading.
                        (None, GroupState::Stable, Some(_)) => match &unsubscribed {
                            Some(topics) if !topics.contains(topic) => c.commit_timestamp,
                            _ => return false,
                        },
                        _ => return false,
                    };
                    match c.expire_timestamp {
                        Some(expire) => now >= expire,
                        None => base.saturating_add(retention) <= now,
                    }
                })
                .map(|(tp, _)| tp.clone())
                .collect();
            for (topic, partition) in expired {
                group.offsets.remove(&(topic.clone(), partition));
                self.effects.records.push(GroupRecord::Offset {
                    group: group.id.clone(),
                    topic,
                    partition,
                    value: None,
                });
            }
            let no_members = group.consumer.as_ref().is_none_or(|c| c.members.is_empty());
            if group.state == GroupState::Empty
                && no_members
                && group.offsets.is_empty()
                && group.pending.is_empty()
            {
                dead.push(group.id.clone());
            }
        }
        for id in dead {
            if let Some(group) = self.groups.remove(&id)
                && (group.protocol_type.is_some() || group.consumer.is_some())
            {
                self.effects.records.extend(remove_group_records(&group));
            }
        }
    }
}

/// Why one partition's commit (plain or transactional) is refused, if it is: the group's
/// error, a partition that does not exist, or metadata over `offset.metadata.max.bytes`.
fn refused_commit(
    group_error: Option<ErrorCode>,
    exists: bool,
    metadata: &str,
    config: &GroupConfig,
) -> Option<ErrorCode> {
    if group_error.is_some() {
        group_error
    } else if !exists {
        Some(ErrorCode::UnknownTopicOrPartition)
    } else if metadata.len() > config.offset_metadata_max_bytes {
        Some(ErrorCode::OffsetMetadataTooLarge)
    } else {
        None
    }
}

fn offset_record(group: &str, topic: &str, partition: i32, c: &Committed) -> GroupRecord {
    GroupRecord::Offset {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
        value: Some(OffsetCommitValue {
            offset: c.offset,
            leader_epoch: c.leader_epoch,
            metadata: c.metadata.clone(),
            commit_timestamp: c.commit_timestamp,
            expire_timestamp: c.expire_timestamp.unwrap_or(-1),
            ..OffsetCommitValue::default()
        }),
    }
}

fn remove_group_records(group: &Group) -> Vec<GroupRecord> {
    let mut records: Vec<GroupRecord> = group
        .offsets
        .keys()
        .map(|(topic, partition)| GroupRecord::Offset {
            group: group.id.clone(),
            topic: topic.clone(),
            partition: *partition,
            value: None,
        })
        .collect();
    match &group.consumer {
        Some(consumer) => records.extend(consumer.tombstones(&group.id)),
        None => records.push(GroupRecord::Group {
            group: group.id.clone(),
            value: None,
        }),
    }
    records
}

/// The member exists and, for a static member, is the current holder of its instance ID.
fn validate_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ErrorCode> {
    if let Some(instance) = instance_id {
        match group.instances.get(instance) {
            Some(current) if current == member_id => return Ok(()),
            Some(_) => return Err(ErrorCode::FencedInstanceId),
            None => return Err(ErrorCode::UnknownMemberId),
        }
    }
    if group.members.contains_key(member_id) {
        Ok(())
    } else {
        Err(ErrorCode::UnknownMemberId)
    }
}

/// One JoinGroup being handled: what every step of it needs.
struct Join<'a> {
    config: &'a GroupConfig,
    now: i64,
    token: Token,
    client: &'a Client,
    request: &'a JoinGroupRequest,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    /// The JoinGroup version: KIP-814's `skip_assignment` exists from v9.
    version: i16,
}

impl Join<'_> {
    fn session_deadline(&self) -> i64 {
        self.now + i64::from(self.request.session_timeout_ms)
    }
}

fn join_unknown(
    group: &mut Group,
    effects: &mut Effects,
    join: Join<'_>,
    fresh: Uuid,
    version: i16,
) -> Result<(), JoinRefusal> {
    let request = join.request;
    if let Some(instance) = &request.group_instance_id
        && let Some(old_id) = group.instances.get(instance).cloned()
    {
        // A static member coming back under its instance ID replaces its old identity.
        let new_id = format!("{instance}-{fresh}");
        replace_static_member(group, effects, join, &old_id, &new_id);
        return Ok(());
    }
    if group.is_full(join.config) {
        return Err(JoinRefusal::new("", ErrorCode::GroupMaxSizeReached));
    }
    let prefix = request
        .group_instance_id
        .as_deref()
        .unwrap_or(join.client.client_id.as_str());
    let new_id = format!("{prefix}-{fresh}");
    if request.group_instance_id.is_none() && version >= 4 {
        // The member must come back with this ID before it counts (KIP-394).
        group
            .pending
            .insert(new_id.clone(), join.session_deadline());
        return Err(JoinRefusal::new(&new_id, ErrorCode::MemberIdRequired));
    }
    add_member(group, effects, join, new_id);
    Ok(())
}

fn join_known(group: &mut Group, effects: &mut Effects, join: Join<'_>) -> Result<(), JoinRefusal> {
    let member_id = join.request.member_id.as_str();
    if group.pending.remove(member_id).is_some() {
        if group.is_full(join.config) {
            return Err(JoinRefusal::new(member_id, ErrorCode::GroupMaxSizeReached));
        }
        add_member(group, effects, join, member_id.to_string());
        return Ok(());
    }
    validate_member(group, member_id, join.request.group_instance_id.as_deref())
        .map_err(|error| JoinRefusal::new(member_id, error))?;
    let state = group.state;
    let is_leader = group.leader.as_deref() == Some(member_id);
    let session_deadline = join.session_deadline();
    let Join {
        config,
        now,
        token,
        request,
        rebalance_timeout_ms,
        protocols,
        ..
    } = join;
    let Some(member) = group.members.get_mut(member_id) else {
        return Err(JoinRefusal::new(member_id, ErrorCode::UnknownMemberId));
    };
    let unchanged = member.same_protocols(&protocols);
    member.session_timeout_ms = request.session_timeout_ms;
    member.rebalance_timeout_ms = rebalance_timeout_ms;
    member.session_deadline = session_deadline;
    match state {
        GroupState::PreparingRebalance => {
            member.protocols = protocols;
            if let Some(old) = member.awaiting_join.replace(token) {
                effects.completed.push((
                    old,
                    Parked::Join(join_error(member_id, ErrorCode::RebalanceInProgress)),
                ));
            }
            maybe_complete_join(group, effects, now);
        }
        GroupState::CompletingRebalance | GroupState::Stable
            if unchanged && (state == GroupState::CompletingRebalance || !is_leader) =>
        {
            // The same member with the same metadata (it probably missed our answer):
            // the current generation, without a rebalance.
            let answer = group.join_response(member_id, false);
            effects.completed.push((token, Parked::Join(answer)));
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            member.protocols = protocols;
            member.awaiting_join = Some(token);
            prepare_rebalance(group, config, effects, now);
        }
        GroupState::Empty => return Err(JoinRefusal::new(member_id, ErrorCode::UnknownMemberId)),
    }
    Ok(())
}

fn add_member(group: &mut Group, effects: &mut Effects, join: Join<'_>, member_id: String) {
    let session_deadline = join.session_deadline();
    let Join {
        config,
        now,
        token,
        client,
        request,
        rebalance_timeout_ms,
        protocols,
        ..
    } = join;
    if group.members.is_empty() {
        group.protocol_type = Some(request.protocol_type.clone());
    }
    if let Some(instance) = &request.group_instance_id {
        group.instances.insert(instance.clone(), member_id.clone());
    }
    group.members.insert(
        member_id.clone(),
        Member {
            id: member_id,
            instance_id: request.group_instance_id.clone(),
            client_id: client.client_id.clone(),
            client_host: client.client_host.clone(),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms,
            protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(token),
            awaiting_sync: None,
            synced: false,
            session_deadline,
        },
    );
    match group.state {
        GroupState::PreparingRebalance => {
            if let Some(until) = group.initial_delay_until {
                // Each arrival during a new group's delay extends it, within the
                // rebalance timeout.
                group.initial_delay_until = Some(
                    until
                        .max(now + config.initial_rebalance_delay_ms)
                        .min(group.phase_deadline),
                );
            }
            maybe_complete_join(group, effects, now);
        }
        _ => prepare_rebalance(group, config, effects, now),
    }
}

fn replace_static_member(
    group: &mut Group,
    effects: &mut Effects,
    join: Join<'_>,
    old_id: &str,
    new_id: &str,
) {
    let Some(mut member) = group.members.remove(old_id) else {
        return;
    };
    // Whoever still waits under the old identity is a zombie now.
    if let Some(old) = member.awaiting_join.take() {
        effects.completed.push((
            old,
            Parked::Join(join_error(old_id, ErrorCode::FencedInstanceId)),
        ));
    }
    if let Some(old) = member.awaiting_sync.take() {
        effects
            .completed
            .push((old, Parked::Sync(sync_error(ErrorCode::FencedInstanceId))));
    }
    let session_deadline = join.session_deadline();
    let Join {
        config,
        now,
        token,
        request,
        rebalance_timeout_ms,
        protocols,
        version,
        ..
    } = join;
    let unchanged = member.same_protocols(&protocols);
    member.id = new_id.to_string();
    member.session_timeout_ms = request.session_timeout_ms;
    member.rebalance_timeout_ms = rebalance_timeout_ms;
    member.session_deadline = session_deadline;
    member.protocols = protocols;
    if let Some(instance) = &member.instance_id {
        group.instances.insert(instance.clone(), new_id.to_string());
    }
    if group.leader.as_deref() == Some(old_id) {
        group.leader = Some(new_id.to_string());
    }
    match group.state {
        GroupState::Stable if unchanged => {
            // Back with the same subscription: keep the assignment, no rebalance. The
            // leader learns the members but is told to skip assigning (KIP-814, v9+);
            // an older leader assigns, and its SyncGroup in Stable changes nothing.
            member.synced = true;
            group.members.insert(new_id.to_string(), member);
            effects.records.push(group.metadata_record());
            let answer = group.join_response(new_id, version >= 9);
            effects.completed.push((token, Parked::Join(answer)));
        }
        GroupState::PreparingRebalance => {
            member.awaiting_join = Some(token);
            group.members.insert(new_id.to_string(), member);
            maybe_complete_join(group, effects, now);
        }
        _ => {
            member.awaiting_join = Some(token);
            group.members.insert(new_id.to_string(), member);
            prepare_rebalance(group, config, effects, now);
        }
    }
}

fn sync(
    group: &mut Group,
    effects: &mut Effects,
    now: i64,
    token: Token,
    request: &SyncGroupRequest,
) -> Result<(), ErrorCode> {
    let member_id = request.member_id.as_str();
    validate_member(group, member_id, request.group_instance_id.as_deref())?;
    if request.generation_id != group.generation {
        return Err(ErrorCode::IllegalGeneration);
    }
    let type_differs = request
        .protocol_type
        .as_ref()
        .is_some_and(|t| Some(t) != group.protocol_type.as_ref());
    let name_differs = request
        .protocol_name
        .as_ref()
        .is_some_and(|n| Some(n) != group.protocol.as_ref());
    if type_differs || name_differs {
        return Err(ErrorCode::InconsistentGroupProtocol);
    }
    let is_leader = group.leader.as_deref() == Some(member_id);
    let state = group.state;
    let Some(member) = group.members.get_mut(member_id) else {
        return Err(ErrorCode::UnknownMemberId);
    };
    member.session_deadline = now + i64::from(member.session_timeout_ms);
    member.synced = true;
    match state {
        GroupState::Empty => Err(ErrorCode::UnknownMemberId),
        GroupState::PreparingRebalance => Err(ErrorCode::RebalanceInProgress),
        GroupState::Stable => {
            let answer = sync_answer(group, member_id);
            effects.completed.push((token, Parked::Sync(answer)));
            Ok(())
        }
        GroupState::CompletingRebalance => {
            if let Some(old) = member.awaiting_sync.replace(token) {
                effects.completed.push((
                    old,
                    Parked::Sync(sync_error(ErrorCode::RebalanceInProgress)),
                ));
            }
            if is_leader {
                let assignments: HashMap<&str, &Bytes> = request
                    .assignments
                    .iter()
                    .map(|a| (a.member_id.as_str(), &a.assignment))
                    .collect();
                for m in group.members.values_mut() {
                    m.assignment = assignments
                        .get(m.id.as_str())
                        .map_or_else(Bytes::new, |a| (*a).clone());
                }
                group.transition(GroupState::Stable, now);
                effects.records.push(group.metadata_record());
                let waiting: Vec<(String, Token)> = group
                    .members
                    .values_mut()
                    .filter_map(|m| m.awaiting_sync.take().map(|t| (m.id.clone(), t)))
                    .collect();
                for (id, token) in waiting {
                    let answer = sync_answer(group, &id);
                    effects.completed.push((token, Parked::Sync(answer)));
                }
            }
            Ok(())
        }
    }
}

fn sync_answer(group: &Group, member_id: &str) -> SyncGroupResponse {
    SyncGroupResponse {
        error_code: ErrorCode::None.code(),
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        assignment: group
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default(),
        ..SyncGroupResponse::default()
    }
}

/// Starts a rebalance: every member must rejoin within the rebalance timeout. A group
/// that was empty first waits `group.initial.rebalance.delay.ms` for more members.
fn prepare_rebalance(group: &mut Group, config: &GroupConfig, effects: &mut Effects, now: i64) {
    if group.state == GroupState::CompletingRebalance {
        // The assignment being computed is void: members waiting for it rejoin.
        for member in group.members.values_mut() {
            if let Some(token) = member.awaiting_sync.take() {
                effects.completed.push((
                    token,
                    Parked::Sync(sync_error(ErrorCode::RebalanceInProgress)),
                ));
            }
        }
    }
    let was_empty = group.state == GroupState::Empty;
    let timeout = group.max_rebalance_timeout();
    group.phase_deadline = now.saturating_add(timeout);
    group.initial_delay_until = (was_empty && config.initial_rebalance_delay_ms > 0)
        .then(|| (now + config.initial_rebalance_delay_ms).min(group.phase_deadline));
    group.transition(GroupState::PreparingRebalance, now);
    maybe_complete_join(group, effects, now);
}

/// Ends the join phase once every member has rejoined (and any initial delay is over).
fn maybe_complete_join(group: &mut Group, effects: &mut Effects, now: i64) {
    if group.state == GroupState::PreparingRebalance
        && group.initial_delay_until.is_none()
        && group.all_joined()
    {
        complete_join(group, effects, now);
    }
}

/// Ends the join phase: members that did not rejoin are dropped (static members keep
/// their place), the generation advances, the leader gets every member's metadata.
fn complete_join(group: &mut Group, effects: &mut Effects, now: i64) {
    let missing: Vec<String> = group
        .members
        .values()
        .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
        .map(|m| m.id.clone())
        .collect();
    for id in missing {
        drop_member(group, &id);
    }
    group.initial_delay_until = None;
    group.generation = group.generation.wrapping_add(1);
    if group.members.is_empty() {
        group.protocol = None;
        group.leader = None;
        group.transition(GroupState::Empty, now);
        group.phase_deadline = i64::MAX;
        effects.records.push(group.metadata_record());
        return;
    }
    group.protocol = group.select_protocol();
    let leader_joined = group
        .leader
        .as_ref()
        .and_then(|l| group.members.get(l))
        .is_some_and(|m| m.awaiting_join.is_some());
    if !leader_joined {
        group.leader = group
            .members
            .values()
            .find(|m| m.awaiting_join.is_some())
            .or_else(|| group.members.values().next())
            .map(|m| m.id.clone());
    }
    group.transition(GroupState::CompletingRebalance, now);
    group.phase_deadline = now.saturating_add(group.max_rebalance_timeout());
    let mut answers = Vec::new();
    for member in group.members.values_mut() {
        member.synced = false;
        member.assignment = Bytes::new();
        member.session_deadline = now + i64::from(member.session_timeout_ms);
        if let Some(token) = member.awaiting_join.take() {
            answers.push((member.id.clone(), token));
        }
    }
    for (id, token) in answers {
        let answer = group.join_response(&id, false);
        effects.completed.push((token, Parked::Join(answer)));
    }
}

/// Takes a member out of the group's maps (no rebalance).
fn drop_member(group: &mut Group, member_id: &str) -> Option<Member> {
    let member = group.members.remove(member_id)?;
    if let Some(instance) = &member.instance_id
        && group.instances.get(instance).map(String::as_str) == Some(member_id)
    {
        group.instances.remove(instance);
    }
    if group.leader.as_deref() == Some(member_id) {
        group.leader = None;
    }
    Some(member)
}

/// Removes a member (it left, or its session lapsed) and rebalances the others.
fn remove_member(
    group: &mut Group,
    config: &GroupConfig,
    effects: &mut Effects,
    now: i64,
    member_id: &str,
) {
    let Some(member) = drop_member(group, member_id) else {
        return;
    };
    if let Some(token) = member.awaiting_join {
        effects.completed.push((
            token,
            Parked::Join(join_error(member_id, ErrorCode::UnknownMemberId)),
        ));
    }
    if let Some(token) = member.awaiting_sync {
        effects
            .completed
            .push((token, Parked::Sync(sync_error(ErrorCode::UnknownMemberId))));
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, config, effects, now)
        }
        GroupState::PreparingRebalance => maybe_complete_join(group, effects, now),
        GroupState::Empty => {}
    }
}

fn tick_group(group: &mut Group, config: &GroupConfig, effects: &mut Effects, now: i64) {
    // Member IDs handed out but never used.
    group.pending.retain(|_, deadline| *deadline > now);
    // Sessions that lapsed (a member waiting for its join or sync answer is alive).
    let lapsed: Vec<String> = group
        .members
        .values()
        .filter(|m| {
            m.awaiting_join.is_none() && m.awaiting_sync.is_none() && m.session_deadline <= now
        })
        .map(|m| m.id.clone())
        .collect();
    for id in lapsed {
        remove_member(group, config, effects, now, &id);
    }
    match group.state {
        GroupState::PreparingRebalance => {
            if let Some(until) = group.initial_delay_until
                && now >= until
            {
                group.initial_delay_until = None;
                complete_join(group, effects, now);
            } else if group.initial_delay_until.is_none() && now >= group.phase_deadline {
                complete_join(group, effects, now);
            } else {
                maybe_complete_join(group, effects, now);
            }
        }
        GroupState::CompletingRebalance | GroupState::Stable if now >= group.phase_deadline => {
            // Members that never sent SyncGroup for this generation are dropped.
            let unsynced: Vec<String> = group
                .members
                .values()
                .filter(|m| !m.synced)
                .map(|m| m.id.clone())
                .collect();
            group.phase_deadline = i64::MAX;
            if !unsynced.is_empty() || group.state == GroupState::CompletingRebalance {
                for id in unsynced {
                    drop_member(group, &id);
                }
                prepare_rebalance(group, config, effects, now);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
