//! Two `spool server` processes as one cluster: a produce or fetch sent to the broker
//! that does not lead the partition is answered NOT_LEADER_OR_FOLLOWER with the leader
//! and its endpoint (KIP-951) from Produce v10 and Fetch v16, and without them before.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Client, Server, batch, produce_request, temp_dir};
use spool_protocol::messages::*;
use spool_protocol::{ErrorCode, Uuid};

const TOPIC: &str = "hints";

fn free_port() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// Node `id` of a cluster whose voters are `voters`, with its controller on `port`.
fn node(name: &str, id: i32, port: u16, voters: &str) -> Server {
    let dir = temp_dir(&format!("{name}-{id}"));
    let listen = format!("PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:{port}");
    let settings = [
        format!("node.id={id}"),
        format!("controller.quorum.voters={voters}"),
        "broker.heartbeat.interval.ms=200".to_string(),
    ];
    let mut extra = Vec::new();
    for setting in &settings {
        extra.extend(["--set", setting.as_str()]);
    }
    Server::start_listening(&dir, &listen, &extra)
}

fn metadata(client: &mut Client) -> MetadataResponse {
    let request = MetadataRequest {
        topics: Some(vec![metadata_request::MetadataRequestTopic {
            name: Some(TOPIC.into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    match client.call(RequestBody::Metadata(request), 12) {
        ResponseBody::Metadata(response) => response,
        other => panic!("{other:?}"),
    }
}

/// Waits until `client`'s broker describes the topic with partition 1 led by node 1:
/// (topic ID, partition 1's leader epoch).
fn wait_for_topic(client: &mut Client) -> (Uuid, i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = metadata(client);
        let described = response.topics.first().and_then(|t| {
            let p = t.partitions.iter().find(|p| p.partition_index == 1)?;
            (t.error_code == 0 && p.leader_id == 1).then_some((t.topic_id, p.leader_epoch))
        });
        if let Some(described) = described {
            return described;
        }
        assert!(
            Instant::now() < deadline,
            "the topic did not show: {response:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_topic(client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = CreateTopicsRequest {
            topics: vec![create_topics_request::CreatableTopic {
                name: TOPIC.into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: (0..2)
                    .map(|i| create_topics_request::CreatableReplicaAssignment {
                        partition_index: i,
                        broker_ids: vec![i],
                        ..Default::default()
                    })
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
        // Until both brokers have registered, a replica on node 1 is refused.
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

fn produce(client: &mut Client, version: i16) -> ProduceResponse {
    let request = produce_request(TOPIC, 1, -1, batch(0, 3));
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
    let ports = [free_port(), free_port()];
    let voters = format!("0@127.0.0.1:{},1@127.0.0.1:{}", ports[0], ports[1]);
    // A node reports its listener once the quorum has formed: start both at once.
    let starting: Vec<_> = (0..2)
        .map(|i| {
            let voters = voters.clone();
            std::thread::spawn(move || node("hints", i, ports[i as usize], &voters))
        })
        .collect();
    let nodes: Vec<Server> = starting.into_iter().map(|t| t.join().unwrap()).collect();
    let mut to_0 = nodes[0].connect();
    let mut to_1 = nodes[1].connect();
    create_topic(&mut to_0);
    let (topic_id, epoch) = wait_for_topic(&mut to_0);
    assert_eq!(wait_for_topic(&mut to_1), (topic_id, epoch));
    let (host, port) = nodes[1].address.rsplit_once(':').unwrap();
    let leader_endpoint = (1, host.to_string(), port.parse::<i32>().unwrap(), None);

    // Produce v10+: the partition's answer names the leader, the response its endpoint.
    let response = produce(&mut to_0, 11);
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
    let response = produce(&mut to_0, 9);
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, ErrorCode::NotLeaderOrFollower.code());
    assert_eq!(answer.current_leader.leader_id, -1);
    // The leader itself takes the write and adds nothing.
    let response = produce(&mut to_1, 11);
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
}
