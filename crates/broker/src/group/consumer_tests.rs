//! Consumer groups (KIP-848) driven through the shard with a fake clock.

use std::collections::BTreeMap;

use spool_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use spool_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use spool_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, JoinGroupRequest,
    OffsetCommitRequest,
};
use spool_protocol::{ErrorCode, Uuid};

use super::TopicSource;
use crate::group::shard::{Client, Parked, Shard};
use crate::group::{GroupConfig, GroupRecord};

const GROUP: &str = "cg";
const TOPIC_ID: Uuid = Uuid([7; 16]);
const SESSION_MS: i64 = 45_000;
const REBALANCE_MS: i32 = 30_000;

struct Topics(BTreeMap<String, (Uuid, i32)>);

impl TopicSource for Topics {
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        self.0.get(name).copied()
    }

    fn topic_name(&self, id: &Uuid) -> Option<String> {
        self.0
            .iter()
            .find(|(_, (i, _))| i == id)
            .map(|(n, _)| n.clone())
    }

    fn topic_names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

struct Harness {
    shard: Shard,
    now: i64,
    log: Vec<GroupRecord>,
    topics: Topics,
}

fn shard() -> Shard {
    let mut counter = 0u128;
    Shard::new(
        GroupConfig::default(),
        Box::new(move || {
            counter += 1;
            Uuid::from_u128(counter)
        }),
    )
}

fn client() -> Client {
    Client {
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            shard: shard(),
            now: 1_000_000,
            log: Vec::new(),
            topics: Topics(BTreeMap::from([("t".to_string(), (TOPIC_ID, 4))])),
        }
    }

    fn send(&mut self, request: ConsumerGroupHeartbeatRequest) -> ConsumerGroupHeartbeatResponse {
        let answer = self
            .shard
            .consumer_heartbeat(self.now, &client(), &request, 1, &self.topics);
        self.log.extend(self.shard.take_effects().records);
        answer
    }

    fn join(&mut self, member: &str) -> ConsumerGroupHeartbeatResponse {
        self.send(join_request(member, None))
    }

    /// A heartbeat with the member's epoch and, when given, the partitions of "t" it owns.
    fn beat(
        &mut self,
        member: &str,
        epoch: i32,
        owned: Option<&[i32]>,
    ) -> ConsumerGroupHeartbeatResponse {
        self.send(ConsumerGroupHeartbeatRequest {
            group_id: GROUP.into(),
            member_id: member.into(),
            member_epoch: epoch,
            topic_partitions: owned.map(|ps| {
                vec![TopicPartitions {
                    topic_id: TOPIC_ID,
                    partitions: ps.to_vec(),
                    ..TopicPartitions::default()
                }]
            }),
            ..ConsumerGroupHeartbeatRequest::default()
        })
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        self.shard.tick(self.now);
        self.log.extend(self.shard.take_effects().records);
    }

    fn state(&self) -> String {
        self.shard
            .describe_consumer_group(GROUP, &self.topics)
            .group_state
    }
}

fn join_request(member: &str, instance: Option<&str>) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        group_id: GROUP.into(),
        member_id: member.into(),
        member_epoch: 0,
        instance_id: instance.map(String::from),
        rebalance_timeout_ms: REBALANCE_MS,
        subscribed_topic_names: Some(vec!["t".into()]),
        topic_partitions: Some(Vec::new()),
        ..ConsumerGroupHeartbeatRequest::default()
    }
}

/// The partitions of "t" in the answer's assignment; `None` when it carries none.
fn assigned(answer: &ConsumerGroupHeartbeatResponse) -> Option<Vec<i32>> {
    let assignment = answer.assignment.as_ref()?;
    Some(
        assignment
            .topic_partitions
            .iter()
            .filter(|t| t.topic_id == TOPIC_ID)
            .flat_map(|t| t.partitions.clone())
            .collect(),
    )
}

fn ok(answer: &ConsumerGroupHeartbeatResponse) {
    assert_eq!(answer.error_code, 0, "{:?}", answer.error_message);
}

