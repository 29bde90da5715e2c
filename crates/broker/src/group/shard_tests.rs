//! The group state machine driven with a fake clock.

use bytes::Bytes;
use spool_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use spool_protocol::messages::leave_group_request::MemberIdentity;
use spool_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use spool_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use spool_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use spool_protocol::messages::{
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest, SyncGroupRequest,
    SyncGroupResponse, TxnOffsetCommitRequest,
};
use spool_protocol::{ErrorCode, Uuid};

use super::*;

const GROUP: &str = "g";
const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

struct Harness {
    shard: Shard,
    now: i64,
    next_token: Token,
    /// Everything appended so far, as the log would hold it.
    log: Vec<GroupRecord>,
    /// Answers released so far, by token.
    answers: Vec<(Token, Parked)>,
    /// Records written in producers' transactional batches, as the log would hold them.
    txn_log: Vec<TxnRecords>,
    /// The JoinGroup version sent.
    join_version: i16,
}

impl Harness {
    fn new(config: GroupConfig) -> Harness {
        let mut counter = 0u128;
        Harness {
            shard: Shard::new(
                config,
                Box::new(move || {
                    counter += 1;
                    Uuid::from_u128(counter)
                }),
            ),
            now: 1_000_000,
            next_token: 1,
            log: Vec::new(),
            answers: Vec::new(),
            txn_log: Vec::new(),
            join_version: 5,
        }
    }

    fn with_delay(delay_ms: i64) -> Harness {
        Harness::new(GroupConfig {
            initial_rebalance_delay_ms: delay_ms,
            ..GroupConfig::default()
        })
    }

    fn collect(&mut self) {
        let effects = self.shard.take_effects();
        self.log.extend(effects.records);
        self.answers.extend(effects.completed);
        self.txn_log.extend(effects.txn_records);
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        self.shard.tick(self.now);
        self.collect();
    }

    fn take_answer(&mut self, token: Token) -> Option<Parked> {
        let index = self.answers.iter().position(|(t, _)| *t == token)?;
        Some(self.answers.remove(index).1)
    }

