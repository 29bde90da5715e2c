//! The wire form of controller requests between nodes: a broker whose node is not the
//! active controller sends its [`Request`]s to the active one's controller listener
//! (see [`crate::quorum::tcp`]).
//!
//! A request is `kind i8` then its body; a reply is the same kind then its body. Kafka's
//! controller APIs travel as their Kafka bodies (BrokerRegistration v4, BrokerHeartbeat
//! v1, AlterPartition at the version the request came in, ElectLeaders v2,
//! AlterPartitionReassignments v1); the rest as
//! plain big-endian fields, strings as `len i32, UTF-8`.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use spool_protocol::ErrorCode;
use spool_protocol::Message;
use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, AlterPartitionRequest,
    AlterPartitionResponse, BrokerHeartbeatRequest, BrokerHeartbeatResponse,
    BrokerRegistrationRequest, BrokerRegistrationResponse, ElectLeadersRequest,
    ElectLeadersResponse, UnregisterBrokerResponse,
};

use crate::quorum::codec::{CodecError, Reader, len_i32};
use crate::service::{AdminChange, Reply, Request, TopicRequest};

const REGISTER: i8 = 1;
const HEARTBEAT: i8 = 2;
const ALTER_PARTITION: i8 = 3;
const ELECT_LEADERS: i8 = 4;
const UNREGISTER: i8 = 5;
const ADMIN: i8 = 6;
const ALLOCATE_PRODUCER_IDS: i8 = 7;
const REASSIGN: i8 = 8;

const REGISTRATION_VERSION: i16 = 4;
const HEARTBEAT_VERSION: i16 = 1;
const ELECT_LEADERS_VERSION: i16 = 2;
const REASSIGN_VERSION: i16 = 1;

const CREATE_TOPIC: i8 = 1;
const DELETE_TOPIC: i8 = 2;
const CREATE_PARTITIONS: i8 = 3;
const ALTER_CONFIGS: i8 = 4;
const ALTER_SCRAM_CREDENTIALS: i8 = 5;
const ALTER_ACLS: i8 = 6;
const ALTER_CLIENT_QUOTAS: i8 = 7;
/// The version metadata records (SCRAM credentials, ACLs) travel at.
const RECORD_VERSION: i16 = 0;

fn kind(request: &Request) -> i8 {
    match request {
        Request::Register(_) => REGISTER,
        Request::Heartbeat(_) => HEARTBEAT,
        Request::AlterPartition(..) => ALTER_PARTITION,
        Request::ElectLeaders(_) => ELECT_LEADERS,
        Request::Unregister(_) => UNREGISTER,
        Request::Admin(_) => ADMIN,
        Request::AllocateProducerIds(..) => ALLOCATE_PRODUCER_IDS,
        Request::AlterPartitionReassignments(_) => REASSIGN,
    }
}

fn put_message<M: Message>(
    buf: &mut BytesMut,
    message: &M,
    version: i16,
) -> Result<(), CodecError> {
    message
        .encode(buf, version)
        .map_err(|e| CodecError(format!("{}: {e}", M::NAME)))
}

/// Decodes a Kafka body that must fill the rest of `r`.
fn read_message<M: Message>(r: Reader, version: i16) -> Result<M, CodecError> {
    let mut bytes = r.0;
    let message =
        M::decode(&mut bytes, version).map_err(|e| CodecError(format!("{}: {e}", M::NAME)))?;
    Reader(bytes).finish()?;
    Ok(message)
}

fn put_string(buf: &mut BytesMut, s: &str) -> Result<(), CodecError> {
    buf.put_i32(len_i32(s.len())?);
    buf.put_slice(s.as_bytes());
    Ok(())
}

fn read_string(r: &mut Reader) -> Result<String, CodecError> {
    let len = r.count(1)?;
    String::from_utf8(r.bytes(len)?.to_vec()).map_err(|_| CodecError("string is not UTF-8".into()))
}

