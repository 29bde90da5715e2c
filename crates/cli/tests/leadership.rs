//! `spool server` processes as one cluster, driven with spool-protocol's types: a
//! produce or fetch sent to a broker that does not lead the partition is answered
//! NOT_LEADER_OR_FOLLOWER with the leader and its endpoint (KIP-951) from Produce v10 and
//! Fetch v16, and without them before; a leadership that moves to a broker its followers
//! already fetch from takes acks=all writes at once, not after their parked fetches.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Server, batch, produce_request, temp_dir};
use spool_protocol::messages::*;
use spool_protocol::{ErrorCode, Uuid};

const TOPIC: &str = "hints";
const MOVED: &str = "moved";

/// A free port below Linux's ephemeral range (32768 and up), so that between this check
/// and the node's bind no listener on port 0 and no outgoing connection of the tests
/// running alongside can take it. Ports are handed out in turn from a start that depends
/// on the process, so the tests of this binary never pick the same one.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let turn = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (std::process::id().wrapping_mul(7919).wrapping_add(turn) % 12_000);
        let port = u16::try_from(port).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `count` nodes of one cluster, each a voter, with `settings` ("key=value") besides.
/// A node reports its listener once the quorum has formed: all start at once.
fn cluster(name: &str, count: usize, settings: &[&str]) -> Vec<Server> {
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let voters = (0..count)
        .map(|i| format!("{i}@127.0.0.1:{}", ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let starting: Vec<_> = (0..count)
        .map(|i| {
            let dir = temp_dir(&format!("{name}-{i}"));
            let listen = format!(
                "PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:{}",
                ports[i]
            );
            let mut settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
            settings.push(format!("node.id={i}"));
            settings.push(format!("controller.quorum.voters={voters}"));
            settings.push("broker.heartbeat.interval.ms=200".to_string());
            std::thread::spawn(move || {
                let mut extra = Vec::new();
                for setting in &settings {
                    extra.extend(["--set", setting.as_str()]);
                }
                Server::start_listening(&dir, &listen, &extra)
            })
        })
        .collect();
    starting.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Stops (kills) the nodes still running of the `count` [`cluster`] started as `name`,
/// and removes the data of all.
fn remove_cluster(name: &str, count: usize, nodes: Vec<Server>) {
    drop(nodes);
    for i in 0..count {
        // `temp_dir` empties the directory it names.
        temp_dir(&format!("{name}-{i}"));
    }
}

fn metadata(client: &mut Client, topic: &str) -> MetadataResponse {
    let request = MetadataRequest {
        topics: Some(vec![metadata_request::MetadataRequestTopic {
            name: Some(topic.into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    match client.call(RequestBody::Metadata(request), 12) {
        ResponseBody::Metadata(response) => response,
        other => panic!("{other:?}"),
    }
}

/// Waits until `client`'s broker describes partition `index` of `topic` led by `leader`
/// with the ISR `isr` (sorted): (topic ID, the partition's leader epoch).
fn wait_for_leader(
    client: &mut Client,
    (topic, index): (&str, i32),
    leader: i32,
    isr: &[i32],
) -> (Uuid, i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = metadata(client, topic);
        let described = response.topics.first().and_then(|t| {
            let p = t.partitions.iter().find(|p| p.partition_index == index)?;
            let mut in_sync = p.isr_nodes.clone();
            in_sync.sort_unstable();
            (t.error_code == 0 && p.leader_id == leader && in_sync == isr)
                .then_some((t.topic_id, p.leader_epoch))
        });
        if let Some(described) = described {
            return described;
        }
        assert!(Instant::now() < deadline, "no such leader: {response:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates `topic` with partition i on the brokers `assignment[i]`, once every broker it
/// names has registered.
fn create_topic(client: &mut Client, topic: &str, assignment: &[&[i32]]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = CreateTopicsRequest {
            topics: vec![create_topics_request::CreatableTopic {
                name: topic.into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: (0..)
                    .zip(assignment)
                    .map(
                        |(i, brokers)| create_topics_request::CreatableReplicaAssignment {
                            partition_index: i,
                            broker_ids: brokers.to_vec(),
                            ..Default::default()
                        },
                    )
                    .collect(),
                ..Default::default()
            }],
            timeout_ms: 30_000,
            ..Default::default()
        };
        let ResponseBody::CreateTopics(response) =
            client.call(RequestBody::CreateTopics(request), 7)
        else {
            panic!("not a CreateTopics response");
        };
        // Until every broker named has registered, the assignment is refused.
        match response.topics[0].error_code {
            0 => return,
            code => assert!(
                Instant::now() < deadline,
                "the topic was not created: error {code}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three records to partition `index` of `topic`, acks=all.
fn produce(client: &mut Client, (topic, index): (&str, i32), version: i16) -> ProduceResponse {
    let request = produce_request(topic, index, -1, batch(0, 3));
    match client.call(RequestBody::Produce(request), version) {
        ResponseBody::Produce(response) => response,
        other => panic!("{other:?}"),
    }
}

fn fetch(client: &mut Client, topic_id: Uuid, version: i16) -> FetchResponse {
    let request = FetchRequest {
        replica_id: -1,
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        session_epoch: -1,
        topics: vec![fetch_request::FetchTopic {
            topic: TOPIC.into(),
            topic_id,
            partitions: vec![fetch_request::FetchPartition {
                partition: 1,
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
                current_leader_epoch: -1,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    match client.call(RequestBody::Fetch(request), version) {
        ResponseBody::Fetch(response) => response,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broker_that_does_not_lead_a_partition_points_clients_to_its_leader() {
    let nodes = cluster("hints", 2, &[]);
    let mut to_0 = nodes[0].connect();
    let mut to_1 = nodes[1].connect();
    create_topic(&mut to_0, TOPIC, &[&[0], &[1]]);
    let (topic_id, epoch) = wait_for_leader(&mut to_0, (TOPIC, 1), 1, &[1]);
    assert_eq!(
        wait_for_leader(&mut to_1, (TOPIC, 1), 1, &[1]),
        (topic_id, epoch)
    );
    let (host, port) = nodes[1].address.rsplit_once(':').unwrap();
    let leader_endpoint = (1, host.to_string(), port.parse::<i32>().unwrap(), None);

    // Produce v10+: the partition's answer names the leader, the response its endpoint.
    let response = produce(&mut to_0, (TOPIC, 1), 11);
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, ErrorCode::NotLeaderOrFollower.code());
    assert_eq!(
        (
            answer.current_leader.leader_id,
            answer.current_leader.leader_epoch
        ),
        (1, epoch)
    );
    let endpoints: Vec<_> = response
        .node_endpoints
        .iter()
        .map(|e| (e.node_id, e.host.clone(), e.port, e.rack.clone()))
        .collect();
    assert_eq!(endpoints, std::slice::from_ref(&leader_endpoint));
    // Before v10 there is nowhere to say it.
    let response = produce(&mut to_0, (TOPIC, 1), 9);
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, ErrorCode::NotLeaderOrFollower.code());
    assert_eq!(answer.current_leader.leader_id, -1);
    // The leader itself takes the write and adds nothing. Its metadata names it a moment
    // before its replica takes the lead (as in Kafka): a client retries meanwhile.
    let mut response = produce(&mut to_1, (TOPIC, 1), 11);
    for _ in 0..50 {
        let error = response.responses[0].partition_responses[0].error_code;
        if error != ErrorCode::NotLeaderOrFollower.code() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        response = produce(&mut to_1, (TOPIC, 1), 11);
    }
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!((answer.error_code, answer.base_offset), (0, 0));
    assert_eq!(answer.current_leader.leader_id, -1);
    assert!(response.node_endpoints.is_empty());

    // Fetch v16+: node 0 holds no copy of partition 1 at all; the answer is still
    // NOT_LEADER_OR_FOLLOWER (the partition exists), with the leader.
    let response = fetch(&mut to_0, topic_id, 16);
    let answer = &response.responses[0].partitions[0];
    assert_eq!(answer.error_code, ErrorCode::NotLeaderOrFollower.code());
    assert_eq!(
        (
            answer.current_leader.leader_id,
            answer.current_leader.leader_epoch
        ),
        (1, epoch)
    );
    let endpoints: Vec<_> = response
        .node_endpoints
        .iter()
        .map(|e| (e.node_id, e.host.clone(), e.port, e.rack.clone()))
        .collect();
    assert_eq!(endpoints, [leader_endpoint]);
    let response = fetch(&mut to_0, topic_id, 15);
    let answer = &response.responses[0].partitions[0];
    assert_eq!(answer.error_code, ErrorCode::NotLeaderOrFollower.code());
    assert!(response.node_endpoints.is_empty());
    // The leader serves the records.
    let response = fetch(&mut to_1, topic_id, 16);
    let answer = &response.responses[0].partitions[0];
    assert_eq!((answer.error_code, answer.high_watermark), (0, 3));
    assert!(response.node_endpoints.is_empty());
    remove_cluster("hints", 2, nodes);
}

#[test]
fn a_leadership_moved_to_a_broker_its_followers_fetch_from_takes_writes_at_once() {
    // Followers' fetches wait up to 20 s for data: a follower that kept waiting on the
    // fetch it had under way before the move would hold every acks=all write that long.
    let mut nodes = cluster("moved", 3, &["replica.fetch.wait.max.ms=20000"]);
    let mut to_0 = nodes[0].connect();
    // Node 1 fetches "hints" from node 0, where its fetch waits; "moved" is led by node 2.
    create_topic(&mut to_0, TOPIC, &[&[0, 1]]);
    create_topic(&mut to_0, MOVED, &[&[2, 0, 1]]);
    wait_for_leader(&mut to_0, (TOPIC, 0), 0, &[0, 1]);
    wait_for_leader(&mut to_0, (MOVED, 0), 2, &[0, 1, 2]);
    // Node 2 killed: once its session ends, the leadership of "moved" goes to node 0, and
    // node 1 follows it from there.
    drop(nodes.pop());
    wait_for_leader(&mut to_0, (MOVED, 0), 0, &[0, 1]);
    let mut request = produce_request(MOVED, 0, -1, batch(0, 3));
    request.timeout_ms = 5_000;
    let ResponseBody::Produce(response) = to_0.call(RequestBody::Produce(request), 9) else {
        panic!("not a Produce response");
    };
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(
        (ErrorCode::from_wire(answer.error_code), answer.base_offset),
        (ErrorCode::None, 0),
        "the write waited for node 1's parked fetch"
    );
    remove_cluster("moved", 3, nodes);
}