    /// Sends JoinGroup (v5 unless set); returns its token.
    fn send_join(&mut self, member_id: &str, instance: Option<&str>, metadata: &[u8]) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        let request = JoinGroupRequest {
            group_id: GROUP.into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            member_id: member_id.into(),
            group_instance_id: instance.map(String::from),
            protocol_type: "consumer".into(),
            protocols: vec![JoinGroupRequestProtocol {
                name: "range".into(),
                metadata: Bytes::copy_from_slice(metadata),
                ..JoinGroupRequestProtocol::default()
            }],
            ..JoinGroupRequest::default()
        };
        let client = Client {
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
        };
        self.shard
            .join(self.now, token, &client, &request, self.join_version);
        self.collect();
        token
    }

    fn join_answer(&mut self, token: Token) -> Option<JoinGroupResponse> {
        match self.take_answer(token)? {
            Parked::Join(answer) => Some(answer),
            Parked::Sync(_) => panic!("a sync answer to a join"),
        }
    }

    /// A dynamic member's full entrance: MEMBER_ID_REQUIRED, then the join proper.
    fn enter(&mut self) -> (String, Token) {
        let first = self.send_join("", None, b"sub");
        let answer = self.join_answer(first).expect("answered at once");
        assert_eq!(answer.error_code, ErrorCode::MemberIdRequired.code());
        assert!(answer.member_id.starts_with("client-"));
        let token = self.send_join(&answer.member_id, None, b"sub");
        (answer.member_id, token)
    }

    fn send_sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: &[(&str, &[u8])],
    ) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        let request = SyncGroupRequest {
            group_id: GROUP.into(),
            generation_id: generation,
            member_id: member_id.into(),
            assignments: assignments
                .iter()
                .map(|(member, bytes)| SyncGroupRequestAssignment {
                    member_id: member.to_string(),
                    assignment: Bytes::copy_from_slice(bytes),
                    ..SyncGroupRequestAssignment::default()
                })
                .collect(),
            ..SyncGroupRequest::default()
        };
        self.shard.sync(self.now, token, &request);
        self.collect();
        token
    }

    fn sync_answer(&mut self, token: Token) -> Option<SyncGroupResponse> {
        match self.take_answer(token)? {
            Parked::Sync(answer) => Some(answer),
            Parked::Join(_) => panic!("a join answer to a sync"),
        }
    }

    fn heartbeat(&mut self, member_id: &str, generation: i32) -> ErrorCode {
        let error = self
            .shard
            .heartbeat(self.now, GROUP, member_id, None, generation);
        self.collect();
        error
    }

    fn commit(&mut self, member_id: &str, generation: i32, offset: i64) -> i16 {
        let request = OffsetCommitRequest {
            group_id: GROUP.into(),
            generation_id_or_member_epoch: generation,
            member_id: member_id.into(),
            topics: vec![OffsetCommitRequestTopic {
                name: "orders".into(),
                partitions: vec![OffsetCommitRequestPartition {
                    partition_index: 0,
                    committed_offset: offset,
                    committed_leader_epoch: 3,
                    committed_metadata: Some("meta".into()),
                    ..OffsetCommitRequestPartition::default()
                }],
                ..OffsetCommitRequestTopic::default()
            }],
            ..OffsetCommitRequest::default()
        };
        let response = self
            .shard
            .commit_offsets(self.now, &request, 8, &|topic, _| topic == "orders");
        self.collect();
        response.topics[0].partitions[0].error_code
    }

    /// TxnOffsetCommit of `offset` for partition 0 of `topic` by producer `producer_id`.
    fn txn_commit(
        &mut self,
        producer_id: i64,
        member_id: &str,
        generation: i32,
        topic: &str,
        offset: i64,
    ) -> ErrorCode {
        let request = TxnOffsetCommitRequest {
            transactional_id: format!("txn-{producer_id}"),
            group_id: GROUP.into(),
            producer_id,
            producer_epoch: 0,
            generation_id: generation,
            member_id: member_id.into(),
            topics: vec![TxnOffsetCommitRequestTopic {
                name: topic.into(),
                partitions: vec![TxnOffsetCommitRequestPartition {
                    partition_index: 0,
                    committed_offset: offset,
                    committed_leader_epoch: 3,
                    committed_metadata: Some("meta".into()),
                    ..TxnOffsetCommitRequestPartition::default()
                }],
                ..TxnOffsetCommitRequestTopic::default()
            }],
            ..TxnOffsetCommitRequest::default()
        };
        let response = self
            .shard
            .txn_commit_offsets(self.now, &request, &|topic, _| topic == "orders");
        self.collect();
        ErrorCode::from_code(response.topics[0].partitions[0].error_code).expect("a known code")
    }

    fn committed(&self) -> Option<i64> {
        self.shard
            .committed(GROUP)
            .and_then(|offsets| offsets.first().map(|(_, offset)| *offset))
    }

    fn state(&self) -> Option<GroupState> {
        self.shard.state(GROUP)
    }

    /// Two members through a whole rebalance to Stable; returns their IDs (leader first)
    /// and the generation.
    fn stable_pair(&mut self) -> (String, String, i32) {
        // Without an initial delay the first member completes a generation alone, and
        // rejoins when the second arrives.
        let (a, ta) = self.enter();
        assert!(self.join_answer(ta).is_some());
        let (b, tb) = self.enter();
        let ta = self.send_join(&a, None, b"sub");
        let ja = self.join_answer(ta).expect("join phase complete");
        let jb = self.join_answer(tb).expect("join phase complete");
        let (leader, follower) = if ja.leader == a { (a, b) } else { (b, a) };
        let generation = ja.generation_id;
        assert_eq!(jb.generation_id, generation);
        let follower_sync = self.send_sync(&follower, generation, &[]);
        let leader_sync = self.send_sync(
            &leader,
            generation,
            &[(leader.as_str(), b"L"), (follower.as_str(), b"F")],
        );
        assert_eq!(&self.sync_answer(leader_sync).unwrap().assignment[..], b"L");
        assert_eq!(
            &self.sync_answer(follower_sync).unwrap().assignment[..],
            b"F"
        );
        assert_eq!(self.state(), Some(GroupState::Stable));
        (leader, follower, generation)
    }
}