fn put_assignments(buf: &mut BytesMut, assignments: &[Vec<i32>]) -> Result<(), CodecError> {
    buf.put_i32(len_i32(assignments.len())?);
    for replicas in assignments {
        buf.put_i32(len_i32(replicas.len())?);
        for &replica in replicas {
            buf.put_i32(replica);
        }
    }
    Ok(())
}

fn read_assignments(r: &mut Reader) -> Result<Vec<Vec<i32>>, CodecError> {
    let mut assignments = Vec::new();
    for _ in 0..r.count(4)? {
        let mut replicas = Vec::new();
        for _ in 0..r.count(4)? {
            replicas.push(r.i32()?);
        }
        assignments.push(replicas);
    }
    Ok(assignments)
}

fn put_configs(buf: &mut BytesMut, configs: &BTreeMap<String, String>) -> Result<(), CodecError> {
    buf.put_i32(len_i32(configs.len())?);
    for (key, value) in configs {
        put_string(buf, key)?;
        put_string(buf, value)?;
    }
    Ok(())
}

fn read_configs(r: &mut Reader) -> Result<BTreeMap<String, String>, CodecError> {
    let mut configs = BTreeMap::new();
    for _ in 0..r.count(8)? {
        let key = read_string(r)?;
        configs.insert(key, read_string(r)?);
    }
    Ok(configs)
}

fn put_change(buf: &mut BytesMut, change: &AdminChange) -> Result<(), CodecError> {
    match change {
        AdminChange::CreateTopic(topic) => {
            buf.put_i8(CREATE_TOPIC);
            put_string(buf, &topic.name)?;
            buf.put_i32(topic.partitions);
            buf.put_i16(topic.replication_factor);
            put_assignments(buf, &topic.assignments)?;
            put_configs(buf, &topic.configs)?;
        }
        AdminChange::DeleteTopic(name) => {
            buf.put_i8(DELETE_TOPIC);
            put_string(buf, name)?;
        }
        AdminChange::CreatePartitions {
            name,
            count,
            assignments,
        } => {
            buf.put_i8(CREATE_PARTITIONS);
            put_string(buf, name)?;
            buf.put_i32(*count);
            put_assignments(buf, assignments)?;
        }
        AdminChange::AlterConfigs {
            resource_type,
            name,
            configs,
        } => {
            buf.put_i8(ALTER_CONFIGS);
            buf.put_i8(*resource_type);
            put_string(buf, name)?;
            put_configs(buf, configs)?;
        }
        AdminChange::AlterScramCredentials {
            upsertions,
            deletions,
        } => {
            buf.put_i8(ALTER_SCRAM_CREDENTIALS);
            put_records(buf, upsertions)?;
            put_records(buf, deletions)?;
        }
        AdminChange::AlterAcls {
            creations,
            deletions,
        } => {
            buf.put_i8(ALTER_ACLS);
            put_records(buf, creations)?;
            put_records(buf, deletions)?;
        }
        AdminChange::AlterClientQuotas(changes) => {
            buf.put_i8(ALTER_CLIENT_QUOTAS);
            put_records(buf, changes)?;
        }
    }
    Ok(())
}

/// Kafka bodies, each prefixed with its length.
fn put_records<M: Message>(buf: &mut BytesMut, records: &[M]) -> Result<(), CodecError> {
    buf.put_i32(len_i32(records.len())?);
    for record in records {
        let mut body = BytesMut::new();
        put_message(&mut body, record, RECORD_VERSION)?;
        buf.put_i32(len_i32(body.len())?);
        buf.put_slice(&body);
    }
    Ok(())
}

fn read_records<M: Message>(r: &mut Reader) -> Result<Vec<M>, CodecError> {
    let mut records = Vec::new();
    for _ in 0..r.count(4)? {
        let len = r.count(1)?;
        records.push(read_message(Reader(r.bytes(len)?), RECORD_VERSION)?);
    }
    Ok(records)
}

