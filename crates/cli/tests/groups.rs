//! The group coordinator through the real binary: the classic and KIP-848 protocols' calls
//! and the errors Kafka answers bad ones with, a 10 KB group ID, and committed offsets and
//! consumer group members across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use bytes::Bytes;
use common::*;
use spool_protocol::ErrorCode;
use spool_protocol::messages::*;

mod common;

fn find_coordinator(client: &mut Client, keys: &[&str]) -> FindCoordinatorResponse {
    let request = FindCoordinatorRequest {
        key_type: 0,
        coordinator_keys: keys.iter().map(|k| k.to_string()).collect(),
        ..FindCoordinatorRequest::default()
    };
    let ResponseBody::FindCoordinator(response) =
        client.call(RequestBody::FindCoordinator(request), 4)
    else {
        panic!("not a FindCoordinator response")
    };
    response
}

fn join(client: &mut Client, group: &str, member_id: &str) -> JoinGroupResponse {
    let request = JoinGroupRequest {
        group_id: group.into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        member_id: member_id.into(),
        protocol_type: "consumer".into(),
        protocols: vec![join_group_request::JoinGroupRequestProtocol {
            name: "range".into(),
            metadata: Bytes::from_static(b"subscription"),
            ..Default::default()
        }],
        ..JoinGroupRequest::default()
    };
    let ResponseBody::JoinGroup(response) = client.call(RequestBody::JoinGroup(request), 5) else {
        panic!("not a JoinGroup response")
    };
    response
}

fn sync(client: &mut Client, group: &str, member_id: &str, generation: i32) -> SyncGroupResponse {
    let request = SyncGroupRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: member_id.into(),
        assignments: vec![sync_group_request::SyncGroupRequestAssignment {
            member_id: member_id.into(),
            assignment: Bytes::from_static(b"everything"),
            ..Default::default()
        }],
        ..SyncGroupRequest::default()
    };
    let ResponseBody::SyncGroup(response) = client.call(RequestBody::SyncGroup(request), 3) else {
        panic!("not a SyncGroup response")
    };
    response
}

fn heartbeat(client: &mut Client, group: &str, member_id: &str, generation: i32) -> i16 {
    let request = HeartbeatRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: member_id.into(),
        ..HeartbeatRequest::default()
    };
    let ResponseBody::Heartbeat(response) = client.call(RequestBody::Heartbeat(request), 3) else {
        panic!("not a Heartbeat response")
    };
    response.error_code
}