#[test]
fn members_join_get_a_leader_and_sync_their_assignments() {
    let mut h = Harness::with_delay(0);
    let (a, ta) = h.enter();
    // Alone in the group, with no delay: the join phase completes at once.
    let ja = h.join_answer(ta).expect("answered");
    assert_eq!(ja.error_code, 0);
    assert_eq!(ja.generation_id, 1);
    assert_eq!(ja.leader, a);
    assert_eq!(ja.protocol_name.as_deref(), Some("range"));
    assert_eq!(ja.members.len(), 1);
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));

    // A second member arrives: the first must rejoin before the phase completes.
    let (b, tb) = h.enter();
    assert!(h.join_answer(tb).is_none(), "b waits for a to rejoin");
    assert_eq!(h.heartbeat(&a, 1), ErrorCode::RebalanceInProgress);
    let ta2 = h.send_join(&a, None, b"sub");
    let ja2 = h.join_answer(ta2).expect("all joined");
    let jb = h.join_answer(tb).expect("all joined");
    assert_eq!((ja2.generation_id, jb.generation_id), (2, 2));
    assert_eq!(ja2.leader, a, "the leader keeps its role");
    assert_eq!(ja2.members.len(), 2, "the leader sees every member");
    assert!(jb.members.is_empty(), "followers see none");

    // The follower's sync waits for the leader's assignment.
    let sb = h.send_sync(&b, 2, &[]);
    assert!(h.sync_answer(sb).is_none());
    let records_before = h.log.len();
    let sa = h.send_sync(&a, 2, &[(a.as_str(), b"for-a"), (b.as_str(), b"for-b")]);
    assert_eq!(&h.sync_answer(sa).unwrap().assignment[..], b"for-a");
    assert_eq!(&h.sync_answer(sb).unwrap().assignment[..], b"for-b");
    assert_eq!(h.state(), Some(GroupState::Stable));
    // The assignment is recorded before anyone is told.
    assert!(matches!(
        &h.log[records_before..],
        [GroupRecord::Group { value: Some(v), .. }] if v.generation == 2 && v.members.len() == 2
    ));
    assert_eq!(h.heartbeat(&a, 2), ErrorCode::None);
    assert_eq!(h.heartbeat(&b, 1), ErrorCode::IllegalGeneration);
    assert_eq!(h.heartbeat("stranger", 2), ErrorCode::UnknownMemberId);
}

#[test]
fn a_new_group_waits_the_initial_delay_for_more_members() {
    let mut h = Harness::with_delay(3000);
    let (_, ta) = h.enter();
    h.advance(2000);
    assert!(h.join_answer(ta).is_none(), "still in the initial delay");
    // Each arrival extends the delay.
    let (_, tb) = h.enter();
    h.advance(2000);
    assert!(h.join_answer(ta).is_none());
    h.advance(1100);
    let ja = h.join_answer(ta).expect("delay over");
    let jb = h.join_answer(tb).expect("delay over");
    assert_eq!(ja.generation_id, 1);
    assert_eq!(jb.generation_id, 1);
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));
}

#[test]
fn a_member_that_stops_heartbeating_is_removed_after_its_session_timeout() {
    let mut h = Harness::with_delay(0);
    let (leader, follower, generation) = h.stable_pair();
    // Only the leader keeps heartbeating.
    for _ in 0..9 {
        h.advance(1000);
        assert_eq!(h.heartbeat(&leader, generation), ErrorCode::None);
    }
    h.advance(1500);
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.heartbeat(&leader, generation),
        ErrorCode::RebalanceInProgress
    );
    let t = h.send_join(&leader, None, b"sub");
    let answer = h.join_answer(t).expect("alone now");
    assert_eq!(answer.generation_id, generation + 1);
    assert_eq!(answer.members.len(), 1);
    assert_eq!(
        h.heartbeat(&follower, generation),
        ErrorCode::UnknownMemberId
    );
}