fn read_change(r: &mut Reader) -> Result<AdminChange, CodecError> {
    Ok(match r.i8()? {
        CREATE_TOPIC => AdminChange::CreateTopic(TopicRequest {
            name: read_string(r)?,
            partitions: r.i32()?,
            replication_factor: r.i16()?,
            assignments: read_assignments(r)?,
            configs: read_configs(r)?,
        }),
        DELETE_TOPIC => AdminChange::DeleteTopic(read_string(r)?),
        CREATE_PARTITIONS => AdminChange::CreatePartitions {
            name: read_string(r)?,
            count: r.i32()?,
            assignments: read_assignments(r)?,
        },
        ALTER_CONFIGS => AdminChange::AlterConfigs {
            resource_type: r.i8()?,
            name: read_string(r)?,
            configs: read_configs(r)?,
        },
        ALTER_SCRAM_CREDENTIALS => AdminChange::AlterScramCredentials {
            upsertions: read_records(r)?,
            deletions: read_records(r)?,
        },
        ALTER_ACLS => AdminChange::AlterAcls {
            creations: read_records(r)?,
            deletions: read_records(r)?,
        },
        ALTER_CLIENT_QUOTAS => AdminChange::AlterClientQuotas(read_records(r)?),
        other => return Err(CodecError(format!("unknown change kind {other}"))),
    })
}

pub fn encode_request(request: &Request) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    buf.put_i8(kind(request));
    match request {
        Request::Register(r) => put_message(&mut buf, r, REGISTRATION_VERSION)?,
        Request::Heartbeat(r) => put_message(&mut buf, r, HEARTBEAT_VERSION)?,
        Request::AlterPartition(r, version) => {
            buf.put_i16(*version);
            put_message(&mut buf, r, *version)?;
        }
        Request::ElectLeaders(r) => put_message(&mut buf, r, ELECT_LEADERS_VERSION)?,
        Request::Unregister(broker_id) => buf.put_i32(*broker_id),
        Request::Admin(change) => put_change(&mut buf, change)?,
        Request::AllocateProducerIds(broker_id, epoch) => {
            buf.put_i32(*broker_id);
            buf.put_i64(*epoch);
        }
        Request::AlterPartitionReassignments(r) => put_message(&mut buf, r, REASSIGN_VERSION)?,
    }
    Ok(buf.freeze())
}

pub fn decode_request(bytes: Bytes) -> Result<Request, CodecError> {
    let mut r = Reader(bytes);
    let request = match r.i8()? {
        REGISTER => Request::Register(read_message::<BrokerRegistrationRequest>(
            r,
            REGISTRATION_VERSION,
        )?),
        HEARTBEAT => Request::Heartbeat(read_message::<BrokerHeartbeatRequest>(
            r,
            HEARTBEAT_VERSION,
        )?),
        ALTER_PARTITION => {
            let version = r.i16()?;
            Request::AlterPartition(read_message::<AlterPartitionRequest>(r, version)?, version)
        }
        ELECT_LEADERS => Request::ElectLeaders(read_message::<ElectLeadersRequest>(
            r,
            ELECT_LEADERS_VERSION,
        )?),
        UNREGISTER => {
            let id = r.i32()?;
            r.finish()?;
            Request::Unregister(id)
        }
        ADMIN => {
            let change = read_change(&mut r)?;
            r.finish()?;
            Request::Admin(change)
        }
        ALLOCATE_PRODUCER_IDS => {
            let (id, epoch) = (r.i32()?, r.i64()?);
            r.finish()?;
            Request::AllocateProducerIds(id, epoch)
        }
        REASSIGN => Request::AlterPartitionReassignments(read_message::<
            AlterPartitionReassignmentsRequest,
        >(r, REASSIGN_VERSION)?),
        other => return Err(CodecError(format!("unknown controller request {other}"))),
    };
    Ok(request)
}