/// Commits `offset` with `metadata` to each `(topic, partition)`; the error per partition.
fn commit(
    client: &mut Client,
    group: &str,
    member_id: &str,
    generation: i32,
    partitions: &[(&str, i32)],
    offset: i64,
    metadata: &str,
) -> Vec<i16> {
    let request = OffsetCommitRequest {
        group_id: group.into(),
        generation_id_or_member_epoch: generation,
        member_id: member_id.into(),
        topics: partitions
            .iter()
            .map(
                |(topic, partition)| offset_commit_request::OffsetCommitRequestTopic {
                    name: topic.to_string(),
                    partitions: vec![offset_commit_request::OffsetCommitRequestPartition {
                        partition_index: *partition,
                        committed_offset: offset,
                        committed_leader_epoch: 0,
                        committed_metadata: Some(metadata.into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .collect(),
        ..OffsetCommitRequest::default()
    };
    let ResponseBody::OffsetCommit(response) = client.call(RequestBody::OffsetCommit(request), 8)
    else {
        panic!("not an OffsetCommit response")
    };
    response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// The committed offsets of `group` (every partition), as (topic, partition, offset, metadata).
fn fetch_offsets(client: &mut Client, group: &str) -> Vec<(String, i32, i64, String)> {
    let request = OffsetFetchRequest {
        groups: vec![offset_fetch_request::OffsetFetchRequestGroup {
            group_id: group.into(),
            topics: None,
            ..Default::default()
        }],
        ..OffsetFetchRequest::default()
    };
    let ResponseBody::OffsetFetch(response) = client.call(RequestBody::OffsetFetch(request), 8)
    else {
        panic!("not an OffsetFetch response")
    };
    assert_eq!(response.groups[0].error_code, 0);
    response.groups[0]
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.clone(),
                    p.partition_index,
                    p.committed_offset,
                    p.metadata.clone().unwrap_or_default(),
                )
            })
        })
        .collect()
}

/// Retries while the coordinator is still loading its partitions after a start.
fn until_loaded<T>(mut call: impl FnMut() -> T, loading: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let result = call();
        if !loading(&result) || std::time::Instant::now() > deadline {
            return result;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_classic_protocol_answers_bad_calls_with_kafkas_errors_and_offsets_survive_a_restart() {
    let dir = temp_dir("groups");
    let settings = [
        "--set",
        "num.partitions=2",
        "--set",
        "group.initial.rebalance.delay.ms=0",
    ];
    let server = Server::start(&dir, &settings);
    let mut client = server.connect();
    metadata(&mut client, "orders");

    // Batched FindCoordinator: this broker coordinates every group.
    let found = find_coordinator(&mut client, &["g", "h"]);
    let port: i32 = server.address.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(found.coordinators.len(), 2);
    for coordinator in &found.coordinators {
        assert_eq!(
            (
                coordinator.error_code,
                coordinator.node_id,
                coordinator.port
            ),
            (0, 0, port)
        );
    }

    // A new member first gets its ID with MEMBER_ID_REQUIRED, then joins with it.
    let first = join(&mut client, "g", "");
    assert_eq!(first.error_code, ErrorCode::MemberIdRequired.code());
    let member = first.member_id;
    let joined = join(&mut client, "g", &member);
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader, member);
    let generation = joined.generation_id;
    let synced = sync(&mut client, "g", &member, generation);
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (0, &b"everything"[..])
    );

    // Bad calls get Kafka's error codes.
    assert_eq!(heartbeat(&mut client, "g", &member, generation), 0);
    assert_eq!(
        heartbeat(&mut client, "g", &member, generation + 1),
        ErrorCode::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&mut client, "g", "nobody", generation),
        ErrorCode::UnknownMemberId.code()
    );
    assert_eq!(
        join(&mut client, "g", "nobody").error_code,
        ErrorCode::UnknownMemberId.code()
    );
    assert_eq!(
        commit(
            &mut client,
            "g",
            &member,
            generation + 5,
            &[("orders", 0)],
            1,
            ""
        ),
        [ErrorCode::IllegalGeneration.code()]
    );
    assert_eq!(
        commit(
            &mut client,
            "g",
            &member,
            generation,
            &[("orders", 0), ("orders", 7), ("missing", 0)],
            42,
            "m"
        ),
        [
            0,
            ErrorCode::UnknownTopicOrPartition.code(),
            ErrorCode::UnknownTopicOrPartition.code()
        ]
    );
    assert_eq!(
        commit(
            &mut client,
            "g",
            &member,
            generation,
            &[("orders", 1)],
            1,
            &"x".repeat(4097)
        ),
        [ErrorCode::OffsetMetadataTooLarge.code()]
    );

    // A 10 KB group ID is a group like any other.
    let long = "g".repeat(10 * 1024);
    assert_eq!(
        find_coordinator(&mut client, &[&long]).coordinators[0].error_code,
        0
    );
    assert_eq!(
        commit(&mut client, &long, "", -1, &[("orders", 1)], 7, ""),
        [0]
    );
    assert_eq!(
        fetch_offsets(&mut client, &long),
        [("orders".to_string(), 1, 7, String::new())]
    );

    // Only the coordinator writes to its topic.
    let refused = produce(&mut client, "__consumer_offsets", 0, batch(0, 1), 1);
    assert_eq!(refused.error_code, ErrorCode::InvalidTopicException.code());

    // The coordinator is still healthy, and the commits survive a restart.
    assert_eq!(heartbeat(&mut client, "g", &member, generation), 0);
    server.stop();
    let server = Server::start(&dir, &settings);
    let mut client = server.connect();
    let offsets = until_loaded(
        || {
            let request = OffsetFetchRequest {
                groups: vec![offset_fetch_request::OffsetFetchRequestGroup {
                    group_id: "g".into(),
                    topics: None,
                    ..Default::default()
                }],
                ..OffsetFetchRequest::default()
            };
            client.call(RequestBody::OffsetFetch(request), 8)
        },
        |response| {
            matches!(response, ResponseBody::OffsetFetch(r)
                if r.groups[0].error_code == ErrorCode::CoordinatorLoadInProgress.code())
        },
    );
    let ResponseBody::OffsetFetch(offsets) = offsets else {
        panic!("not an OffsetFetch response")
    };
    let partition = &offsets.groups[0].topics[0].partitions[0];
    assert_eq!(
        (partition.partition_index, partition.committed_offset),
        (0, 42)
    );
    assert_eq!(partition.metadata.as_deref(), Some("m"));
    // The member is back in its generation after the restart.
    assert_eq!(heartbeat(&mut client, "g", &member, generation), 0);
    assert_eq!(fetch_offsets(&mut client, &long).len(), 1);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn consumer_heartbeat(
    client: &mut Client,
    group: &str,
    member_id: &str,
    epoch: i32,
    regex: Option<&str>,
) -> ConsumerGroupHeartbeatResponse {
    let joining = epoch == 0;
    let request = ConsumerGroupHeartbeatRequest {
        group_id: group.into(),
        member_id: member_id.into(),
        member_epoch: epoch,
        rebalance_timeout_ms: if joining { 10_000 } else { -1 },
        subscribed_topic_names: (joining && regex.is_none()).then(|| vec!["orders".into()]),
        subscribed_topic_regex: regex.map(String::from),
        topic_partitions: joining.then(Vec::new),
        ..ConsumerGroupHeartbeatRequest::default()
    };
    let ResponseBody::ConsumerGroupHeartbeat(response) =
        client.call(RequestBody::ConsumerGroupHeartbeat(request), 1)
    else {
        panic!("not a ConsumerGroupHeartbeat response")
    };
    response
}

#[test]
fn the_consumer_protocol_answers_bad_calls_with_kafkas_errors_and_members_survive_a_restart() {
    let dir = temp_dir("consumer-groups");
    let settings = ["--set", "num.partitions=2"];
    let server = Server::start(&dir, &settings);
    let mut client = server.connect();
    let topic_id = metadata(&mut client, "orders").topics[0].topic_id;
    assert_eq!(
        find_coordinator(&mut client, &["cg"]).coordinators[0].error_code,
        0
    );

    // The broker assigns: the one member gets both partitions, as topic IDs.
    let joined = until_loaded(
        || consumer_heartbeat(&mut client, "cg", "m1", 0, None),
        |r| r.error_code == ErrorCode::CoordinatorLoadInProgress.code(),
    );
    assert_eq!((joined.error_code, joined.member_epoch), (0, 1));
    let assignment = joined.assignment.expect("an assignment");
    assert_eq!(assignment.topic_partitions[0].topic_id, topic_id);
    assert_eq!(assignment.topic_partitions[0].partitions, [0, 1]);
    // Consumers learn names from IDs through Metadata.
    let by_id = MetadataRequest {
        topics: Some(vec![metadata_request::MetadataRequestTopic {
            name: None,
            topic_id,
            ..Default::default()
        }]),
        ..MetadataRequest::default()
    };
    let ResponseBody::Metadata(found) = client.call(RequestBody::Metadata(by_id), 12) else {
        panic!("not a Metadata response")
    };
    assert_eq!(found.topics[0].name.as_deref(), Some("orders"));

    // Bad calls get Kafka's error codes.
    let code = |r: ConsumerGroupHeartbeatResponse| r.error_code;
    assert_eq!(
        code(consumer_heartbeat(&mut client, "cg", "m1", 7, None)),
        ErrorCode::FencedMemberEpoch.code()
    );
    assert_eq!(
        code(consumer_heartbeat(&mut client, "cg", "nobody", 1, None)),
        ErrorCode::UnknownMemberId.code()
    );
    assert_eq!(
        code(consumer_heartbeat(
            &mut client,
            "cg",
            "m2",
            0,
            Some("orders-(")
        )),
        ErrorCode::InvalidRegularExpression.code()
    );
    assert_eq!(
        code(consumer_heartbeat(&mut client, "cg", "", 0, None)),
        ErrorCode::InvalidRequest.code()
    );
    assert_eq!(
        join(&mut client, "cg", "").error_code,
        ErrorCode::InconsistentGroupProtocol.code()
    );
    let long = "c".repeat(10 * 1024);
    assert_eq!(
        find_coordinator(&mut client, &[&long]).coordinators[0].error_code,
        0
    );
    assert_eq!(
        code(consumer_heartbeat(
            &mut client,
            &long,
            "m1",
            0,
            Some("ord.*")
        )),
        0
    );

    // The member and its epoch survive a restart.
    server.stop();
    let server = Server::start(&dir, &settings);
    let mut client = server.connect();
    let again = until_loaded(
        || consumer_heartbeat(&mut client, "cg", "m1", 1, None),
        |r| r.error_code == ErrorCode::CoordinatorLoadInProgress.code(),
    );
    assert_eq!((again.error_code, again.member_epoch), (0, 1));
    let ResponseBody::ConsumerGroupDescribe(described) = client.call(
        RequestBody::ConsumerGroupDescribe(ConsumerGroupDescribeRequest {
            group_ids: vec!["cg".into(), "missing".into()],
            ..ConsumerGroupDescribeRequest::default()
        }),
        0,
    ) else {
        panic!("not a ConsumerGroupDescribe response")
    };
    let group = &described.groups[0];
    assert_eq!(
        (group.group_state.as_str(), group.members.len()),
        ("Stable", 1)
    );
    assert_eq!(
        group.members[0].assignment.topic_partitions[0].topic_name,
        "orders"
    );
    assert_eq!(
        described.groups[1].error_code,
        ErrorCode::GroupIdNotFound.code()
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
