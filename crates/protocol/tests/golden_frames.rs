//! Request frames captured from real clients — kcat (librdkafka 2.0.2, Debian 12),
//! confluent-kafka (librdkafka 2.x, PyPI) and kafka-python — decode, re-encode to the very
//! same bytes, and carry record batches (in every codec) and consumer-protocol payloads
//! that decode too. `tests/golden/capture.sh` re-captures them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test: a failed expectation is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use spool_protocol::frame::{decode_request, encode_request};
use spool_protocol::internal::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use spool_protocol::messages::RequestBody;
use spool_protocol::record_batch::RecordBatches;
use spool_protocol::{Message, Wire};

const DECOMPRESSED_LIMIT: usize = 64 * 1024 * 1024;

fn frames_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/frames")
}

fn captures() -> Vec<(String, String, Bytes)> {
    let mut out = Vec::new();
    let mut clients: Vec<_> = fs::read_dir(frames_dir())
        .expect("golden frames exist")
        .flatten()
        .collect();
    clients.sort_by_key(|e| e.file_name());
    for client in clients {
        let mut files: Vec<_> = fs::read_dir(client.path())
            .expect("client dir")
            .flatten()
            .collect();
        files.sort_by_key(|e| e.file_name());
        for file in files {
            let name = file
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".bin")
                .to_string();
            let bytes = Bytes::from(fs::read(file.path()).expect("readable capture"));
            out.push((
                client.file_name().to_string_lossy().into_owned(),
                name,
                bytes,
            ));
        }
    }
    out
}

/// Consumer-protocol payloads start with their own i16 version.
fn decode_versioned<M: Message>(mut bytes: Bytes) -> M {
    let version = i16::read(&mut bytes, false, 0).expect("version prefix");
    let value =
        M::decode(&mut bytes, version).unwrap_or_else(|e| panic!("{} v{version}: {e}", M::NAME));
    assert!(bytes.is_empty(), "{}: trailing bytes", M::NAME);
    value
}

#[test]
fn every_capture_decodes_and_re_encodes_byte_for_byte() {
    let captures = captures();
    assert!(
        captures.len() >= 40,
        "expected the committed captures, found {}",
        captures.len()
    );
    for (client, name, frame) in captures {
        let (header, body) =
            decode_request(frame.clone()).unwrap_or_else(|e| panic!("{client}/{name}: {e:?}"));
        assert_eq!(
            format!("{}-v{}", body.api_key().name(), header.request_api_version),
            name.split('-').take(2).collect::<Vec<_>>().join("-"),
            "{client}/{name}: file name and content disagree"
        );
        let encoded = encode_request(&header, &body).expect("re-encodes");
        assert_eq!(
            &encoded[4..],
            &frame[..],
            "{client}/{name}: re-encoding differs"
        );
    }
}

#[test]
fn produced_batches_from_every_client_and_codec_validate_and_decode() {
    let mut checked = Vec::new();
    for (client, name, frame) in captures() {
        let Ok((_, RequestBody::Produce(produce))) = decode_request(frame) else {
            continue;
        };
        let codec = name.rsplit('-').next().unwrap_or_default().to_string();
        let mut records = 0;
        for partition in produce.topic_data.iter().flat_map(|t| &t.partition_data) {
            let data = partition.records.clone().expect("records present");
            for batch in RecordBatches::new(data) {
                let batch = batch.unwrap_or_else(|e| panic!("{client}/{name}: {e}"));
                assert_eq!(
                    batch.compression().expect("known codec").name(),
                    codec,
                    "{client}/{name}"
                );
                batch
                    .validate_for_append(DECOMPRESSED_LIMIT)
                    .unwrap_or_else(|e| panic!("{client}/{name}: {e}"));
                for record in batch.records(DECOMPRESSED_LIMIT).expect("records") {
                    let record = record.unwrap_or_else(|e| panic!("{client}/{name}: {e}"));
                    let key = record.key.expect("every captured record has a key");
                    assert!(key.starts_with(b"key-"), "{client}/{name}: key {key:?}");
                    assert_eq!(record.headers.len(), 1, "{client}/{name}");
                    let header = record.headers.iter().next().expect("one header");
                    assert_eq!(&header.key[..], b"trace");
                    records += 1;
                }
            }
        }
        assert!(records > 0, "{client}/{name}: no records");
        checked.push(format!("{client}/{codec}"));
    }
    for client in ["kcat", "confluent-kafka", "kafka-python"] {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            assert!(
                checked.contains(&format!("{client}/{codec}")),
                "no {codec} produce capture from {client}"
            );
        }
    }
}

#[test]
fn consumer_protocol_payloads_in_join_and_sync_decode() {
    let mut seen = 0;
    for (client, name, frame) in captures() {
        match decode_request(frame) {
            Ok((_, RequestBody::JoinGroup(join))) => {
                assert_eq!(join.protocol_type, "consumer", "{client}/{name}");
                for protocol in join.protocols {
                    let subscription: ConsumerProtocolSubscription =
                        decode_versioned(protocol.metadata);
                    assert_eq!(
                        subscription.topics,
                        vec!["golden".to_string()],
                        "{client}/{name}"
                    );
                }
                seen += 1;
            }
            Ok((_, RequestBody::SyncGroup(sync))) => {
                for assignment in sync.assignments {
                    let assignment: ConsumerProtocolAssignment =
                        decode_versioned(assignment.assignment);
                    let partitions: Vec<i32> = assignment
                        .assigned_partitions
                        .iter()
                        .flat_map(|t| t.partitions.clone())
                        .collect();
                    assert!(
                        partitions.iter().all(|p| (0..3).contains(p)),
                        "{client}/{name}: {partitions:?}"
                    );
                    // kafka-python's first sync can go out before it knows the topic's
                    // partitions, so only the librdkafka clients are held to a full assignment.
                    if client != "kafka-python" {
                        assert_eq!(
                            partitions.len(),
                            3,
                            "{client}/{name}: all three partitions assigned"
                        );
                    }
                }
                seen += 1;
            }
            _ => {}
        }
    }
    assert!(seen >= 6, "join and sync captures from three clients");
}

#[test]
fn the_required_apis_are_captured() {
    let names: Vec<String> = captures()
        .into_iter()
        .map(|(client, name, _)| format!("{client}/{name}"))
        .collect();
    let has = |client: &str, api: &str| {
        names
            .iter()
            .any(|n| n.starts_with(&format!("{client}/{api}-v")))
    };
    let every_client = [
        "ApiVersions",
        "Metadata",
        "Produce",
        "Fetch",
        "JoinGroup",
        "SyncGroup",
        "InitProducerId",
    ];
    for client in ["kcat", "confluent-kafka", "kafka-python"] {
        for api in every_client {
            assert!(has(client, api), "missing {client}/{api}");
        }
    }
    // kcat's group mode commits nothing when nothing was consumed.
    assert!(has("confluent-kafka", "OffsetCommit") && has("kafka-python", "OffsetCommit"));
}
