//! spool-client against the real broker: admin calls, a producer whose keyed records land
//! where the Java default partitioner puts them, and a consumer that reads them back from
//! an offset, a time, the start and the end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

mod common;

use std::collections::BTreeMap;

use common::{Server, temp_dir};
use spool_client::partitioner::partition_for_key;
use spool_client::{
    Acks, Admin, Client, ClientConfig, Compression, ConfigChange, ConfigResource, Consumer,
    ConsumerConfig, ErrorCode, IsolationLevel, NewTopic, OffsetReset, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use spool_protocol::record_batch::{RecordBatch, RecordBatches};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn topic(name: &str, partitions: i32) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions: Some(partitions),
        replication_factor: Some(1),
        configs: BTreeMap::new(),
    }
}

#[test]
fn admin_creates_describes_alters_grows_and_deletes_a_topic() {
    let dir = temp_dir("client-admin");
    let server = Server::start(&dir, &[]);
    runtime().block_on(async {
        let admin = Admin::new(
            Client::connect(ClientConfig::new(&server.address))
                .await
                .unwrap(),
        );
        let mut orders = topic("orders", 3);
        orders
            .configs
            .insert("retention.ms".into(), "3600000".into());
        admin.create_topics(&[orders.clone()], false).await.unwrap();
        let again = admin.create_topics(&[orders], false).await.unwrap_err();
        assert_eq!(again.code(), Some(ErrorCode::TopicAlreadyExists));
        assert!(again.to_string().contains("topic orders"), "{again}");

        let described = admin.describe_topic("orders").await.unwrap();
        assert_eq!(described.partitions.len(), 3);
        assert!(
            described
                .partitions
                .iter()
                .all(|p| p.leader == 0 && p.replicas == [0])
        );

        let retention = |entries: Vec<spool_client::ConfigEntry>| {
            entries
                .into_iter()
                .find(|e| e.name == "retention.ms")
                .and_then(|e| e.value)
        };
        let configs = admin
            .describe_configs(ConfigResource::Topic, "orders", None)
            .await
            .unwrap();
        assert_eq!(retention(configs).as_deref(), Some("3600000"));
        admin
            .alter_configs(
                ConfigResource::Topic,
                "orders",
                &[ConfigChange::Set("retention.ms".into(), "60000".into())],
                false,
            )
            .await
            .unwrap();
        let configs = admin
            .describe_configs(ConfigResource::Topic, "orders", None)
            .await
            .unwrap();
        assert_eq!(retention(configs).as_deref(), Some("60000"));
        let bad = admin
            .alter_configs(
                ConfigResource::Topic,
                "orders",
                &[ConfigChange::Set("retention.ms".into(), "soon".into())],
                false,
            )
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Some(ErrorCode::InvalidConfig), "{bad}");

        admin.create_partitions("orders", 5, false).await.unwrap();
        assert_eq!(
            admin
                .describe_topic("orders")
                .await
                .unwrap()
                .partitions
                .len(),
            5
        );
        let shrink = admin
            .create_partitions("orders", 2, false)
            .await
            .unwrap_err();
        assert_eq!(
            shrink.code(),
            Some(ErrorCode::InvalidPartitions),
            "{shrink}"
        );

        let cluster = admin.cluster().await.unwrap();
        assert!(cluster.topics.contains_key("orders"));
        assert_eq!(cluster.brokers.len(), 1);
        admin.delete_topics(&["orders".into()]).await.unwrap();
        let gone = admin.describe_topic("orders").await.unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::UnknownTopicOrPartition));
    });
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn produced_records_land_where_the_java_partitioner_puts_them_and_read_back_in_order() {
    let dir = temp_dir("client-produce");
    let server = Server::start(&dir, &[]);
    runtime().block_on(async {
        let client = Client::connect(ClientConfig::new(&server.address))
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topics(&[topic("events", 6)], false)
            .await
            .unwrap();
        for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
            let producer = Producer::new(
                client.clone(),
                ProducerConfig {
                    compression,
                    batch_size: 4096,
                    ..Default::default()
                },
            );
            let mut deliveries = Vec::new();
            for i in 0..300 {
                let key = format!("key-{}", i % 17);
                let record = ProducerRecord::new("events", format!("{compression:?}-{i}"))
                    .key(key.clone())
                    .header("n", i.to_string());
                deliveries.push((key, producer.send(record).await.unwrap()));
            }
            producer.flush().await;
            let mut last: BTreeMap<i32, i64> = BTreeMap::new();
            for (key, delivery) in deliveries {
                let written = delivery.wait().await.unwrap();
                assert_eq!(
                    written.partition,
                    partition_for_key(key.as_bytes(), 6),
                    "{key}"
                );
                // Offsets within a partition follow the order of sends.
                if let Some(before) = last.insert(written.partition, written.offset) {
                    assert_eq!(
                        written.offset,
                        before + 1,
                        "{compression:?} {key} {written:?}"
                    );
                }
            }
            producer.close().await;
        }

        let mut consumer = Consumer::new(
            client.clone(),
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                ..Default::default()
            },
        );
        let partitions = consumer.partitions_of("events").await.unwrap();
        consumer.assign(partitions.clone());
        let mut read = Vec::new();
        while read.len() < 900 {
            let records = consumer.poll().await.unwrap();
            assert!(!records.is_empty(), "records stop at {}", read.len());
            read.extend(records);
        }
        assert_eq!(read.len(), 900);
        for partition in 0..6 {
            let offsets: Vec<i64> = read
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| r.offset)
                .collect();
            assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
        }
        let first = read
            .iter()
            .find(|r| r.value.as_deref() == Some(&b"Zstd-0"[..]))
            .unwrap();
        assert_eq!(first.key.as_deref(), Some(&b"key-0"[..]));
        assert_eq!(first.headers, vec![("n".to_string(), Some("0".into()))]);

        // By time: every record is older than now, so the end; by offset; at the end.
        let tp = ("events".to_string(), first.partition);
        consumer.assign([tp.clone()]);
        consumer
            .seek(
                std::slice::from_ref(&tp),
                OffsetSpec::Timestamp(first.timestamp_ms),
            )
            .await
            .unwrap();
        let from_time = consumer.position(&tp).unwrap();
        assert!(from_time <= first.offset);
        consumer
            .seek(std::slice::from_ref(&tp), OffsetSpec::Offset(first.offset))
            .await
            .unwrap();
        let records = consumer.poll().await.unwrap();
        assert_eq!(records[0].value, first.value);
        consumer
            .seek(std::slice::from_ref(&tp), OffsetSpec::Latest)
            .await
            .unwrap();
        assert_eq!(consumer.position(&tp), consumer.high_watermark(&tp));
        assert!(consumer.poll().await.unwrap().is_empty());

        // acks=0: delivered without offsets, and readable.
        let fire_and_forget = Producer::new(
            client.clone(),
            ProducerConfig {
                acks: Acks::None,
                ..Default::default()
            },
        );
        let delivery = fire_and_forget
            .send(ProducerRecord::new("events", "unacked").partition(first.partition))
            .await
            .unwrap();
        fire_and_forget.flush().await;
        assert_eq!(delivery.wait().await.unwrap().offset, -1);
        let mut tail = Vec::new();
        for _ in 0..20 {
            tail.extend(consumer.poll().await.unwrap());
            if !tail.is_empty() {
                break;
            }
        }
        assert_eq!(tail[0].value.as_deref(), Some(&b"unacked"[..]));
    });
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The batches of partition 0 of `topic` below offset `end`, fetch after fetch.
fn batches_of(server: &Server, topic: &str, end: i64) -> Vec<RecordBatch> {
    let mut raw = server.connect();
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < end {
        let data = common::fetch(&mut raw, topic, offset, 0);
        for batch in RecordBatches::new(data.records.unwrap_or_default()) {
            let batch = batch.unwrap();
            offset = batch.last_offset() + 1;
            batches.push(batch);
        }
    }
    batches
}