#[test]
fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
    let mut h = Harness::with_delay(0);
    let (leader, follower, generation) = h.stable_pair();
    let (_, tc) = h.enter();
    let tl = h.send_join(&leader, None, b"sub");
    // The follower keeps heartbeating but never rejoins.
    for _ in 0..29 {
        h.advance(1000);
        assert_eq!(
            h.heartbeat(&follower, generation),
            ErrorCode::RebalanceInProgress
        );
    }
    assert!(h.join_answer(tl).is_none());
    h.advance(1500);
    let jl = h.join_answer(tl).expect("rebalance timeout");
    assert!(h.join_answer(tc).is_some());
    assert_eq!(jl.members.len(), 2, "the laggard is gone");
    assert_eq!(
        h.heartbeat(&follower, generation),
        ErrorCode::UnknownMemberId
    );
}

#[test]
fn the_leader_leaving_mid_rebalance_restarts_it_with_a_new_leader() {
    let mut h = Harness::with_delay(0);
    let (leader, follower, _) = h.stable_pair();
    // A third member triggers a rebalance; both rejoin; the follower syncs and waits.
    let (third, t3) = h.enter();
    let tl = h.send_join(&leader, None, b"sub");
    let tf = h.send_join(&follower, None, b"sub");
    let generation = h.join_answer(tl).unwrap().generation_id;
    h.join_answer(tf).unwrap();
    h.join_answer(t3).unwrap();
    let sf = h.send_sync(&follower, generation, &[]);
    assert!(h.sync_answer(sf).is_none());
    // The leader leaves before sending the assignment.
    let response = h.shard.leave(
        h.now,
        &LeaveGroupRequest {
            group_id: GROUP.into(),
            members: vec![MemberIdentity {
                member_id: leader.clone(),
                ..MemberIdentity::default()
            }],
            ..LeaveGroupRequest::default()
        },
        5,
    );
    h.collect();
    assert_eq!(response.members[0].error_code, 0);
    assert_eq!(
        h.sync_answer(sf).unwrap().error_code,
        ErrorCode::RebalanceInProgress.code()
    );
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    let tf = h.send_join(&follower, None, b"sub");
    let t3 = h.send_join(&third, None, b"sub");
    let jf = h.join_answer(tf).unwrap();
    let j3 = h.join_answer(t3).unwrap();
    assert_eq!(jf.generation_id, generation + 1);
    assert_ne!(jf.leader, leader);
    assert_eq!(jf.leader, j3.leader);
}

#[test]
fn a_static_member_rejoining_takes_its_place_back_and_fences_its_old_self() {
    let mut h = Harness::with_delay(0);
    let t = h.send_join("", Some("instance-1"), b"sub");
    let first = h
        .join_answer(t)
        .expect("static members skip MEMBER_ID_REQUIRED");
    let old_id = first.member_id.clone();
    assert!(old_id.starts_with("instance-1-"));
    let s = h.send_sync(&old_id, first.generation_id, &[(old_id.as_str(), b"mine")]);
    assert_eq!(&h.sync_answer(s).unwrap().assignment[..], b"mine");
    let log_before = h.log.len();

    // It restarts (no LeaveGroup) and joins again under the same instance ID.
    h.join_version = 9;
    let t = h.send_join("", Some("instance-1"), b"sub");
    let again = h.join_answer(t).expect("answered at once");
    assert_eq!(again.error_code, 0);
    assert_ne!(again.member_id, old_id);
    assert_eq!(again.generation_id, first.generation_id, "no rebalance");
    assert!(again.skip_assignment, "the leader keeps the assignment");
    // A leader speaking JoinGroup before v9 cannot be told to skip: it assigns, and its
    // answer must encode at its version.
    h.join_version = 5;
    let t = h.send_join("", Some("instance-1"), b"sub");
    let older = h.join_answer(t).expect("answered at once");
    assert_eq!(older.generation_id, first.generation_id, "no rebalance");
    assert!(!older.skip_assignment);
    let mut encoded = bytes::BytesMut::new();
    older.encode(&mut encoded, 5).expect("a v5 answer encodes");
    let again = older;
    assert_eq!(h.state(), Some(GroupState::Stable));
    assert!(h.log.len() > log_before, "the new member ID is recorded");
    let s = h.send_sync(&again.member_id, again.generation_id, &[]);
    assert_eq!(&h.sync_answer(s).unwrap().assignment[..], b"mine");

    // The old incarnation is fenced.
    let error = h.shard.heartbeat(
        h.now,
        GROUP,
        &old_id,
        Some("instance-1"),
        first.generation_id,
    );
    assert_eq!(error, ErrorCode::FencedInstanceId);
}