/// `request` is the request answered: it fixes the versions of the reply's Kafka body.
pub fn encode_reply(request: &Request, reply: &Reply) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    buf.put_i8(kind(request));
    match reply {
        Reply::Register(r) => put_message(&mut buf, r, REGISTRATION_VERSION)?,
        Reply::Heartbeat(r) => put_message(&mut buf, r, HEARTBEAT_VERSION)?,
        Reply::AlterPartition(r) => {
            let Request::AlterPartition(_, version) = request else {
                return Err(CodecError("AlterPartition reply to another request".into()));
            };
            put_message(&mut buf, r, *version)?;
        }
        Reply::ElectLeaders(r) => put_message(&mut buf, r, ELECT_LEADERS_VERSION)?,
        Reply::Unregister(r) => buf.put_i16(r.error_code),
        Reply::Admin(Ok(offset)) => {
            buf.put_i16(ErrorCode::None.code());
            buf.put_i64(*offset);
        }
        Reply::Admin(Err((code, message))) => {
            buf.put_i16(code.code());
            put_string(&mut buf, message)?;
        }
        Reply::AllocateProducerIds(Ok(range)) => {
            buf.put_i16(ErrorCode::None.code());
            buf.put_i64(range.start);
            buf.put_i64(range.end);
        }
        Reply::AllocateProducerIds(Err(code)) => buf.put_i16(code.code()),
        Reply::AlterPartitionReassignments(r) => put_message(&mut buf, r, REASSIGN_VERSION)?,
    }
    Ok(buf.freeze())
}

