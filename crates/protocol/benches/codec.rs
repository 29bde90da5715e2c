#![allow(clippy::expect_used)] // a benchmark: a failed setup is a failed run
//! Codec and record-batch benchmarks. Run with `cargo bench -p spool-protocol`; criterion
//! reports throughput in bytes per second of the message or batch processed.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use spool_protocol::Message;
use spool_protocol::compression::Compression;
use spool_protocol::messages::{FetchResponse, ProduceRequest, fetch_response, produce_request};
use spool_protocol::record_batch::{RecordBatch, RecordBatchBuilder};

const PARTITIONS: i32 = 16;
const RECORD_BYTES: usize = 1024;

/// A batch of `records` 1 KiB records with 16-byte keys.
fn batch(records: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None).producer(1, 0, 0);
    let value: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..records {
        let key = format!("key-{i:012}");
        builder
            .append(
                1_700_000_000_000 + i as i64,
                Some(key.as_bytes()),
                Some(&value),
                &[],
            )
            .expect("record fits");
    }
    builder.build().expect("batch builds")
}

/// A Produce request with one ~16 KiB batch for each of 16 partitions.
fn produce_request() -> ProduceRequest {
    let batch = batch(15);
    ProduceRequest {
        acks: -1,
        timeout_ms: 30_000,
        topic_data: vec![produce_request::TopicProduceData {
            name: "orders".into(),
            partition_data: (0..PARTITIONS)
                .map(|index| produce_request::PartitionProduceData {
                    index,
                    records: Some(batch.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A Fetch response carrying the same 16 × ~16 KiB of batches.
fn fetch_response() -> FetchResponse {
    let batch = batch(15);
    FetchResponse {
        responses: vec![fetch_response::FetchableTopicResponse {
            topic: "orders".into(),
            partitions: (0..PARTITIONS)
                .map(|partition_index| fetch_response::PartitionData {
                    partition_index,
                    high_watermark: 1_000_000,
                    last_stable_offset: 1_000_000,
                    log_start_offset: 0,
                    records: Some(batch.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn bench_message<M: Message>(c: &mut Criterion, name: &str, message: &M, version: i16) {
    let encoded = message.to_bytes(version).expect("encodes");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            buf.clear();
            message.encode(&mut buf, version).expect("encodes");
            black_box(buf.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut input = encoded.clone();
            black_box(M::decode(&mut input, version).expect("decodes"))
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_message(c, "produce_request_v11_16x16KiB", &produce_request(), 11);
    bench_message(c, "fetch_response_v16_16x16KiB", &fetch_response(), 16);
}

fn record_batch(c: &mut Criterion) {
    for records in [15usize, 1000] {
        let bytes = batch(records);
        let batch = RecordBatch::from_bytes(bytes.clone()).expect("valid batch");
        let mut group = c.benchmark_group(format!("record_batch_{}KiB", bytes.len() / 1024));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("verify_crc", |b| {
            b.iter(|| black_box(&batch).verify_crc().expect("crc"))
        });
        group.bench_function("validate_for_append", |b| {
            b.iter(|| {
                black_box(&batch)
                    .validate_for_append(64 << 20)
                    .expect("valid")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec, record_batch);
criterion_main!(benches);
