//! A native load generator against the real `spool` binary, so that the broker, not a
//! client library, is what gets measured. Client and broker share this machine.
//!
//!     cargo bench -p spool --bench broker_load [-- --mb 1024]
//!
//! Figures: produce MB/s with acks=1 and acks=all (one connection per partition, one
//! batch of 900 records of 1 KiB per request, 5 requests in flight, as a batching
//! client sends them); consume MB/s (one connection fetching all partitions, 1 MiB per
//! partition per fetch, as librdkafka's defaults); and at 10k msg/s with acks=all and
//! one record per request, produce-ack and end-to-end latency percentiles. One topic of
//! 6 partitions per phase. Every loop is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, Server, produce_request, temp_dir};
use spool_protocol::compression::Compression;
use spool_protocol::frame::decode_response;
use spool_protocol::messages::*;
use spool_protocol::record_batch::{RecordBatchBuilder, RecordBatches};

#[path = "../tests/common/mod.rs"]
mod common;

const PARTITIONS: i32 = 6;
const RECORD: usize = 1024;
const RECORDS_PER_BATCH: usize = 900;
const IN_FLIGHT: usize = 5;
const LIMIT: Duration = Duration::from_secs(120);

/// The next response on a stream whose requests another thread writes.
fn receive(stream: &mut TcpStream, api_key: ApiKey, version: i16) -> ResponseBody {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame).unwrap();
    decode_response(api_key, version, Bytes::from(frame))
        .unwrap()
        .1
}

fn check_produced(response: ResponseBody) {
    let ResponseBody::Produce(response) = response else {
        panic!("not a produce response")
    };
    let error = response.responses[0].partition_responses[0].error_code;
    assert_eq!(error, 0, "produce failed with error {error}");
}

fn create_topic(address: &str, topic: &str) {
    let mut client = Client::connect(address);
    let request = RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![create_topics_request::CreatableTopic {
            name: topic.into(),
            num_partitions: PARTITIONS,
            replication_factor: 1,
            ..Default::default()
        }],
        timeout_ms: 30_000,
        ..Default::default()
    });
    let ResponseBody::CreateTopics(response) = client.call(request, 7) else {
        panic!()
    };
    assert_eq!(response.topics[0].error_code, 0);
}