/// Per run of batches from one producer: its ID, epoch, batch count and record count.
/// Every base sequence must be the count of records that producer wrote before it (-1
/// without a producer ID).
fn numbering(batches: &[RecordBatch]) -> Vec<(i64, i16, usize, i32)> {
    let mut producers: Vec<(i64, i16, usize, i32)> = Vec::new();
    for batch in batches {
        let id = batch.producer_id();
        if producers.last().is_none_or(|p| p.0 != id) {
            producers.push((id, batch.producer_epoch(), 0, 0));
        }
        let current = producers.last_mut().unwrap();
        let expected_sequence = if id < 0 { -1 } else { current.3 };
        assert_eq!(batch.base_sequence(), expected_sequence, "{batch:?}");
        current.2 += 1;
        current.3 += batch.record_count();
    }
    producers
}

#[test]
fn an_idempotent_producer_numbers_each_batch_and_a_plain_one_does_not() {
    let dir = temp_dir("client-idempotent");
    let server = Server::start(&dir, &[]);
    let delivered = runtime().block_on(async {
        let client = Client::connect(ClientConfig::new(&server.address))
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topics(&[topic("numbered", 1)], false)
            .await
            .unwrap();
        let mut delivered = Vec::new();
        for (idempotence, records) in [(true, 600), (true, 50), (false, 100)] {
            let producer = Producer::new(
                client.clone(),
                ProducerConfig {
                    idempotence,
                    batch_size: 1024,
                    ..Default::default()
                },
            );
            let mut deliveries = Vec::new();
            for i in 0..records {
                let record = ProducerRecord::new("numbered", format!("record-{i:04}"));
                deliveries.push(producer.send(record).await.unwrap());
            }
            producer.close().await;
            for delivery in deliveries {
                delivered.push(delivery.wait().await.unwrap().offset);
            }
        }
        delivered
    });
    assert_eq!(delivered, (0..750).collect::<Vec<i64>>());

    let producers = numbering(&batches_of(&server, "numbered", 750));
    assert_eq!(producers.len(), 3, "{producers:?}");
    let (first, second, plain) = (producers[0], producers[1], producers[2]);
    assert!(
        first.0 >= 0 && second.0 >= 0 && first.0 != second.0,
        "{producers:?}"
    );
    assert_eq!((first.1, first.3, second.3), (0, 600, 50));
    assert!(first.2 > 10, "600 records of 1 KiB batches: {first:?}");
    assert_eq!((plain.0, plain.1, plain.3), (-1, -1, 100));
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_idempotent_producer_starts_over_under_a_new_id_after_a_batch_fails() {
    let dir = temp_dir("client-idempotent-reset");
    let server = Server::start(&dir, &[]);
    let (before, refused, after) = runtime().block_on(async {
        let client = Client::connect(ClientConfig::new(&server.address))
            .await
            .unwrap();
        let mut small = topic("small", 1);
        small
            .configs
            .insert("max.message.bytes".into(), "2000".into());
        Admin::new(client.clone())
            .create_topics(&[small], false)
            .await
            .unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                batch_size: 1024,
                linger: std::time::Duration::from_millis(50),
                ..Default::default()
            },
        );
        let send = async |value: String| {
            producer
                .send(ProducerRecord::new("small", value))
                .await
                .unwrap()
        };
        let mut before = Vec::new();
        for i in 0..100 {
            before.push(send(format!("before-{i:03}")).await);
        }
        // Alone in its batch (it overflows any other), and over the topic's limit.
        let refused = send("x".repeat(5000)).await;
        let mut after = Vec::new();
        for i in 0..100 {
            after.push(send(format!("after-{i:03}")).await);
        }
        producer.close().await;
        let offsets = |deliveries: Vec<spool_client::Delivery>| async move {
            let mut offsets = Vec::new();
            for d in deliveries {
                offsets.push(d.wait().await.map(|m| m.offset));
            }
            offsets
        };
        (
            offsets(before).await,
            refused.wait().await,
            offsets(after).await,
        )
    });
    let code = refused.unwrap_err().code();
    assert_eq!(code, Some(ErrorCode::MessageTooLarge));
    let delivered: Vec<i64> = before
        .into_iter()
        .chain(after)
        .map(Result::unwrap)
        .collect();
    assert_eq!(delivered, (0..200).collect::<Vec<i64>>());

    // The batches after the refused one went under a second producer ID, numbered from 0.
    let ids = numbering(&batches_of(&server, "small", 200));
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids[0].0 >= 0 && ids[1].0 >= 0 && ids[0].0 != ids[1].0,
        "{ids:?}"
    );
    assert_eq!((ids[0].3, ids[1].3), (100, 100));
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Consumers in one group: the first takes every partition and commits; a second joins,
/// the partitions split between them, and together they read each new record once;
/// closing commits and leaves, and the group is left empty with its offsets at the ends.
#[test]
fn group_members_share_partitions_commit_rebalance_and_leave() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let dir = temp_dir("client-group");
    let server = Server::start(&dir, &[]);
    runtime().block_on(async {
        let client = Client::connect(ClientConfig::new(&server.address))
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin
            .create_topics(&[topic("events", 4)], false)
            .await
            .unwrap();
        let produce = |from: usize, to: usize| {
            let producer = Producer::new(client.clone(), ProducerConfig::default());
            async move {
                for i in from..to {
                    let record =
                        ProducerRecord::new("events", format!("v{i}")).key(format!("k{i}"));
                    producer.send(record).await.unwrap();
                }
                producer.flush().await;
            }
        };
        let member = |auto_commit: Option<Duration>| {
            let mut consumer = Consumer::new(
                client.clone(),
                ConsumerConfig {
                    group_id: Some("readers".into()),
                    auto_offset_reset: OffsetReset::Earliest,
                    session_timeout: Duration::from_secs(6),
                    rebalance_timeout: Duration::from_secs(10),
                    heartbeat_interval: Duration::from_millis(200),
                    auto_commit_interval: auto_commit,
                    max_wait: Duration::from_millis(100),
                    ..Default::default()
                },
            );
            consumer.subscribe(["events".to_string()]).unwrap();
            consumer
        };
        let all: Vec<(String, i32)> = (0..4).map(|p| ("events".to_string(), p)).collect();

        produce(0, 40).await;
        // The first member commits by hand here, and on rejoining and closing later.
        let mut first = member(Some(Duration::from_secs(3600)));
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while read < 40 && Instant::now() < deadline {
            read += first.poll().await.unwrap().len();
        }
        assert_eq!(read, 40);
        assert_eq!(first.assignment(), all);
        assert!(first.group_generation().is_some());
        first.commit().await.unwrap();
        let ends = admin
            .list_offsets(&all, OffsetSpec::Latest, IsolationLevel::ReadUncommitted)
            .await
            .unwrap();
        assert_eq!(admin.committed_offsets("readers").await.unwrap(), ends);
        // A commit for another generation is refused with the code the Java client
        // acts on.
        let refused = Admin::new(client.clone())
            .commit_offsets("readers", &ends)
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Some(ErrorCode::UnknownMemberId),
            "{refused}"
        );

        // A second member joins: both poll until they share one generation that splits
        // the partitions, and every new record has been read.
        produce(40, 60).await;
        let second = member(Some(Duration::from_millis(300)));
        let seen: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
        type Standing = Arc<Mutex<BTreeMap<&'static str, (Option<i32>, Vec<(String, i32)>)>>>;
        let standing: Standing = Arc::default();
        let run = |name: &'static str, mut consumer: Consumer| {
            let (seen, standing) = (Arc::clone(&seen), Arc::clone(&standing));
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(40);
                while Instant::now() < deadline {
                    let records = consumer.poll().await.unwrap();
                    seen.lock()
                        .unwrap()
                        .extend(records.iter().map(|r| (r.partition, r.offset)));
                    let mut standing = standing.lock().unwrap();
                    standing.insert(name, (consumer.group_generation(), consumer.assignment()));
                    let settled = standing.len() == 2
                        && standing.values().all(|(g, a)| g.is_some() && a.len() == 2)
                        && standing
                            .values()
                            .map(|(g, _)| g)
                            .collect::<std::collections::BTreeSet<_>>()
                            .len()
                            == 1;
                    if settled && seen.lock().unwrap().len() >= 20 {
                        break;
                    }
                }
                consumer
            })
        };
        let (first, second) = tokio::join!(run("first", first), run("second", second));
        let (first, second) = (first.unwrap(), second.unwrap());
        let mut split = first.assignment();
        split.extend(second.assignment());
        split.sort();
        assert_eq!(split, all, "the two members split the partitions");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), before, "no record read twice");
        assert_eq!(seen.len(), 20);
        assert!(
            seen.iter()
                .all(|(p, o)| *o >= ends[&("events".to_string(), *p)])
        );

        first.close().await.unwrap();
        second.close().await.unwrap();
        let ends = admin
            .list_offsets(&all, OffsetSpec::Latest, IsolationLevel::ReadUncommitted)
            .await
            .unwrap();
        assert_eq!(ends.values().sum::<i64>(), 60);
        assert_eq!(admin.committed_offsets("readers").await.unwrap(), ends);
        let group = admin.describe_group("readers").await.unwrap();
        assert_eq!(group.state, "Empty");
        assert!(group.members.is_empty());
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