#[test]
fn commits_are_checked_against_member_and_generation() {
    let mut h = Harness::with_delay(0);
    let (leader, _, generation) = h.stable_pair();
    assert_eq!(h.commit(&leader, generation, 42), 0);
    assert_eq!(h.committed(), Some(42));
    assert_eq!(
        h.commit(&leader, generation - 1, 43),
        ErrorCode::IllegalGeneration.code()
    );
    assert_eq!(
        h.commit("stranger", generation, 43),
        ErrorCode::UnknownMemberId.code()
    );
    // Without a generation, only an empty group takes commits.
    assert_eq!(h.commit("", -1, 43), ErrorCode::UnknownMemberId.code());
    assert_eq!(h.committed(), Some(42));
    // A commit recorded the offset with its epoch and metadata.
    assert!(h.log.iter().any(|r| matches!(
        r,
        GroupRecord::Offset { value: Some(v), .. }
            if v.offset == 42 && v.leader_epoch == 3 && v.metadata == "meta"
    )));
}

#[test]
fn simple_groups_commit_without_members_and_bad_commits_are_refused() {
    let mut h = Harness::with_delay(0);
    assert_eq!(h.commit("", -1, 7), 0);
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(h.committed(), Some(7));

    let request = OffsetCommitRequest {
        group_id: GROUP.into(),
        generation_id_or_member_epoch: -1,
        topics: vec![OffsetCommitRequestTopic {
            name: "orders".into(),
            partitions: vec![
                OffsetCommitRequestPartition {
                    partition_index: 9,
                    committed_offset: 1,
                    ..OffsetCommitRequestPartition::default()
                },
                OffsetCommitRequestPartition {
                    partition_index: 0,
                    committed_offset: 1,
                    committed_metadata: Some("x".repeat(5000)),
                    ..OffsetCommitRequestPartition::default()
                },
            ],
            ..OffsetCommitRequestTopic::default()
        }],
        ..OffsetCommitRequest::default()
    };
    let response = h
        .shard
        .commit_offsets(h.now, &request, 8, &|_, partition| partition == 0);
    let errors: Vec<i16> = response.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(
        errors,
        [
            ErrorCode::UnknownTopicOrPartition.code(),
            ErrorCode::OffsetMetadataTooLarge.code()
        ]
    );
    // A commit with a generation to a group that does not exist.
    let mut unknown = request.clone();
    unknown.group_id = "nobody".into();
    unknown.generation_id_or_member_epoch = 3;
    let response = h.shard.commit_offsets(h.now, &unknown, 8, &|_, _| true);
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        ErrorCode::IllegalGeneration.code()
    );
    let response = h.shard.commit_offsets(h.now, &unknown, 9, &|_, _| true);
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        ErrorCode::GroupIdNotFound.code()
    );
}

#[test]
fn offsets_of_an_empty_group_expire_after_the_retention_and_the_group_goes() {
    let mut h = Harness::new(GroupConfig {
        initial_rebalance_delay_ms: 0,
        offsets_retention_ms: 60_000,
        offsets_retention_check_interval_ms: 1000,
        ..GroupConfig::default()
    });
    let (leader, follower, generation) = h.stable_pair();
    assert_eq!(h.commit(&leader, generation, 5), 0);
    // While the group has members its offsets stay, however old.
    h.advance(120_000);
    // (Both members lapsed during that wait: the group emptied at that moment.)
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(h.committed(), Some(5));
    let _ = follower;
    h.advance(59_000);
    assert_eq!(h.committed(), Some(5), "retention counts from emptiness");
    h.advance(12_000);
    assert_eq!(
        h.state(),
        None,
        "expired offsets took the empty group with them"
    );
    let tail: Vec<&GroupRecord> = h.log.iter().rev().take(2).collect();
    assert!(matches!(tail[0], GroupRecord::Group { value: None, .. }));
    assert!(matches!(tail[1], GroupRecord::Offset { value: None, .. }));
}