/// Two members sharing "t", both stable at epoch 2 with partitions [0, 1] and [2, 3].
fn two_stable_members(h: &mut Harness) {
    let a = h.join("a");
    ok(&a);
    assert_eq!((a.member_epoch, assigned(&a)), (1, Some(vec![0, 1, 2, 3])));
    assert_eq!(h.state(), "Stable");
    let b = h.join("b");
    ok(&b);
    // B is at the new epoch but gets nothing A still owns.
    assert_eq!((b.member_epoch, assigned(&b)), (2, Some(vec![])));
    assert_eq!(h.state(), "Reconciling");
    // A must first give up two partitions: its epoch stays until it has.
    let a = h.beat("a", 1, Some(&[0, 1, 2, 3]));
    assert_eq!((a.member_epoch, assigned(&a)), (1, Some(vec![0, 1])));
    let a = h.beat("a", 1, Some(&[0, 1, 2, 3]));
    assert_eq!((a.member_epoch, assigned(&a)), (1, None));
    let a = h.beat("a", 1, Some(&[0, 1]));
    assert_eq!((a.member_epoch, assigned(&a)), (2, None));
    // Now released, the partitions go to B on its next heartbeat.
    let b = h.beat("b", 2, None);
    assert_eq!((b.member_epoch, assigned(&b)), (2, Some(vec![2, 3])));
    assert_eq!(h.state(), "Stable");
}

#[test]
fn a_second_member_gets_partitions_only_after_the_first_revoked_them() {
    let mut h = Harness::new();
    two_stable_members(&mut h);
    let described = h.shard.describe_consumer_group(GROUP, &h.topics);
    assert_eq!((described.group_epoch, described.assignment_epoch), (2, 2));
    assert_eq!(described.assignor_name, "uniform");
    assert_eq!(described.members.len(), 2);
    assert_eq!(
        described.members[1].assignment.topic_partitions[0].topic_name,
        "t"
    );
}

#[test]
fn epochs_are_checked() {
    let mut h = Harness::new();
    two_stable_members(&mut h);
    let code = |a: ConsumerGroupHeartbeatResponse| a.error_code;
    assert_eq!(
        code(h.beat("a", 3, None)),
        ErrorCode::FencedMemberEpoch.code()
    );
    assert_eq!(
        code(h.beat("nobody", 2, None)),
        ErrorCode::UnknownMemberId.code()
    );
    // One epoch behind is fine if the member owns no more than it is assigned (the answer
    // that moved it on was lost)...
    assert_eq!(
        code(h.beat("b", 1, Some(&[2]))),
        ErrorCode::FencedMemberEpoch.code()
    );
    let a = h.beat("a", 1, Some(&[0]));
    ok(&a);
    assert_eq!(a.member_epoch, 2);
    // ...but not without saying what it owns.
    assert_eq!(
        code(h.beat("a", 1, None)),
        ErrorCode::FencedMemberEpoch.code()
    );
}

#[test]
fn a_member_whose_session_lapses_is_fenced_and_its_partitions_move() {
    let mut h = Harness::new();
    two_stable_members(&mut h);
    h.advance(SESSION_MS / 2);
    ok(&h.beat("a", 2, None));
    h.advance(SESSION_MS / 2 + 1);
    // B missed its session: gone, and the group epoch moved.
    assert_eq!(
        h.beat("b", 2, None).error_code,
        ErrorCode::UnknownMemberId.code()
    );
    let a = h.beat("a", 2, None);
    assert_eq!((a.member_epoch, assigned(&a)), (3, Some(vec![0, 1, 2, 3])));
}

#[test]
fn a_member_that_does_not_revoke_in_time_is_fenced() {
    let mut h = Harness::new();
    ok(&h.join("a"));
    ok(&h.join("b"));
    let a = h.beat("a", 1, Some(&[0, 1, 2, 3]));
    assert_eq!(assigned(&a), Some(vec![0, 1]));
    h.advance(i64::from(REBALANCE_MS) - 1);
    ok(&h.beat("b", 2, None));
    h.advance(2);
    assert_eq!(
        h.beat("a", 1, Some(&[0, 1, 2, 3])).error_code,
        ErrorCode::UnknownMemberId.code()
    );
    let b = h.beat("b", 2, None);
    assert_eq!(assigned(&b), Some(vec![0, 1, 2, 3]));
}

#[test]
fn leaving_moves_the_epoch_and_hands_the_partitions_on() {
    let mut h = Harness::new();
    two_stable_members(&mut h);
    let left = h.beat("b", -1, None);
    assert_eq!(
        (left.member_epoch, left.member_id.as_deref()),
        (-1, Some("b"))
    );
    let a = h.beat("a", 2, None);
    assert_eq!((a.member_epoch, assigned(&a)), (3, Some(vec![0, 1, 2, 3])));
    ok(&h.beat("a", -1, None));
    assert_eq!(h.state(), "Empty");
}

