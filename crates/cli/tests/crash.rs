//! No acknowledged write is lost: acks=all produce requests run while the broker is killed
//! with SIGKILL at a random moment, over and over. After each restart every acknowledged
//! record is readable at its acknowledged offset, and no offset is handed out twice.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use spool_protocol::messages::*;

mod common;

const ROUNDS: u64 = 20;

/// A small deterministic generator for kill times; the seed is printed on failure.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

/// Every record from offset 0, as offset → key.
fn read_back(client: &mut Client, topic: &str) -> BTreeMap<i64, String> {
    records_of(client, topic)
        .into_iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.key.expect("a key").to_vec()).expect("utf-8"),
            )
        })
        .collect()
}

#[test]
fn every_acknowledged_record_survives_sigkill_at_its_offset() {
    let seed = 0x5eed_u64;
    let mut rng = seed;
    let dir = temp_dir("crash");
    // Every acknowledged (offset, key) so far, across all rounds.
    let acknowledged: Arc<Mutex<Vec<(i64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut next_key = 0usize;
    for round in 0..ROUNDS {
        let server = Server::start(&dir, &[]);
        let mut client = server.connect();
        metadata(&mut client, "payments");

        // Check what earlier rounds acknowledged, then that the log end moved past it all.
        let survived = read_back(&mut client, "payments");
        for (offset, key) in acknowledged.lock().unwrap().iter() {
            assert_eq!(
                survived.get(offset),
                Some(key),
                "round {round} (seed {seed:#x}): acknowledged record at {offset} lost or changed"
            );
        }

        // Produce acks=all from another thread while this one picks a moment to kill.
        let producer_acks = Arc::clone(&acknowledged);
        let mut producer = server.connect();
        let first_key = next_key;
        next_key += 100_000;
        let producing = thread::spawn(move || {
            for i in 0.. {
                let key = first_key + i;
                let request = ProduceRequest {
                    acks: -1,
                    timeout_ms: 30_000,
                    topic_data: vec![produce_request::TopicProduceData {
                        name: "payments".into(),
                        partition_data: vec![produce_request::PartitionProduceData {
                            index: 0,
                            records: Some(batch(key, 1)),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                // A killed broker ends the stream: stop at the first failure.
                let Some(id) = producer.try_send(RequestBody::Produce(request), 9) else {
                    return;
                };
                let Some(ResponseBody::Produce(response)) =
                    producer.try_receive(ApiKey::Produce, 9, id)
                else {
                    return;
                };
                let partition = &response.responses[0].partition_responses[0];
                if partition.error_code == 0 {
                    producer_acks
                        .lock()
                        .unwrap()
                        .push((partition.base_offset, format!("key-{key}")));
                }
            }
        });
        let kill_after = Duration::from_millis(20 + next(&mut rng) % 180);
        let started = Instant::now();
        while started.elapsed() < kill_after {
            thread::sleep(Duration::from_millis(5));
        }
        let mut server = server;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let _ = producing.join();
    }

    // A last start: everything acknowledged is there, and new appends follow it.
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "payments");
    let survived = read_back(&mut client, "payments");
    let acknowledged = acknowledged.lock().unwrap();
    assert!(
        acknowledged.len() > ROUNDS as usize,
        "the producer made progress: {} acks",
        acknowledged.len()
    );
    for (offset, key) in acknowledged.iter() {
        assert_eq!(
            survived.get(offset),
            Some(key),
            "acknowledged record at {offset} lost or changed (seed {seed:#x})"
        );
    }
    let highest = acknowledged.iter().map(|(o, _)| *o).max().unwrap_or(-1);
    let next = produce(&mut client, "payments", 0, batch(9_999_999, 1), -1);
    assert!(
        next.base_offset > highest,
        "offset {} reused (highest acknowledged {highest})",
        next.base_offset
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