#[test]
fn the_log_rebuilds_groups_and_offsets() {
    let mut h = Harness::with_delay(0);
    let (leader, follower, generation) = h.stable_pair();
    assert_eq!(h.commit(&leader, generation, 99), 0);
    let mut restored = Harness::with_delay(0);
    for record in h.log.clone() {
        restored.shard.replay(record, restored.now);
    }
    assert_eq!(restored.state(), Some(GroupState::Stable));
    assert_eq!(restored.committed(), Some(99));
    // Members carry on in the same generation after a restart.
    assert_eq!(restored.heartbeat(&leader, generation), ErrorCode::None);
    assert_eq!(restored.heartbeat(&follower, generation), ErrorCode::None);
    let described = restored.shard.describe_group(GROUP).unwrap();
    assert_eq!(described.members.len(), 2);
    assert_eq!(described.protocol_data, "range");
}

#[test]
fn a_full_group_refuses_new_members_and_empty_groups_can_be_deleted() {
    let mut h = Harness::new(GroupConfig {
        initial_rebalance_delay_ms: 0,
        max_size: 1,
        ..GroupConfig::default()
    });
    let (a, ta) = h.enter();
    h.join_answer(ta).unwrap();
    let t = h.send_join("", None, b"sub");
    assert_eq!(
        h.join_answer(t).unwrap().error_code,
        ErrorCode::GroupMaxSizeReached.code()
    );
    assert_eq!(h.shard.delete_group(GROUP), ErrorCode::NonEmptyGroup);
    let response = h.shard.leave(
        h.now,
        &LeaveGroupRequest {
            group_id: GROUP.into(),
            member_id: a,
            ..LeaveGroupRequest::default()
        },
        1,
    );
    h.collect();
    assert_eq!(response.error_code, 0);
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(h.shard.delete_group(GROUP), ErrorCode::None);
    assert_eq!(h.shard.delete_group(GROUP), ErrorCode::GroupIdNotFound);
    assert_eq!(h.shard.delete_group(""), ErrorCode::InvalidGroupId);
}