pub fn decode_reply(request: &Request, bytes: Bytes) -> Result<Reply, CodecError> {
    let mut r = Reader(bytes);
    let answered = r.i8()?;
    if answered != kind(request) {
        return Err(CodecError(format!(
            "reply of kind {answered} to a request of kind {}",
            kind(request)
        )));
    }
    let reply = match request {
        Request::Register(_) => Reply::Register(read_message::<BrokerRegistrationResponse>(
            r,
            REGISTRATION_VERSION,
        )?),
        Request::Heartbeat(_) => Reply::Heartbeat(read_message::<BrokerHeartbeatResponse>(
            r,
            HEARTBEAT_VERSION,
        )?),
        Request::AlterPartition(_, version) => {
            Reply::AlterPartition(read_message::<AlterPartitionResponse>(r, *version)?)
        }
        Request::ElectLeaders(_) => Reply::ElectLeaders(read_message::<ElectLeadersResponse>(
            r,
            ELECT_LEADERS_VERSION,
        )?),
        Request::AlterPartitionReassignments(_) => Reply::AlterPartitionReassignments(
            read_message::<AlterPartitionReassignmentsResponse>(r, REASSIGN_VERSION)?,
        ),
        Request::Unregister(_) => {
            let error_code = r.i16()?;
            r.finish()?;
            Reply::Unregister(UnregisterBrokerResponse {
                error_code,
                ..Default::default()
            })
        }
        Request::Admin(_) => {
            let code = r.i16()?;
            let reply = if code == ErrorCode::None.code() {
                Ok(r.i64()?)
            } else {
                Err((ErrorCode::from_wire(code), read_string(&mut r)?))
            };
            r.finish()?;
            Reply::Admin(reply)
        }
        Request::AllocateProducerIds(..) => {
            let code = r.i16()?;
            let reply = if code == ErrorCode::None.code() {
                Ok(r.i64()?..r.i64()?)
            } else {
                Err(ErrorCode::from_wire(code))
            };
            r.finish()?;
            Reply::AllocateProducerIds(reply)
        }
    };
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use spool_protocol::messages::broker_registration_request::Listener;

    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Register(BrokerRegistrationRequest {
                broker_id: 2,
                cluster_id: "c".into(),
                listeners: vec![Listener {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: 9093,
                    ..Default::default()
                }],
                rack: Some("r1".into()),
                previous_broker_epoch: 7,
                ..Default::default()
            }),
            Request::Heartbeat(BrokerHeartbeatRequest {
                broker_id: 2,
                broker_epoch: 9,
                current_metadata_offset: 40,
                want_shut_down: true,
                ..Default::default()
            }),
            Request::AlterPartition(
                AlterPartitionRequest {
                    broker_id: 3,
                    broker_epoch: 4,
                    ..Default::default()
                },
                2,
            ),
            Request::ElectLeaders(ElectLeadersRequest::default()),
            Request::AlterPartitionReassignments(AlterPartitionReassignmentsRequest {
                allow_replication_factor_change: false,
                ..Default::default()
            }),
            Request::Unregister(5),
            Request::Admin(AdminChange::CreateTopic(TopicRequest {
                name: "orders".into(),
                partitions: 3,
                replication_factor: 2,
                assignments: vec![vec![1, 2], vec![2, 3]],
                configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
            })),
            Request::Admin(AdminChange::DeleteTopic("gone".into())),
            Request::Admin(AdminChange::CreatePartitions {
                name: "orders".into(),
                count: 6,
                assignments: vec![],
            }),
            Request::Admin(AdminChange::AlterConfigs {
                resource_type: 4,
                name: "1".into(),
                configs: BTreeMap::new(),
            }),
            Request::Admin(AdminChange::AlterScramCredentials {
                upsertions: vec![spool_protocol::internal::UserScramCredentialRecord {
                    name: "alice".into(),
                    mechanism: 2,
                    salt: vec![1, 2, 3].into(),
                    stored_key: vec![4; 64].into(),
                    server_key: vec![5; 64].into(),
                    iterations: 8192,
                    ..Default::default()
                }],
                deletions: vec![spool_protocol::internal::RemoveUserScramCredentialRecord {
                    name: "bob".into(),
                    mechanism: 1,
                    ..Default::default()
                }],
            }),
            Request::Admin(AdminChange::AlterAcls {
                creations: vec![spool_protocol::internal::AccessControlEntryRecord {
                    id: spool_protocol::Uuid::from_u128(9),
                    resource_type: 2,
                    resource_name: "orders".into(),
                    pattern_type: 3,
                    principal: "User:alice".into(),
                    host: "*".into(),
                    operation: 3,
                    permission_type: 3,
                    ..Default::default()
                }],
                deletions: vec![spool_protocol::internal::RemoveAccessControlEntryRecord {
                    id: spool_protocol::Uuid::from_u128(8),
                    ..Default::default()
                }],
            }),
            Request::Admin(AdminChange::AlterClientQuotas(vec![
                spool_protocol::internal::ClientQuotaRecord {
                    entity: vec![spool_protocol::internal::client_quota_record::EntityData {
                        entity_type: "user".into(),
                        entity_name: None,
                        ..Default::default()
                    }],
                    key: "producer_byte_rate".into(),
                    value: 1048576.0,
                    remove: false,
                    ..Default::default()
                },
            ])),
            Request::AllocateProducerIds(1, 12),
        ]
    }

    #[test]
    fn every_request_and_reply_survives_the_wire() {
        for request in requests() {
            let bytes = encode_request(&request).unwrap();
            assert_eq!(decode_request(bytes.clone()).unwrap(), request);
            // Any cut short is an error, never a panic or a different request.
            for end in 0..bytes.len() {
                assert!(
                    decode_request(bytes.slice(..end)).is_err(),
                    "{request:?} cut at {end}"
                );
            }
            let mut replies = vec![request.not_controller()];
            match &request {
                Request::Admin(_) => replies.push(Reply::Admin(Ok(41))),
                Request::AllocateProducerIds(..) => {
                    replies.push(Reply::AllocateProducerIds(Ok(1000..2000)))
                }
                Request::Heartbeat(_) => replies.push(Reply::Heartbeat(BrokerHeartbeatResponse {
                    is_caught_up: true,
                    should_shut_down: true,
                    ..Default::default()
                })),
                _ => {}
            }
            for reply in replies {
                let bytes = encode_reply(&request, &reply).unwrap();
                assert_eq!(decode_reply(&request, bytes).unwrap(), reply);
            }
        }
    }

    #[test]
    fn a_reply_to_another_kind_of_request_is_refused() {
        let heartbeat = Request::Heartbeat(BrokerHeartbeatRequest::default());
        let unregister = Request::Unregister(1);
        let bytes = encode_reply(&unregister, &unregister.not_controller()).unwrap();
        assert!(decode_reply(&heartbeat, bytes).is_err());
        assert!(decode_request(Bytes::from_static(&[99])).is_err());
    }
}