#[test]
fn a_static_member_comes_back_under_a_new_id_with_its_partitions() {
    let mut h = Harness::new();
    ok(&h.send(join_request("s1", Some("instance"))));
    ok(&h.join("b"));
    ok(&h.beat("s1", 1, Some(&[0, 1])));
    ok(&h.beat("b", 2, None));
    assert_eq!(h.state(), "Stable");
    // While its instance is active nobody else may take it.
    let clash = h.send(join_request("s2", Some("instance")));
    assert_eq!(clash.error_code, ErrorCode::UnreleasedInstanceId.code());
    let away = h.send(ConsumerGroupHeartbeatRequest {
        instance_id: Some("instance".into()),
        ..ConsumerGroupHeartbeatRequest {
            group_id: GROUP.into(),
            member_id: "s1".into(),
            member_epoch: -2,
            ..ConsumerGroupHeartbeatRequest::default()
        }
    });
    assert_eq!(away.member_epoch, -2);
    let back = h.send(join_request("s2", Some("instance")));
    ok(&back);
    // Same epoch, same partitions: no rebalance for the others.
    assert_eq!((back.member_epoch, assigned(&back)), (2, Some(vec![0, 1])));
    let b = h.beat("b", 2, None);
    assert_eq!((b.member_epoch, assigned(&b)), (2, None));
    assert_eq!(
        h.beat("s1", 2, None).error_code,
        ErrorCode::UnknownMemberId.code()
    );
}

#[test]
fn new_partitions_move_the_group_epoch_and_get_assigned() {
    let mut h = Harness::new();
    ok(&h.join("a"));
    h.topics.0.insert("t".into(), (TOPIC_ID, 6));
    let a = h.beat("a", 1, None);
    assert_eq!(
        (a.member_epoch, assigned(&a)),
        (2, Some(vec![0, 1, 2, 3, 4, 5]))
    );
}

#[test]
fn a_regex_subscription_follows_the_topics_that_match() {
    let mut h = Harness::new();
    let other = Uuid([9; 16]);
    h.topics.0.insert("orders-eu".into(), (other, 2));
    let joined = h.send(ConsumerGroupHeartbeatRequest {
        subscribed_topic_names: None,
        subscribed_topic_regex: Some("orders-.*".into()),
        ..join_request("a", None)
    });
    ok(&joined);
    let topics: Vec<Uuid> = joined
        .assignment
        .iter()
        .flat_map(|a| a.topic_partitions.iter().map(|t| t.topic_id))
        .collect();
    assert_eq!(topics, vec![other]);
    let bad = h.send(ConsumerGroupHeartbeatRequest {
        subscribed_topic_regex: Some("orders-(".into()),
        ..join_request("b", None)
    });
    assert_eq!(bad.error_code, ErrorCode::InvalidRegularExpression.code());
}

#[test]
fn malformed_heartbeats_get_kafkas_errors() {
    let mut h = Harness::new();
    let code = |h: &mut Harness, r| h.send(r).error_code;
    let no_subscription = ConsumerGroupHeartbeatRequest {
        subscribed_topic_names: None,
        ..join_request("a", None)
    };
    assert_eq!(
        code(&mut h, no_subscription),
        ErrorCode::InvalidRequest.code()
    );
    let no_member_id = join_request("", None);
    assert_eq!(code(&mut h, no_member_id), ErrorCode::InvalidRequest.code());
    let assignor = ConsumerGroupHeartbeatRequest {
        server_assignor: Some("sticky".into()),
        ..join_request("a", None)
    };
    assert_eq!(
        code(&mut h, assignor),
        ErrorCode::UnsupportedAssignor.code()
    );
    let bad_epoch = ConsumerGroupHeartbeatRequest {
        member_epoch: -3,
        ..join_request("a", None)
    };
    assert_eq!(code(&mut h, bad_epoch), ErrorCode::InvalidRequest.code());
    // Nothing was created by the refusals.
    assert!(h.log.is_empty());
    assert_eq!(h.shard.group_ids().count(), 0);
    // v0 has the coordinator make the member ID.
    let answer =
        h.shard
            .consumer_heartbeat(h.now, &client(), &join_request("", None), 0, &h.topics);
    ok(&answer);
    assert!(!answer.member_id.unwrap_or_default().is_empty());
}