#[test]
fn joins_with_bad_settings_are_refused() {
    let mut h = Harness::with_delay(0);
    let client = Client::default();
    let mut request = JoinGroupRequest {
        group_id: GROUP.into(),
        session_timeout_ms: 1000,
        protocol_type: "consumer".into(),
        protocols: vec![JoinGroupRequestProtocol {
            name: "range".into(),
            ..JoinGroupRequestProtocol::default()
        }],
        ..JoinGroupRequest::default()
    };
    let mut refusal = |request: &JoinGroupRequest| {
        h.shard.join(h.now, 77, &client, request, 5);
        let mut effects = h.shard.take_effects();
        match effects.completed.pop() {
            Some((77, Parked::Join(answer))) => answer.error_code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(refusal(&request), ErrorCode::InvalidSessionTimeout.code());
    request.session_timeout_ms = SESSION_MS;
    request.member_id = "made-up".into();
    assert_eq!(refusal(&request), ErrorCode::UnknownMemberId.code());
    request.member_id.clear();
    request.group_id.clear();
    assert_eq!(refusal(&request), ErrorCode::InvalidGroupId.code());
    request.group_id = GROUP.into();
    request.protocols.clear();
    assert_eq!(
        refusal(&request),
        ErrorCode::InconsistentGroupProtocol.code()
    );
}

#[test]
fn transactional_offsets_wait_for_their_marker_and_each_producer_is_decided_alone() {
    let mut h = Harness::with_delay(0);
    let (leader, _, generation) = h.stable_pair();
    assert_eq!(h.commit(&leader, generation, 5), 0);
    assert_eq!(
        h.txn_commit(7, &leader, generation, "orders", 10),
        ErrorCode::None
    );
    // Written in producer 7's batch, not applied: readers still see 5, and a fetch that
    // requires stable offsets must wait.
    assert_eq!(h.txn_log.len(), 1);
    assert_eq!(h.txn_log[0].producer_id, 7);
    assert!(matches!(
        &h.txn_log[0].records[..],
        [GroupRecord::Offset { value: Some(v), .. }] if v.offset == 10
    ));
    assert_eq!(h.committed(), Some(5));
    assert!(h.shard.has_pending_offset(GROUP, "orders", 0));
    assert!(!h.shard.has_pending_offset(GROUP, "orders", 1));

    // Producer 8 commits its own offset; producer 7 aborts: only 8's offset lands.
    assert_eq!(
        h.txn_commit(8, &leader, generation, "orders", 20),
        ErrorCode::None
    );
    h.advance(1_000);
    h.shard.complete_transaction(7, false, h.now);
    assert_eq!(h.committed(), Some(5), "an abort drops the pending offset");
    assert!(
        h.shard.has_pending_offset(GROUP, "orders", 0),
        "8's is still open"
    );
    h.shard.complete_transaction(8, true, h.now);
    assert_eq!(h.committed(), Some(20));
    assert!(!h.shard.has_pending_offset(GROUP, "orders", 0));
    // A marker for a producer with nothing pending here changes nothing.
    h.shard.complete_transaction(9, true, h.now);
    assert_eq!(h.committed(), Some(20));
}

#[test]
fn transactional_commits_are_checked_like_commits_and_refused_ones_leave_nothing_pending() {
    let mut h = Harness::with_delay(0);
    let (leader, _, generation) = h.stable_pair();
    assert_eq!(
        h.txn_commit(7, &leader, generation - 1, "orders", 10),
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        h.txn_commit(7, "stranger", generation, "orders", 10),
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        h.txn_commit(7, &leader, generation, "deleted", 10),
        ErrorCode::UnknownTopicOrPartition
    );
    assert!(h.txn_log.is_empty(), "nothing written");
    assert!(!h.shard.has_pending_offset(GROUP, "orders", 0));
    h.shard.complete_transaction(7, true, h.now);
    assert_eq!(h.committed(), None);

    // A simple consumer (no member, generation -1) commits through a transaction into
    // a group nobody joined.
    let mut simple = Harness::with_delay(0);
    assert_eq!(simple.txn_commit(7, "", -1, "orders", 42), ErrorCode::None);
    simple.shard.complete_transaction(7, true, simple.now);
    assert_eq!(simple.committed(), Some(42));
}

#[test]
fn a_load_replays_transactional_offsets_and_decides_them_by_the_markers() {
    let mut h = Harness::with_delay(0);
    let (leader, _, generation) = h.stable_pair();
    assert_eq!(h.commit(&leader, generation, 5), 0);
    assert_eq!(
        h.txn_commit(7, &leader, generation, "orders", 10),
        ErrorCode::None
    );
    assert_eq!(
        h.txn_commit(8, &leader, generation, "orders", 20),
        ErrorCode::None
    );
    // The log: the plain records, both producers' batches, then only 7's marker (commit).
    let mut restored = Harness::with_delay(0);
    for record in h.log.clone() {
        restored.shard.replay(record, restored.now);
    }
    for batch in &h.txn_log {
        for record in batch.records.clone() {
            restored
                .shard
                .replay_transactional(batch.producer_id, record);
        }
    }
    assert_eq!(restored.committed(), Some(5), "undecided offsets wait");
    restored.shard.complete_transaction(7, true, restored.now);
    assert_eq!(restored.committed(), Some(10));
    // 8's transaction is still open after the load, and its abort drops its offset.
    assert!(restored.shard.has_pending_offset(GROUP, "orders", 0));
    restored.shard.complete_transaction(8, false, restored.now);
    assert_eq!(restored.committed(), Some(10));
    assert!(!restored.shard.has_pending_offset(GROUP, "orders", 0));
}