/// Produces `batches` batches to each partition; returns MB/s.
fn produce(address: &str, topic: &str, acks: i16, batches: usize) -> f64 {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    let value = vec![b'x'; RECORD];
    for i in 0..RECORDS_PER_BATCH {
        builder
            .append(now_ms() + i as i64, None, Some(&value), &[])
            .unwrap();
    }
    let batch = builder.build().unwrap();
    let started = Instant::now();
    let threads: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let (address, topic, batch) = (address.to_string(), topic.to_string(), batch.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&address);
                let request = RequestBody::Produce(produce_request(&topic, partition, acks, batch));
                let mut in_flight = VecDeque::new();
                let (mut sent, mut answered) = (0, 0);
                while answered < batches && started.elapsed() < LIMIT {
                    while sent < batches && sent - answered < IN_FLIGHT {
                        in_flight.push_back(client.send(request.clone(), 9));
                        sent += 1;
                    }
                    let id = in_flight.pop_front().unwrap();
                    check_produced(client.receive(ApiKey::Produce, 9, id));
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let bytes = answered * batch.len();
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn fetch_request(topic: &str, offsets: &[i64], max_wait_ms: i32) -> RequestBody {
    RequestBody::Fetch(FetchRequest {
        replica_id: -1,
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 50 << 20,
        session_epoch: -1,
        topics: vec![fetch_request::FetchTopic {
            topic: topic.into(),
            partitions: offsets
                .iter()
                .enumerate()
                .map(|(p, &offset)| fetch_request::FetchPartition {
                    partition: p as i32,
                    fetch_offset: offset,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Reads every partition from 0 to `ends`; returns MB/s.
fn consume(address: &str, topic: &str, ends: &[i64]) -> f64 {
    let mut client = Client::connect(address);
    let mut offsets = vec![0i64; ends.len()];
    let mut bytes = 0usize;
    let started = Instant::now();
    while offsets.iter().zip(ends).any(|(o, e)| o < e) && started.elapsed() < LIMIT {
        let ResponseBody::Fetch(response) = client.call(fetch_request(topic, &offsets, 500), 12)
        else {
            panic!()
        };
        for p in response.responses.iter().flat_map(|t| &t.partitions) {
            assert_eq!(p.error_code, 0);
            let records = p.records.clone().unwrap_or_default();
            bytes += records.len();
            for batch in RecordBatches::new(records) {
                offsets[p.partition_index as usize] = batch.unwrap().last_offset() + 1;
            }
        }
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn percentiles(mut samples: Vec<f64>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} messages)",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
        samples.len()
    )
}

/// One 1 KiB record per acks=all request at `rate` msg/s for `seconds`, round-robin over
/// the partitions; a consumer long-polls all partitions. Returns (ack, end-to-end).
fn latency(address: &str, topic: &str, rate: u64, seconds: u64) -> (String, String) {
    let total = rate * seconds;
    let origin = Instant::now();
    // The consumer: every record's value starts with its send time in ns since `origin`.
    let consumer = {
        let (address, topic) = (address.to_string(), topic.to_string());
        std::thread::spawn(move || {
            let mut client = Client::connect(&address);
            let mut offsets = vec![0i64; PARTITIONS as usize];
            let mut samples = Vec::with_capacity(total as usize);
            while (samples.len() as u64) < total && origin.elapsed() < LIMIT {
                let request = fetch_request(&topic, &offsets, 500);
                let ResponseBody::Fetch(response) = client.call(request, 12) else {
                    panic!()
                };
                let now = origin.elapsed().as_nanos() as f64;
                for p in response.responses.iter().flat_map(|t| &t.partitions) {
                    for batch in RecordBatches::new(p.records.clone().unwrap_or_default()) {
                        let batch = batch.unwrap();
                        offsets[p.partition_index as usize] = batch.last_offset() + 1;
                        for record in batch.records(1 << 20).unwrap() {
                            let value = record.unwrap().value.unwrap();
                            let sent = u64::from_be_bytes(value[..8].try_into().unwrap());
                            samples.push((now - sent as f64) / 1e6);
                        }
                    }
                }
            }
            samples
        })
    };
    let mut writer = Client::connect(address);
    let mut reader = writer.stream.try_clone().unwrap();
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let acks = {
        let sent_at = Arc::clone(&sent_at);
        std::thread::spawn(move || {
            let mut samples = Vec::with_capacity(total as usize);
            for _ in 0..total {
                check_produced(receive(&mut reader, ApiKey::Produce, 9));
                let sent = sent_at.lock().unwrap().pop_front().unwrap();
                samples.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            samples
        })
    };
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let mut value = vec![b'x'; RECORD];
    for i in 0..total {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = Instant::now();
        value[..8].copy_from_slice(&(now.duration_since(origin).as_nanos() as u64).to_be_bytes());
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.append(now_ms(), None, Some(&value), &[]).unwrap();
        let partition = (i % PARTITIONS as u64) as i32;
        let request = produce_request(topic, partition, -1, builder.build().unwrap());
        sent_at.lock().unwrap().push_back(now);
        writer.send(RequestBody::Produce(request), 9);
    }
    let acks = acks.join().unwrap();
    let ends = consumer.join().unwrap();
    (percentiles(acks), percentiles(ends))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args
        .iter()
        .position(|a| a == "--mb")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = temp_dir("bench");
    let server = Server::start(&dir, &[]);
    let address = server.address.clone();

    // Latency first, on a quiet broker: the throughput phases leave gigabytes of dirty
    // page cache behind, and the kernel's write-back of them would be measured too.
    create_topic(&address, "latency");
    let (acks, ends) = latency(&address, "latency", 10_000, 5);
    println!("produce ack latency at 10k msg/s, acks=all: {acks}");
    println!("end-to-end latency at 10k msg/s, acks=all: {ends}");
    let batch_bytes = RECORDS_PER_BATCH * (RECORD + 8);
    let batches = (mb << 20) / batch_bytes / PARTITIONS as usize;
    for (topic, acks) in [("acks1", 1), ("acksall", -1)] {
        create_topic(&address, topic);
        let rate = produce(&address, topic, acks, batches);
        println!(
            "produce acks={}: {rate:.0} MB/s",
            if acks == 1 { "1" } else { "all" }
        );
    }
    let ends = vec![(batches * RECORDS_PER_BATCH) as i64; PARTITIONS as usize];
    println!("consume: {:.0} MB/s", consume(&address, "acksall", &ends));
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
