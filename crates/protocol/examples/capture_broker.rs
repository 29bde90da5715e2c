//! A stand-in broker that records the requests real Kafka clients send.
//!
//! `cargo run -p spool-protocol --example capture_broker -- 127.0.0.1:0 OUT_DIR` listens,
//! prints its address, and answers just enough of each API (with responses built by this
//! crate) for a client to get through metadata, producing, fetching, a consumer group and
//! an idempotent producer. The first request frame of each kind from each client is saved
//! as `OUT_DIR/<client.id>/<api>-v<version>[-<codec>].bin`; the golden-frame tests decode
//! and re-encode those files. `tests/golden/capture.sh` drives the clients.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::{env, fs, thread};

use bytes::Bytes;
use spool_protocol::compat::advertised_versions;
use spool_protocol::frame::{FRAME_PREFIX_BYTES, decode_request, encode_response, frame_size};
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::*;
use spool_protocol::record_batch::RecordBatches;

const PARTITIONS: i32 = 3;
const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

struct Capture {
    out_dir: PathBuf,
    address: SocketAddr,
    saved: Mutex<HashSet<PathBuf>>,
    next_offset: Mutex<i64>,
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = env::args().collect();
    let (Some(listen), Some(out_dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: capture_broker HOST:PORT OUT_DIR");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen)?;
    let capture = Arc::new(Capture {
        out_dir: PathBuf::from(out_dir),
        address: listener.local_addr()?,
        saved: Mutex::new(HashSet::new()),
        next_offset: Mutex::new(0),
    });
    println!("listening on {}", capture.address);
    for stream in listener.incoming() {
        let stream = stream?;
        let capture = Arc::clone(&capture);
        thread::spawn(move || {
            if let Err(e) = serve(&capture, stream) {
                eprintln!("connection ended: {e}");
            }
        });
    }
    Ok(())
}

fn serve(capture: &Capture, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        stream.read_exact(&mut prefix)?;
        let size = frame_size(prefix, MAX_FRAME_BYTES).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; size];
        stream.read_exact(&mut body)?;
        let frame = Bytes::from(body);
        let (header, request) = match decode_request(frame.clone()) {
            Ok(decoded) => decoded,
            Err(e) => {
                eprintln!("undecodable request {:?}: {}", e.header, e.error);
                return Ok(());
            }
        };
        save(capture, &header, &request, &frame);
        let version = header.request_api_version;
        let Some(response) = respond(capture, &header, request) else {
            continue; // acks=0 produce: no response
        };
        let out = encode_response(header.correlation_id, version, &response)
            .map_err(std::io::Error::other)?;
        stream.write_all(&out)?;
    }
}

fn save(capture: &Capture, header: &RequestHeader, request: &RequestBody, frame: &Bytes) {
    let client = header.client_id.clone().unwrap_or_else(|| "unnamed".into());
    let client: String = client
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let mut name = format!(
        "{}-v{}",
        request.api_key().name(),
        header.request_api_version
    );
    if let RequestBody::Produce(produce) = request {
        let codec = produce
            .topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .filter_map(|p| p.records.clone())
            .flat_map(RecordBatches::new)
            .find_map(|b| b.ok().and_then(|b| b.compression().ok()));
        if let Some(codec) = codec {
            name = format!("{name}-{}", codec.name());
        }
    }
    let path = Path::new(&capture.out_dir)
        .join(client)
        .join(format!("{name}.bin"));
    let Ok(mut saved) = capture.saved.lock() else {
        return;
    };
    if saved.insert(path.clone()) && !path.exists() {
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let _ = fs::write(&path, frame);
    }
}

