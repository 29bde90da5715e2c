//! The real `spool server` binary, driven over TCP with requests built by spool-protocol:
//! the Kafka APIs it serves, hostile frames, and a graceful restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use spool_protocol::ErrorCode;
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::*;
use spool_protocol::record_batch::RecordBatches;

mod common;

#[test]
fn produce_fetch_and_list_offsets_through_the_real_binary_survive_a_restart() {
    let dir = temp_dir("roundtrip");
    let server = Server::start(&dir, &["--set", "num.partitions=3"]);
    let mut client = server.connect();

    // ApiVersions advertises what is served, Produce from version 0.
    let ResponseBody::ApiVersions(versions) =
        client.call(RequestBody::ApiVersions(ApiVersionsRequest::default()), 3)
    else {
        panic!()
    };
    let produce_range = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("Produce advertised");
    assert_eq!(produce_range.min_version, 0);
    let mut advertised: Vec<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    let mut served: Vec<i16> = spool_broker::api::IMPLEMENTED
        .iter()
        .map(|k| *k as i16)
        .collect();
    advertised.sort_unstable();
    served.sort_unstable();
    assert_eq!(advertised, served, "exactly the served APIs are advertised");
    // Transactions of KIP-890's version 2 are in force (Java clients look for this).
    let finalized: Vec<(&str, i16, i16)> = versions
        .finalized_features
        .iter()
        .map(|f| (f.name.as_str(), f.min_version_level, f.max_version_level))
        .collect();
    assert!(
        finalized.contains(&("transaction.version", 2, 2)),
        "{finalized:?}"
    );
    assert!(versions.finalized_features_epoch >= 0);

    // Metadata auto-creates the topic with num.partitions partitions.
    let response = metadata(&mut client, "orders");
    assert_eq!(response.topics[0].error_code, ErrorCode::None.code());
    assert_eq!(response.topics[0].partitions.len(), 3);
    assert_ne!(response.topics[0].topic_id, spool_protocol::Uuid::ZERO);

    let first = produce(&mut client, "orders", 0, batch(0, 10), -1);
    assert_eq!((first.error_code, first.base_offset), (0, 0));
    let second = produce(&mut client, "orders", 0, batch(10, 5), 1);
    assert_eq!((second.error_code, second.base_offset), (0, 10));
    let unknown = produce(&mut client, "orders", 7, batch(0, 1), 1);
    assert_eq!(
        unknown.error_code,
        ErrorCode::UnknownTopicOrPartition.code()
    );

    let data = fetch(&mut client, "orders", 0, 100);
    assert_eq!(data.high_watermark, 15);
    assert_eq!(offsets_in(data.records), (0..15).collect::<Vec<_>>());
    let out_of_range = fetch(&mut client, "orders", 99, 100);
    assert_eq!(out_of_range.error_code, ErrorCode::OffsetOutOfRange.code());

    let request = ListOffsetsRequest {
        replica_id: -1,
        topics: vec![list_offsets_request::ListOffsetsTopic {
            name: "orders".into(),
            partitions: vec![list_offsets_request::ListOffsetsPartition {
                partition_index: 0,
                timestamp: -1,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::ListOffsets(offsets) =
        client.call(RequestBody::ListOffsets(request.clone()), 7)
    else {
        panic!()
    };
    assert_eq!(offsets.topics[0].partitions[0].offset, 15);
    // Version 0 (sarama's, without ApiVersions) answers with a list of offsets: the
    // latest or earliest one, none when none is asked for.
    for (timestamp, max_num_offsets, expected) in
        [(-1, 1, vec![15]), (-2, 1, vec![0]), (-1, 0, vec![])]
    {
        let mut old = request.clone();
        old.topics[0].partitions[0].timestamp = timestamp;
        old.topics[0].partitions[0].max_num_offsets = max_num_offsets;
        let ResponseBody::ListOffsets(offsets) = client.call(RequestBody::ListOffsets(old), 0)
        else {
            panic!()
        };
        let partition = &offsets.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0);
        assert_eq!(
            partition.old_style_offsets, expected,
            "timestamp {timestamp}"
        );
    }

    server.stop();
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    let ResponseBody::ListOffsets(offsets) = client.call(RequestBody::ListOffsets(request), 7)
    else {
        panic!()
    };
    assert_eq!(
        offsets.topics[0].partitions[0].offset, 15,
        "every record survived the restart"
    );
    assert_eq!(
        offsets_in(fetch(&mut client, "orders", 12, 100).records),
        vec![10, 11, 12, 13, 14]
    );
    assert_eq!(
        metadata(&mut client, "orders").topics[0].partitions.len(),
        3,
        "topics survived too"
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_long_poll_fetch_returns_when_data_arrives_and_pipelined_responses_keep_their_order() {
    let dir = temp_dir("longpoll");
    let server = Server::start(&dir, &[]);
    let mut consumer = server.connect();
    metadata(&mut consumer, "events");
    // Two pipelined requests: a fetch that must wait, then a metadata request. The
    // metadata answer may only come after the fetch's.
    let fetch_id = consumer.send(RequestBody::Fetch(fetch_request("events", 0, 10_000)), 12);
    let metadata_id = consumer.send(
        RequestBody::Metadata(MetadataRequest {
            topics: None,
            ..Default::default()
        }),
        12,
    );
    let started = Instant::now();
    let mut producer = server.connect();
    produce(&mut producer, "events", 0, batch(0, 3), 1);
    let ResponseBody::Fetch(fetched) = consumer.receive(ApiKey::Fetch, 12, fetch_id) else {
        panic!()
    };
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the fetch returned when data arrived, not at max_wait_ms"
    );
    assert_eq!(
        offsets_in(fetched.responses[0].partitions[0].records.clone()),
        vec![0, 1, 2]
    );
    let ResponseBody::Metadata(_) = consumer.receive(ApiKey::Metadata, 12, metadata_id) else {
        panic!()
    };
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fetch_parked_in_a_long_poll_is_answered_when_the_broker_stops() {
    let dir = temp_dir("longpoll-stop");
    let server = Server::start(&dir, &[]);
    let mut consumer = server.connect();
    metadata(&mut consumer, "events");
    // A long poll longer than the broker gives its connections to finish when it stops.
    let fetch_id = consumer.send(RequestBody::Fetch(fetch_request("events", 0, 60_000)), 12);
    // Parked: no answer yet.
    consumer
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(!consumer.closed(), "the fetch waits for data");
    consumer
        .stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let stopping = std::thread::spawn(move || server.stop());
    let ResponseBody::Fetch(fetched) = consumer.receive(ApiKey::Fetch, 12, fetch_id) else {
        panic!()
    };
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(offsets_in(partition.records.clone()), Vec::<i64>::new());
    // `stop` asserts a clean exit: the logs were closed, not left to recovery.
    stopping.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "stopping took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_frames_close_only_their_own_connection() {
    let dir = temp_dir("hostile");
    let server = Server::start(&dir, &[]);
    let mut good = server.connect();
    metadata(&mut good, "steady");
    let hostile: [&[u8]; 8] = [
        // A frame claiming 2 GiB: refused from its size prefix.
        &[0x7f, 0xff, 0xff, 0xff],
        // Metadata v4 whose topic count claims two billion entries.
        &[
            0, 0, 0, 14, 0, 3, 0, 4, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff,
        ],
        // An unknown API key.
        &[0, 0, 0, 10, 0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
        // A version of Fetch from the future (only ApiVersions answers those).
        &[0, 0, 0, 10, 0, 1, 0, 99, 0, 0, 0, 1, 0xff, 0xff],
        // A frame too short for a request header.
        &[0, 0, 0, 3, 0, 3, 0],
        // A whole header, then the Metadata v4 body is missing.
        &[0, 0, 0, 10, 0, 3, 0, 4, 0, 0, 0, 1, 0xff, 0xff],
        // Garbage.
        &[0, 0, 0, 6, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02],
        // Half a frame, then the client stops sending.
        &[0, 0, 0, 100, 0, 3, 0, 4, 0, 0],
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let mut bad = server.connect();
        bad.stream.write_all(bytes).unwrap();
        if i == hostile.len() - 1 {
            bad.stream.shutdown(Shutdown::Write).unwrap();
        }
        assert!(bad.closed(), "hostile frame {i} closes its connection");
        // The well-behaved client carries on.
        let response = produce(&mut good, "steady", 0, batch(i * 2, 2), -1);
        assert_eq!(
            (response.error_code, response.base_offset),
            (0, i as i64 * 2)
        );
    }
    // An ApiVersions request of a version from the future gets version 0 and the ranges.
    let mut future = server.connect();
    let mut frame = BytesMut::new();
    RequestHeader {
        request_api_key: ApiKey::ApiVersions as i16,
        request_api_version: 99,
        correlation_id: 5,
        client_id: None,
        unknown_tagged_fields: vec![],
    }
    .encode(&mut frame)
    .unwrap();
    frame.extend_from_slice(&[0, 0]);
    let mut framed = (frame.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&frame);
    future.stream.write_all(&framed).unwrap();
    let ResponseBody::ApiVersions(response) = future.receive(ApiKey::ApiVersions, 0, 5) else {
        panic!()
    };
    assert_eq!(response.error_code, ErrorCode::UnsupportedVersion.code());
    assert!(!response.api_keys.is_empty());
    let _ = future.stream.shutdown(Shutdown::Both);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pipelined_produce_requests_are_appended_in_the_order_they_were_sent() {
    let dir = temp_dir("ordering");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "ordered");
    for acks in [1i16, -1] {
        let base = if acks == 1 { 0 } else { 50 };
        // Fifty requests sent back to back before any answer is read.
        let ids: Vec<i32> = (0..50)
            .map(|i| {
                let request = ProduceRequest {
                    acks,
                    timeout_ms: 30_000,
                    topic_data: vec![produce_request::TopicProduceData {
                        name: "ordered".into(),
                        partition_data: vec![produce_request::PartitionProduceData {
                            index: 0,
                            records: Some(batch(base + i, 1)),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                client.send(RequestBody::Produce(request), 9)
            })
            .collect();
        for (i, id) in ids.into_iter().enumerate() {
            let ResponseBody::Produce(response) = client.receive(ApiKey::Produce, 9, id) else {
                panic!()
            };
            assert_eq!(
                response.responses[0].partition_responses[0].base_offset,
                (base + i) as i64,
                "acks={acks}"
            );
        }
    }
    let keys: Vec<String> = RecordBatches::new(
        fetch(&mut client, "ordered", 0, 100)
            .records
            .unwrap_or_default(),
    )
    .flat_map(|b| {
        b.unwrap()
            .records(1 << 20)
            .unwrap()
            .map(|r| String::from_utf8(r.unwrap().key.unwrap().to_vec()).unwrap())
            .collect::<Vec<_>>()
    })
    .collect();
    assert_eq!(
        keys,
        (0..100).map(|i| format!("key-{i}")).collect::<Vec<_>>()
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cluster_log_dirs_leader_epochs_and_paginated_partitions_are_described() {
    let dir = temp_dir("describe");
    let server = Server::start(&dir, &["--set", "num.partitions=3"]);
    let mut client = server.connect();
    metadata(&mut client, "described");
    produce(&mut client, "described", 1, batch(0, 7), -1);

    let ResponseBody::DescribeCluster(cluster) = client.call(
        RequestBody::DescribeCluster(DescribeClusterRequest {
            endpoint_type: 1,
            ..Default::default()
        }),
        2,
    ) else {
        panic!()
    };
    assert_eq!(
        (
            cluster.error_code,
            cluster.controller_id,
            cluster.brokers.len()
        ),
        (0, 0, 1)
    );
    assert_eq!(
        cluster.brokers[0].port.to_string(),
        server.address.rsplit(':').next().unwrap()
    );
    let ResponseBody::DescribeCluster(controllers) = client.call(
        RequestBody::DescribeCluster(DescribeClusterRequest {
            endpoint_type: 2,
            ..Default::default()
        }),
        2,
    ) else {
        panic!()
    };
    assert_eq!(
        controllers.error_code,
        ErrorCode::UnsupportedEndpointType.code()
    );

    let epochs = |current: i32, epoch: i32| OffsetForLeaderEpochRequest {
        replica_id: -1,
        topics: vec![offset_for_leader_epoch_request::OffsetForLeaderTopic {
            topic: "described".into(),
            partitions: vec![offset_for_leader_epoch_request::OffsetForLeaderPartition {
                partition: 1,
                current_leader_epoch: current,
                leader_epoch: epoch,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::OffsetForLeaderEpoch(answer) =
        client.call(RequestBody::OffsetForLeaderEpoch(epochs(0, 0)), 4)
    else {
        panic!()
    };
    let result = &answer.topics[0].partitions[0];
    assert_eq!(
        (result.error_code, result.leader_epoch, result.end_offset),
        (0, 0, 7)
    );
    let ResponseBody::OffsetForLeaderEpoch(answer) =
        client.call(RequestBody::OffsetForLeaderEpoch(epochs(5, 0)), 4)
    else {
        panic!()
    };
    assert_eq!(
        answer.topics[0].partitions[0].error_code,
        ErrorCode::UnknownLeaderEpoch.code()
    );

    let ResponseBody::DescribeLogDirs(dirs) = client.call(
        RequestBody::DescribeLogDirs(DescribeLogDirsRequest {
            topics: None,
            ..Default::default()
        }),
        4,
    ) else {
        panic!()
    };
    let partitions = &dirs.results[0]
        .topics
        .iter()
        .find(|t| t.name == "described")
        .unwrap()
        .partitions;
    assert_eq!(partitions.len(), 3);
    assert!(
        partitions
            .iter()
            .find(|p| p.partition_index == 1)
            .unwrap()
            .partition_size
            > 0
    );
    assert_eq!(
        partitions
            .iter()
            .find(|p| p.partition_index == 0)
            .unwrap()
            .partition_size,
        0
    );

    // Two partitions a page: the cursor carries on where the first page stopped.
    let page = |cursor: Option<describe_topic_partitions_request::Cursor>| {
        DescribeTopicPartitionsRequest {
            topics: vec![describe_topic_partitions_request::TopicRequest {
                name: "described".into(),
                ..Default::default()
            }],
            response_partition_limit: 2,
            cursor,
            ..Default::default()
        }
    };
    let ResponseBody::DescribeTopicPartitions(first) =
        client.call(RequestBody::DescribeTopicPartitions(page(None)), 0)
    else {
        panic!()
    };
    assert_eq!(
        first.topics[0]
            .partitions
            .iter()
            .map(|p| p.partition_index)
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    let cursor = first.next_cursor.expect("a next page");
    assert_eq!(
        (cursor.topic_name.as_str(), cursor.partition_index),
        ("described", 2)
    );
    let next = describe_topic_partitions_request::Cursor {
        topic_name: cursor.topic_name,
        partition_index: cursor.partition_index,
        ..Default::default()
    };
    let ResponseBody::DescribeTopicPartitions(second) =
        client.call(RequestBody::DescribeTopicPartitions(page(Some(next))), 0)
    else {
        panic!()
    };
    assert_eq!(
        second.topics[0]
            .partitions
            .iter()
            .map(|p| p.partition_index)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert!(second.next_cursor.is_none());
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn create_topic(client: &mut Client, name: &str, configs: &[(&str, &str)]) {
    let request = CreateTopicsRequest {
        topics: vec![create_topics_request::CreatableTopic {
            name: name.into(),
            num_partitions: 1,
            replication_factor: 1,
            configs: configs
                .iter()
                .map(|(k, v)| create_topics_request::CreatableTopicConfig {
                    name: (*k).into(),
                    value: Some((*v).into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        timeout_ms: 30_000,
        ..Default::default()
    };
    let ResponseBody::CreateTopics(response) = client.call(RequestBody::CreateTopics(request), 7)
    else {
        panic!()
    };
    assert_eq!(
        response.topics[0].error_code, 0,
        "{:?}",
        response.topics[0].error_message
    );
}

fn earliest_offset(client: &mut Client, topic: &str) -> i64 {
    list_offset(client, topic, -2, -1).offset
}

/// ListOffsets v7 for partition 0 at `timestamp`, as a client at `current_leader_epoch`.
fn list_offset(
    client: &mut Client,
    topic: &str,
    timestamp: i64,
    current_leader_epoch: i32,
) -> list_offsets_response::ListOffsetsPartitionResponse {
    let request = ListOffsetsRequest {
        replica_id: -1,
        topics: vec![list_offsets_request::ListOffsetsTopic {
            name: topic.into(),
            partitions: vec![list_offsets_request::ListOffsetsPartition {
                partition_index: 0,
                current_leader_epoch,
                timestamp,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::ListOffsets(mut response) = client.call(RequestBody::ListOffsets(request), 7)
    else {
        panic!()
    };
    response.topics.remove(0).partitions.remove(0)
}

#[test]
fn retention_and_compaction_run_in_the_background() {
    let dir = temp_dir("maintenance");
    let server = Server::start(&dir, &["--set", "log.retention.check.interval.ms=50"]);
    let mut client = server.connect();
    // Records stamped in 2023 are past a one-hour retention at once.
    create_topic(
        &mut client,
        "expiring",
        &[("segment.bytes", "1024"), ("retention.ms", "3600000")],
    );
    for i in 0..40 {
        produce(&mut client, "expiring", 0, batch(i * 2, 2), 1);
    }
    // Ten keys written over and over on a compacted topic.
    create_topic(
        &mut client,
        "latest",
        &[
            ("segment.bytes", "1024"),
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    for round in 0..20 {
        let mut builder = spool_protocol::record_batch::RecordBatchBuilder::new(
            spool_protocol::compression::Compression::None,
        );
        for key in 0..10 {
            builder
                .append(
                    0,
                    Some(format!("k{key}").as_bytes()),
                    Some(format!("round-{round}").as_bytes()),
                    &[],
                )
                .unwrap();
        }
        produce(&mut client, "latest", 0, builder.build().unwrap(), 1);
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let earliest = earliest_offset(&mut client, "expiring");
        let compacted: Vec<(String, String)> = records_of(&mut client, "latest")
            .into_iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let expired = earliest > 0;
        // The closed segments lost their stale versions; the active segment keeps its own.
        let cleaned = !compacted.is_empty()
            && compacted.len() < 100
            && compacted.iter().filter(|(k, _)| k == "k3").count() < 20;
        if expired && cleaned {
            assert!(earliest < 80, "the active segment stays: {earliest}");
            let latest_k3 = compacted
                .iter()
                .rev()
                .find(|(k, _)| k == "k3")
                .map(|(_, v)| v.clone());
            assert_eq!(
                latest_k3.as_deref(),
                Some("round-19"),
                "the latest value of every key survives"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "maintenance did not run: earliest {earliest}, {} records on the compacted topic",
            compacted.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_from_the_far_future_are_refused_with_invalid_timestamp() {
    let dir = temp_dir("timestamps");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "clocks");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut builder = spool_protocol::record_batch::RecordBatchBuilder::new(
        spool_protocol::compression::Compression::None,
    );
    builder
        .append(
            now + 2 * 3_600_000,
            Some(b"k"),
            Some(b"two hours ahead"),
            &[],
        )
        .unwrap();
    let refused = produce(&mut client, "clocks", 0, builder.build().unwrap(), 1);
    assert_eq!(
        refused.error_code,
        ErrorCode::InvalidTimestamp.code(),
        "Kafka's default: at most an hour ahead"
    );
    let mut builder = spool_protocol::record_batch::RecordBatchBuilder::new(
        spool_protocol::compression::Compression::None,
    );
    builder.append(now, Some(b"k"), Some(b"now"), &[]).unwrap();
    assert_eq!(
        produce(&mut client, "clocks", 0, builder.build().unwrap(), 1).base_offset,
        0
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One fetch request in session `session`/`epoch` by topic ID (v13): `(partition, offset)`
/// pairs to add or update and partitions to forget.
fn session_fetch(
    client: &mut Client,
    topic_id: spool_protocol::Uuid,
    session: (i32, i32),
    partitions: &[(i32, i64)],
    forget: &[i32],
    max_wait_ms: i32,
) -> FetchResponse {
    let request = FetchRequest {
        replica_id: -1,
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 1 << 20,
        session_id: session.0,
        session_epoch: session.1,
        topics: if partitions.is_empty() {
            Vec::new()
        } else {
            vec![fetch_request::FetchTopic {
                topic_id,
                partitions: partitions
                    .iter()
                    .map(|&(partition, fetch_offset)| fetch_request::FetchPartition {
                        partition,
                        fetch_offset,
                        partition_max_bytes: 1 << 20,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }]
        },
        forgotten_topics_data: if forget.is_empty() {
            Vec::new()
        } else {
            vec![fetch_request::ForgottenTopic {
                topic_id,
                partitions: forget.to_vec(),
                ..Default::default()
            }]
        },
        ..Default::default()
    };
    match client.call(RequestBody::Fetch(request), 13) {
        ResponseBody::Fetch(response) => response,
        other => panic!("{other:?}"),
    }
}

/// `(partition, offsets of the records returned)` for every partition in a response.
fn answered(response: &FetchResponse) -> Vec<(i32, Vec<i64>)> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition_index, offsets_in(p.records.clone())))
        .collect()
}

#[test]
fn incremental_fetch_sessions_answer_only_what_changed() {
    let dir = temp_dir("sessions");
    let server = Server::start(&dir, &["--set", "num.partitions=3"]);
    let mut client = server.connect();
    let topic_id = metadata(&mut client, "sessions").topics[0].topic_id;
    produce(&mut client, "sessions", 0, batch(0, 2), -1);
    produce(&mut client, "sessions", 1, batch(0, 2), -1);

    // A full fetch asking for a session (epoch 0) gets every partition and an ID.
    let all = [(0, 0), (1, 0), (2, 0)];
    let full = session_fetch(&mut client, topic_id, (0, 0), &all, &[], 0);
    assert_eq!(full.error_code, 0);
    assert!(full.session_id > 0, "no session: {full:?}");
    let id = full.session_id;
    assert_eq!(
        answered(&full),
        vec![(0, vec![0, 1]), (1, vec![0, 1]), (2, vec![])]
    );

    // The client moves its positions; nothing else changed, so nothing is answered.
    let quiet = session_fetch(&mut client, topic_id, (id, 1), &[(0, 2), (1, 2)], &[], 0);
    assert_eq!((quiet.error_code, quiet.session_id), (0, id));
    assert_eq!(answered(&quiet), vec![]);

    // New records on partition 2 release a long poll that names no partition at all,
    // and only partition 2 is answered.
    let mut producer = server.connect();
    let appender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        produce(&mut producer, "sessions", 2, batch(0, 1), -1)
    });
    let woken = session_fetch(&mut client, topic_id, (id, 2), &[], &[], 10_000);
    assert_eq!(appender.join().unwrap().error_code, 0);
    assert_eq!(answered(&woken), vec![(2, vec![0])]);
    let p2 = &woken.responses[0].partitions[0];
    assert_eq!((p2.high_watermark, p2.log_start_offset), (1, 0));

    // A repeated epoch is refused; the session itself lives on.
    let repeated = session_fetch(&mut client, topic_id, (id, 2), &[], &[], 0);
    assert_eq!(
        (repeated.error_code, repeated.session_id),
        (ErrorCode::InvalidFetchSessionEpoch.code(), 0)
    );
    assert!(repeated.responses.is_empty());

    // Forgotten partitions are no longer read: records on partition 0 go unanswered.
    produce(&mut client, "sessions", 0, batch(2, 1), -1);
    let forgot = session_fetch(&mut client, topic_id, (id, 3), &[(2, 1)], &[0], 0);
    assert_eq!((forgot.error_code, forgot.session_id), (0, id));
    assert_eq!(answered(&forgot), vec![]);
    // Added back, it is read from the position given.
    let added = session_fetch(&mut client, topic_id, (id, 4), &[(0, 2)], &[], 0);
    assert_eq!(answered(&added), vec![(0, vec![2])]);

    // Unknown sessions, and a session by ID continued by name, are refused.
    let unknown = session_fetch(&mut client, topic_id, (id.wrapping_add(1), 1), &[], &[], 0);
    assert_eq!(unknown.error_code, ErrorCode::FetchSessionIdNotFound.code());
    let by_name = FetchRequest {
        replica_id: -1,
        max_bytes: 1 << 20,
        session_id: id,
        session_epoch: 5,
        ..Default::default()
    };
    let ResponseBody::Fetch(by_name) = client.call(RequestBody::Fetch(by_name), 12) else {
        panic!()
    };
    assert_eq!(
        by_name.error_code,
        ErrorCode::FetchSessionTopicIdError.code()
    );

    // Epoch -1 closes the session: a full answer with session ID 0, then the ID is gone.
    let closed = session_fetch(&mut client, topic_id, (id, -1), &[(1, 0)], &[], 0);
    assert_eq!((closed.error_code, closed.session_id), (0, 0));
    assert_eq!(answered(&closed), vec![(1, vec![0, 1])]);
    let gone = session_fetch(&mut client, topic_id, (id, 5), &[], &[], 0);
    assert_eq!(gone.error_code, ErrorCode::FetchSessionIdNotFound.code());

    // With no slots, nobody gets a session.
    server.stop();
    let server = Server::start(
        &dir,
        &["--set", "max.incremental.fetch.session.cache.slots=0"],
    );
    let mut client = server.connect();
    let refused = session_fetch(&mut client, topic_id, (0, 0), &all, &[], 0);
    assert_eq!((refused.error_code, refused.session_id), (0, 0));
    assert_eq!(answered(&refused).len(), 3);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn init_producer_id(client: &mut Client, transactional_id: Option<&str>) -> InitProducerIdResponse {
    let request = InitProducerIdRequest {
        transactional_id: transactional_id.map(str::to_string),
        transaction_timeout_ms: 60_000,
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    };
    match client.call(RequestBody::InitProducerId(request), 4) {
        ResponseBody::InitProducerId(response) => response,
        other => panic!("{other:?}"),
    }
}

/// `count` records from producer `pid` at epoch 0 from sequence `seq`.
fn idempotent_batch(pid: i64, seq: i32, count: usize, transactional: bool) -> bytes::Bytes {
    let mut builder = spool_protocol::record_batch::RecordBatchBuilder::new(
        spool_protocol::compression::Compression::Zstd,
    )
    .producer(pid, 0, seq)
    .transactional(transactional);
    for i in 0..count {
        builder
            .append(
                1_700_000_000_000,
                None,
                Some(format!("v{i}").as_bytes()),
                &[],
            )
            .unwrap();
    }
    builder.build().unwrap()
}

#[test]
fn idempotent_producers_get_ids_and_retries_are_not_written_twice() {
    let dir = temp_dir("idempotent");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "idem");
    let first = init_producer_id(&mut client, None);
    let second = init_producer_id(&mut client, None);
    assert_eq!((first.error_code, first.producer_epoch), (0, 0));
    assert!(second.producer_id > first.producer_id);
    let pid = first.producer_id;

    let appended = produce(
        &mut client,
        "idem",
        0,
        idempotent_batch(pid, 0, 3, false),
        -1,
    );
    assert_eq!((appended.error_code, appended.base_offset), (0, 0));
    produce(
        &mut client,
        "idem",
        0,
        idempotent_batch(pid, 3, 2, false),
        -1,
    );
    // A retry is answered with the original offsets and not written again.
    let retry = produce(
        &mut client,
        "idem",
        0,
        idempotent_batch(pid, 0, 3, false),
        -1,
    );
    assert_eq!((retry.error_code, retry.base_offset), (0, 0));
    let gap = produce(
        &mut client,
        "idem",
        0,
        idempotent_batch(pid, 9, 1, false),
        -1,
    );
    assert_eq!(gap.error_code, ErrorCode::OutOfOrderSequenceNumber.code());
    assert_eq!(records_of(&mut client, "idem").len(), 5);

    // Transactions need the coordinator: before FindCoordinator created its topic, no
    // broker coordinates the ID.
    let txn = init_producer_id(&mut client, Some("payments-tx"));
    assert_eq!(txn.error_code, ErrorCode::NotCoordinator.code());
    let txn_batch = produce(
        &mut client,
        "idem",
        0,
        idempotent_batch(pid, 5, 1, true),
        -1,
    );
    assert_eq!(txn_batch.error_code, ErrorCode::InvalidTxnState.code());

    // After a restart, producer IDs are never reused and retries are still recognised.
    server.stop();
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    let after = init_producer_id(&mut client, None);
    assert!(after.producer_id > second.producer_id, "{after:?}");
    let retry = produce(
        &mut client,
        "idem",
        0,
        idempotent_batch(pid, 3, 2, false),
        -1,
    );
    assert_eq!((retry.error_code, retry.base_offset), (0, 3));
    assert_eq!(records_of(&mut client, "idem").len(), 5);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_clients_view_of_the_leader_epoch_is_checked_by_fetch_and_list_offsets() {
    let dir = temp_dir("epochs");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "epochs");
    produce(&mut client, "epochs", 0, batch(0, 3), -1);
    let fetch_at = |client: &mut Client, epoch: i32| {
        let request = FetchRequest {
            replica_id: -1,
            max_bytes: 1 << 20,
            session_epoch: -1,
            topics: vec![fetch_request::FetchTopic {
                topic: "epochs".into(),
                partitions: vec![fetch_request::FetchPartition {
                    partition: 0,
                    current_leader_epoch: epoch,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let ResponseBody::Fetch(response) = client.call(RequestBody::Fetch(request), 12) else {
            panic!()
        };
        let p = &response.responses[0].partitions[0];
        (p.error_code, offsets_in(p.records.clone()))
    };
    assert_eq!(fetch_at(&mut client, 0), (0, vec![0, 1, 2]));
    assert_eq!(fetch_at(&mut client, -1), (0, vec![0, 1, 2]));
    assert_eq!(
        fetch_at(&mut client, 1),
        (ErrorCode::UnknownLeaderEpoch.code(), vec![])
    );
    assert_eq!(
        list_offset(&mut client, "epochs", -1, 3).error_code,
        ErrorCode::UnknownLeaderEpoch.code()
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// IncrementalAlterConfigs on one broker resource (`""` is the cluster default):
/// `(name, operation, value)` changes; returns the error code.
fn alter_broker(client: &mut Client, broker: &str, changes: &[(&str, i8, Option<&str>)]) -> i16 {
    use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let request = IncrementalAlterConfigsRequest {
        resources: vec![AlterConfigsResource {
            resource_type: 4,
            resource_name: broker.into(),
            configs: changes
                .iter()
                .map(|(name, operation, value)| AlterableConfig {
                    name: (*name).into(),
                    config_operation: *operation,
                    value: value.map(Into::into),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::IncrementalAlterConfigs(response) =
        client.call(RequestBody::IncrementalAlterConfigs(request), 1)
    else {
        panic!()
    };
    response.responses[0].error_code
}

#[test]
fn dynamic_broker_settings_layer_over_the_static_ones_and_govern_live_topics() {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let dir = temp_dir("dynamic-broker");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "governed");
    let big = || {
        let mut builder = spool_protocol::record_batch::RecordBatchBuilder::new(
            spool_protocol::compression::Compression::None,
        );
        builder.append(0, None, Some(&[7u8; 1000]), &[]).unwrap();
        builder.build().unwrap()
    };
    assert_eq!(produce(&mut client, "governed", 0, big(), 1).error_code, 0);

    // The cluster default lowers the limit for every topic without its own value...
    let limit = |value| [("message.max.bytes", SET, Some(value))];
    assert_eq!(alter_broker(&mut client, "", &limit("200")), 0);
    assert_eq!(
        produce(&mut client, "governed", 0, big(), 1).error_code,
        ErrorCode::MessageTooLarge.code()
    );
    // ...this broker's own value outranks it, and deleting that restores the default's.
    assert_eq!(alter_broker(&mut client, "0", &limit("100000")), 0);
    assert_eq!(produce(&mut client, "governed", 0, big(), 1).error_code, 0);
    let remove = [("message.max.bytes", DELETE, None)];
    assert_eq!(alter_broker(&mut client, "0", &remove), 0);
    assert_eq!(
        produce(&mut client, "governed", 0, big(), 1).error_code,
        ErrorCode::MessageTooLarge.code()
    );

    // Every refusal of a broker change is INVALID_REQUEST, as in Kafka.
    let invalid = ErrorCode::InvalidRequest.code();
    assert_eq!(alter_broker(&mut client, "", &limit("lots")), invalid);
    let read_at_start = [("num.partitions", SET, Some("4"))];
    assert_eq!(alter_broker(&mut client, "0", &read_at_start), invalid);
    let unknown = [("no.such.setting", SET, Some("1"))];
    assert_eq!(alter_broker(&mut client, "0", &unknown), invalid);
    assert_eq!(alter_broker(&mut client, "broker-0", &limit("1")), invalid);

    // Describing the empty name lists the cluster-wide settings only, each with its type;
    // the throttle rates are dynamic Long settings like the others.
    let rate = [(
        "follower.replication.throttled.rate",
        SET,
        Some("1000000000"),
    )];
    assert_eq!(alter_broker(&mut client, "", &rate), 0);
    let request = DescribeConfigsRequest {
        resources: vec![describe_configs_request::DescribeConfigsResource {
            resource_type: 4,
            resource_name: String::new(),
            configuration_keys: None,
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::DescribeConfigs(response) =
        client.call(RequestBody::DescribeConfigs(request), 4)
    else {
        panic!()
    };
    let listed: Vec<(String, Option<String>, i8, i8, bool)> = response.results[0]
        .configs
        .iter()
        .map(|c| {
            let value = c.value.clone();
            (
                c.name.clone(),
                value,
                c.config_source,
                c.config_type,
                c.read_only,
            )
        })
        .collect();
    // Source 3 is DYNAMIC_DEFAULT_BROKER_CONFIG; type 5 LONG, 3 INT.
    assert_eq!(
        listed,
        [
            (
                "follower.replication.throttled.rate".into(),
                Some("1000000000".into()),
                3,
                5,
                false
            ),
            ("message.max.bytes".into(), Some("200".into()), 3, 3, false)
        ]
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