#[test]
fn the_two_protocols_do_not_share_a_group() {
    let mut h = Harness::new();
    ok(&h.join("a"));
    let join = JoinGroupRequest {
        group_id: GROUP.into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![Default::default()],
        ..JoinGroupRequest::default()
    };
    h.shard.join(h.now, 1, &client(), &join, 5);
    let effects = h.shard.take_effects();
    match &effects.completed[..] {
        [(1, Parked::Join(answer))] => {
            assert_eq!(
                answer.error_code,
                ErrorCode::InconsistentGroupProtocol.code()
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    let classic = h.shard.describe_group(GROUP).expect("described");
    assert_eq!(classic.error_code, ErrorCode::GroupIdNotFound.code());
    let listed = h.shard.list_groups(&[], &["consumer".into()]);
    assert_eq!(listed[0].group_type, "consumer");
    assert!(h.shard.list_groups(&[], &["classic".into()]).is_empty());
    assert_eq!(h.shard.delete_group(GROUP), ErrorCode::NonEmptyGroup);
}

fn commit(h: &mut Harness, member: &str, epoch: i32, version: i16) -> i16 {
    let request = OffsetCommitRequest {
        group_id: GROUP.into(),
        generation_id_or_member_epoch: epoch,
        member_id: member.into(),
        topics: vec![OffsetCommitRequestTopic {
            name: "t".into(),
            partitions: vec![OffsetCommitRequestPartition {
                partition_index: 0,
                committed_offset: 42,
                ..OffsetCommitRequestPartition::default()
            }],
            ..OffsetCommitRequestTopic::default()
        }],
        ..OffsetCommitRequest::default()
    };
    let answer = h
        .shard
        .commit_offsets(h.now, &request, version, &|_, _| true);
    h.log.extend(h.shard.take_effects().records);
    answer.topics[0].partitions[0].error_code
}

#[test]
fn commits_carry_the_member_epoch() {
    let mut h = Harness::new();
    ok(&h.join("a"));
    assert_eq!(commit(&mut h, "a", 1, 9), 0);
    assert_eq!(
        commit(&mut h, "a", 0, 9),
        ErrorCode::StaleMemberEpoch.code()
    );
    assert_eq!(
        commit(&mut h, "a", 1, 8),
        ErrorCode::UnsupportedVersion.code()
    );
    assert_eq!(commit(&mut h, "x", 1, 9), ErrorCode::UnknownMemberId.code());
    assert_eq!(commit(&mut h, "", -1, 9), ErrorCode::UnknownMemberId.code());
    assert_eq!(
        h.shard.check_fetching_member(GROUP, Some("a"), 0),
        Err(ErrorCode::StaleMemberEpoch)
    );
    assert_eq!(h.shard.check_fetching_member(GROUP, Some("a"), 1), Ok(()));
    assert_eq!(h.shard.check_fetching_member(GROUP, None, -1), Ok(()));
    // Once the group is empty, an admin commit is fine; its offsets expire from then on.
    ok(&h.beat("a", -1, None));
    assert_eq!(commit(&mut h, "", -1, 9), 0);
    let retention = GroupConfig::default().offsets_retention_ms;
    h.now += retention + 1;
    h.shard.expire_offsets(h.now);
    h.log.extend(h.shard.take_effects().records);
    assert_eq!(h.shard.group_ids().count(), 0);
}

#[test]
fn a_reloaded_shard_carries_on_where_the_log_ends() {
    let mut h = Harness::new();
    two_stable_members(&mut h);
    ok(&h.join("c"));
    ok(&h.beat("a", 2, Some(&[0, 1])));
    let before = h.shard.describe_consumer_group(GROUP, &h.topics);
    let mut reloaded = shard();
    for record in h.log.clone() {
        let (key, value) = record.encode().expect("encodes");
        let decoded = GroupRecord::decode(key, value)
            .expect("decodes")
            .expect("known");
        reloaded.replay(decoded, h.now);
    }
    let after = reloaded.describe_consumer_group(GROUP, &h.topics);
    assert_eq!(after, before);
    // The members go on with their epochs.
    h.shard = reloaded;
    ok(&h.beat("b", 2, Some(&[2, 3])));
    ok(&h.beat("c", 3, Some(&[])));
}