fn respond(
    capture: &Capture,
    header: &RequestHeader,
    request: RequestBody,
) -> Option<ResponseBody> {
    let host = capture.address.ip().to_string();
    let port = i32::from(capture.address.port());
    Some(match request {
        RequestBody::ApiVersions(_) => ResponseBody::ApiVersions(ApiVersionsResponse {
            api_keys: ApiKey::ALL
                .iter()
                .map(|k| api_versions_response::ApiVersion {
                    api_key: *k as i16,
                    min_version: advertised_versions(*k).min,
                    max_version: advertised_versions(*k).max,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        RequestBody::Metadata(req) => {
            let names: Vec<String> = match req.topics {
                Some(topics) => topics.into_iter().filter_map(|t| t.name).collect(),
                None => vec!["golden".into()],
            };
            ResponseBody::Metadata(MetadataResponse {
                brokers: vec![metadata_response::MetadataResponseBroker {
                    node_id: 0,
                    host: host.clone(),
                    port,
                    ..Default::default()
                }],
                cluster_id: Some("spool-capture".into()),
                controller_id: 0,
                topics: names
                    .into_iter()
                    .enumerate()
                    .map(|(i, name)| metadata_response::MetadataResponseTopic {
                        name: Some(name),
                        topic_id: spool_protocol::Uuid::from_u128(0x5f00_0000 + i as u128),
                        partitions: (0..PARTITIONS)
                            .map(|p| metadata_response::MetadataResponsePartition {
                                partition_index: p,
                                leader_id: 0,
                                leader_epoch: 0,
                                replica_nodes: vec![0],
                                isr_nodes: vec![0],
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        RequestBody::Produce(req) => {
            if req.acks == 0 {
                return None;
            }
            let mut next_offset = capture.next_offset.lock().ok()?;
            ResponseBody::Produce(ProduceResponse {
                responses: req
                    .topic_data
                    .into_iter()
                    .map(|t| produce_response::TopicProduceResponse {
                        name: t.name,
                        topic_id: t.topic_id,
                        partition_responses: t
                            .partition_data
                            .into_iter()
                            .map(|p| {
                                let base_offset = *next_offset;
                                *next_offset += 1000;
                                produce_response::PartitionProduceResponse {
                                    index: p.index,
                                    base_offset,
                                    ..Default::default()
                                }
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        RequestBody::Fetch(req) => ResponseBody::Fetch(FetchResponse {
            responses: req
                .topics
                .into_iter()
                .map(|t| fetch_response::FetchableTopicResponse {
                    topic: t.topic,
                    topic_id: t.topic_id,
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| fetch_response::PartitionData {
                            partition_index: p.partition,
                            high_watermark: 0,
                            last_stable_offset: 0,
                            log_start_offset: 0,
                            records: Some(Bytes::new()),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        RequestBody::ListOffsets(req) => ResponseBody::ListOffsets(ListOffsetsResponse {
            topics: req
                .topics
                .into_iter()
                .map(|t| list_offsets_response::ListOffsetsTopicResponse {
                    name: t.name,
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| list_offsets_response::ListOffsetsPartitionResponse {
                            partition_index: p.partition_index,
                            offset: 0,
                            timestamp: -1,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        // Versions 4 and later answer per key in `coordinators` only.
        RequestBody::FindCoordinator(req) if header.request_api_version >= 4 => {
            ResponseBody::FindCoordinator(FindCoordinatorResponse {
                coordinators: req
                    .coordinator_keys
                    .into_iter()
                    .map(|key| find_coordinator_response::Coordinator {
                        key,
                        node_id: 0,
                        host: host.clone(),
                        port,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        RequestBody::FindCoordinator(_) => ResponseBody::FindCoordinator(FindCoordinatorResponse {
            node_id: 0,
            host: host.clone(),
            port,
            ..Default::default()
        }),
        RequestBody::JoinGroup(req) => {
            let member_id = if req.member_id.is_empty() {
                format!("{}-member", header.client_id.clone().unwrap_or_default())
            } else {
                req.member_id
            };
            let protocol = req.protocols.into_iter().next().unwrap_or_default();
            ResponseBody::JoinGroup(JoinGroupResponse {
                generation_id: 1,
                protocol_type: Some(req.protocol_type),
                protocol_name: Some(protocol.name),
                leader: member_id.clone(),
                member_id: member_id.clone(),
                members: vec![join_group_response::JoinGroupResponseMember {
                    member_id,
                    metadata: protocol.metadata,
                    ..Default::default()
                }],
                ..Default::default()
            })
        }
        RequestBody::SyncGroup(req) => ResponseBody::SyncGroup(SyncGroupResponse {
            protocol_type: req.protocol_type,
            protocol_name: req.protocol_name,
            assignment: req
                .assignments
                .into_iter()
                .find(|a| a.member_id == req.member_id)
                .map(|a| a.assignment)
                .unwrap_or_default(),
            ..Default::default()
        }),
        RequestBody::Heartbeat(_) => ResponseBody::Heartbeat(HeartbeatResponse::default()),
        RequestBody::LeaveGroup(_) => ResponseBody::LeaveGroup(LeaveGroupResponse::default()),
        RequestBody::OffsetCommit(req) => ResponseBody::OffsetCommit(OffsetCommitResponse {
            topics: req
                .topics
                .into_iter()
                .map(|t| offset_commit_response::OffsetCommitResponseTopic {
                    name: t.name,
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| offset_commit_response::OffsetCommitResponsePartition {
                            partition_index: p.partition_index,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        RequestBody::OffsetFetch(req) => {
            let partitions = |topics: Vec<(String, Vec<i32>)>| {
                topics
                    .into_iter()
                    .map(|(name, indexes)| {
                        (
                            name,
                            indexes
                                .into_iter()
                                .map(|i| offset_fetch_response::OffsetFetchResponsePartitions {
                                    partition_index: i,
                                    committed_offset: -1,
                                    committed_leader_epoch: -1,
                                    metadata: Some(String::new()),
                                    ..Default::default()
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let legacy = partitions(
                req.topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect(),
            );
            ResponseBody::OffsetFetch(OffsetFetchResponse {
                topics: legacy
                    .into_iter()
                    .map(
                        |(name, ps)| offset_fetch_response::OffsetFetchResponseTopic {
                            name,
                            partitions: ps
                                .into_iter()
                                .map(|p| offset_fetch_response::OffsetFetchResponsePartition {
                                    partition_index: p.partition_index,
                                    committed_offset: -1,
                                    committed_leader_epoch: -1,
                                    metadata: Some(String::new()),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        },
                    )
                    .collect(),
                groups: req
                    .groups
                    .into_iter()
                    .map(|g| offset_fetch_response::OffsetFetchResponseGroup {
                        group_id: g.group_id,
                        topics: partitions(
                            g.topics
                                .unwrap_or_default()
                                .into_iter()
                                .map(|t| (t.name, t.partition_indexes))
                                .collect(),
                        )
                        .into_iter()
                        .map(|(name, partitions)| {
                            offset_fetch_response::OffsetFetchResponseTopics {
                                name,
                                partitions,
                                ..Default::default()
                            }
                        })
                        .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        RequestBody::InitProducerId(_) => ResponseBody::InitProducerId(InitProducerIdResponse {
            producer_id: 4000,
            producer_epoch: 0,
            ..Default::default()
        }),
        other => {
            eprintln!("no canned answer for {}", other.api_key().name());
            return None;
        }
    })
}
