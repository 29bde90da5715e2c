//! The stored form of the quorum's entries and state, and of the image in a snapshot.
//!
//! An entry is one record in the metadata log: its offset is the entry's index and its
//! batch's leader epoch is the entry's term, as in KRaft. The record's value says what the
//! entry carries:
//!
//! ```text
//! kind i8: 0 blank (a new leader's first entry) | 1 metadata records | 2 membership
//! records:    count i32, then each record as length i32 + its stored form
//! membership: configs i32, each: voters i32 + node IDs i64…; nodes i32, each: ID i64 + address
//!             (length i16 + UTF-8)
//! ```
//!
//! Between voters the Raft messages travel in the forms of [`rpc`], built from the same
//! parts (big-endian, `-1` for an absent ID):
//!
//! ```text
//! vote:     term i64, voted_for i64, committed i8
//! log ID:   present i8, then term i64 + index i64 when present
//! entry:    log ID (present), payload length i32 + payload as stored
//! ```
//!
//! A snapshot file (`<end offset>-<epoch>.checkpoint`) holds `SPOOLSNP`, version i16 1, the
//! snapshot as [`rpc`] sends it (without the vote), and a CRC-32C of all that (u32).
//!
//! Decoding checks every length against what is left, so a damaged entry or message is an
//! error and never a panic or a huge allocation.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::storage::Snapshot;
use openraft::{BasicNode, EntryPayload, LogId, Membership, Vote};
use thiserror::Error;

use super::{Change, Quorum};
use crate::MetadataRecord;

#[derive(Debug, Error)]
#[error("damaged quorum data: {0}")]
pub struct CodecError(pub String);

const BLANK: i8 = 0;
const RECORDS: i8 = 1;
const MEMBERSHIP: i8 = 2;

/// Reads with a length check before every read.
pub(crate) struct Reader(pub(crate) Bytes);

impl Reader {
    pub(crate) fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.0.remaining() < n {
            return Err(CodecError(format!(
                "needs {n} more bytes, {} left",
                self.0.remaining()
            )));
        }
        Ok(())
    }

    pub(crate) fn i8(&mut self) -> Result<i8, CodecError> {
        self.need(1)?;
        Ok(self.0.get_i8())
    }

    pub(crate) fn i16(&mut self) -> Result<i16, CodecError> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }

    pub(crate) fn i32(&mut self) -> Result<i32, CodecError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }

    pub(crate) fn i64(&mut self) -> Result<i64, CodecError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }

    /// A count of items each at least `item_bytes` long: never more than what is left
    /// could hold.
    pub(crate) fn count(&mut self, item_bytes: usize) -> Result<usize, CodecError> {
        let count = self.i32()?;
        let count =
            usize::try_from(count).map_err(|_| CodecError(format!("negative count {count}")))?;
        self.need(count.saturating_mul(item_bytes))?;
        Ok(count)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, CodecError> {
        self.need(len)?;
        Ok(self.0.split_to(len))
    }

    pub(crate) fn finish(self) -> Result<(), CodecError> {
        if self.0.has_remaining() {
            return Err(CodecError(format!(
                "{} bytes left over",
                self.0.remaining()
            )));
        }
        Ok(())
    }
}

pub fn encode_payload(payload: &EntryPayload<Quorum>) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    match payload {
        EntryPayload::Blank => buf.put_i8(BLANK),
        EntryPayload::Normal(change) => {
            buf.put_i8(RECORDS);
            put_records(&mut buf, &change.0)?;
        }
        EntryPayload::Membership(membership) => {
            buf.put_i8(MEMBERSHIP);
            let configs = membership.get_joint_config();
            buf.put_i32(len_i32(configs.len())?);
            for voters in configs {
                buf.put_i32(len_i32(voters.len())?);
                for &id in voters {
                    buf.put_i64(id as i64);
                }
            }
            let nodes: Vec<_> = membership.nodes().collect();
            buf.put_i32(len_i32(nodes.len())?);
            for (&id, node) in nodes {
                buf.put_i64(id as i64);
                let addr = node.addr.as_bytes();
                buf.put_i16(
                    i16::try_from(addr.len())
                        .map_err(|_| CodecError(format!("address of {} bytes", addr.len())))?,
                );
                buf.put_slice(addr);
            }
        }
    }
    Ok(buf.freeze())
}

pub fn decode_payload(bytes: Bytes) -> Result<EntryPayload<Quorum>, CodecError> {
    let mut r = Reader(bytes);
    let payload = match r.i8()? {
        BLANK => EntryPayload::Blank,
        RECORDS => EntryPayload::Normal(Change(read_records(&mut r)?)),
        MEMBERSHIP => {
            let mut configs = Vec::new();
            for _ in 0..r.count(4)? {
                let mut voters = BTreeSet::new();
                for _ in 0..r.count(8)? {
                    voters.insert(node_id(r.i64()?)?);
                }
                configs.push(voters);
            }
            let mut nodes = BTreeMap::new();
            for _ in 0..r.count(10)? {
                let id = node_id(r.i64()?)?;
                let len = usize::try_from(r.i16()?)
                    .map_err(|_| CodecError("negative address length".into()))?;
                let addr = String::from_utf8(r.bytes(len)?.to_vec())
                    .map_err(|_| CodecError("address is not UTF-8".into()))?;
                nodes.insert(id, BasicNode { addr });
            }
            EntryPayload::Membership(Membership::new(configs, nodes))
        }
        kind => return Err(CodecError(format!("unknown entry kind {kind}"))),
    };
    r.finish()?;
    Ok(payload)
}

/// A list of metadata records: a change, or a snapshot of the whole image.
pub fn encode_records(records: &[MetadataRecord]) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    put_records(&mut buf, records)?;
    Ok(buf.freeze())
}

pub fn decode_records(bytes: Bytes) -> Result<Vec<MetadataRecord>, CodecError> {
    let mut r = Reader(bytes);
    let records = read_records(&mut r)?;
    r.finish()?;
    Ok(records)
}

fn put_records(buf: &mut BytesMut, records: &[MetadataRecord]) -> Result<(), CodecError> {
    buf.put_i32(len_i32(records.len())?);
    for record in records {
        let encoded = record
            .encode()
            .map_err(|e| CodecError(format!("record does not encode: {e}")))?;
        buf.put_i32(len_i32(encoded.len())?);
        buf.put_slice(&encoded);
    }
    Ok(())
}

fn read_records(r: &mut Reader) -> Result<Vec<MetadataRecord>, CodecError> {
    let count = r.count(4)?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.count(1)?;
        let record = MetadataRecord::decode(r.bytes(len)?)
            .map_err(|e| CodecError(format!("metadata record: {e}")))?;
        records.push(record);
    }
    Ok(records)
}

pub(crate) fn len_i32(len: usize) -> Result<i32, CodecError> {
    i32::try_from(len).map_err(|_| CodecError(format!("{len} items do not fit")))
}

fn node_id(id: i64) -> Result<u64, CodecError> {
    u64::try_from(id).map_err(|_| CodecError(format!("negative node ID {id}")))
}

/// The quorum state kept beside the log (KRaft's `quorum-state`): the vote, and the last
/// entry removed from the log's start, whose term a snapshot install must remember.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumState {
    pub vote: Option<Vote<u64>>,
    pub last_purged: Option<LogId<u64>>,
}

impl QuorumState {
    /// One line of `key=value` pairs.
    pub fn encode(&self) -> String {
        let mut line = String::new();
        if let Some(vote) = &self.vote {
            line.push_str(&format!("term={} ", vote.leader_id.term));
            if let Some(voted_for) = vote.leader_id.voted_for {
                line.push_str(&format!("voted_for={voted_for} "));
            }
            line.push_str(&format!("committed={} ", vote.committed));
        }
        if let Some(purged) = &self.last_purged {
            line.push_str(&format!(
                "purged_term={} purged_index={} ",
                purged.leader_id.term, purged.index
            ));
        }
        line.trim_end().to_string() + "\n"
    }

    pub fn decode(text: &str) -> Result<QuorumState, CodecError> {
        let mut fields = BTreeMap::new();
        for pair in text.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| CodecError(format!("quorum state field `{pair}`")))?;
            let value: u64 = match value {
                "true" => 1,
                "false" => 0,
                number => number
                    .parse()
                    .map_err(|_| CodecError(format!("quorum state field `{pair}`")))?,
            };
            fields.insert(key, value);
        }
        let vote = fields.get("term").map(|&term| {
            let mut vote = match fields.get("voted_for") {
                Some(&node) => Vote::new(term, node),
                None => Vote::default(),
            };
            vote.leader_id.term = term;
            vote.committed = fields.get("committed") == Some(&1);
            vote
        });
        let last_purged = match (fields.get("purged_term"), fields.get("purged_index")) {
            (Some(&term), Some(&index)) => {
                Some(LogId::new(openraft::CommittedLeaderId::new(term, 0), index))
            }
            _ => None,
        };
        Ok(QuorumState { vote, last_purged })
    }
}

/// A snapshot file's first bytes and the version of its form.
const CHECKPOINT_MAGIC: &[u8; 8] = b"SPOOLSNP";
const CHECKPOINT_VERSION: i16 = 1;

/// A snapshot as a `.checkpoint` file holds it: the magic, the version, the snapshot in the
/// form [`rpc`] sends it, and a CRC-32C of everything before it.
pub fn encode_checkpoint(snapshot: &Snapshot<Quorum>) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    buf.put_slice(CHECKPOINT_MAGIC);
    buf.put_i16(CHECKPOINT_VERSION);
    rpc::put_snapshot(&mut buf, snapshot)?;
    buf.put_u32(crc32c::crc32c(&buf));
    Ok(buf.freeze())
}

/// Reads a `.checkpoint` file, refusing one that is damaged or of another version.
pub fn decode_checkpoint(mut bytes: Bytes) -> Result<Snapshot<Quorum>, CodecError> {
    let header = CHECKPOINT_MAGIC.len() + 2;
    if bytes.len() < header + 4 || !bytes.starts_with(CHECKPOINT_MAGIC) {
        return Err(CodecError("not a metadata snapshot".into()));
    }
    let crc = bytes.split_off(bytes.len() - 4).get_u32();
    if crc32c::crc32c(&bytes) != crc {
        return Err(CodecError("snapshot checksum mismatch".into()));
    }
    let mut r = Reader(bytes.split_off(CHECKPOINT_MAGIC.len()));
    let version = r.i16()?;
    if version != CHECKPOINT_VERSION {
        return Err(CodecError(format!("snapshot version {version}")));
    }
    let snapshot = rpc::read_snapshot(&mut r)?;
    r.finish()?;
    Ok(snapshot)
}

/// The Raft messages between voters.
pub mod rpc {
    use bytes::{BufMut, Bytes, BytesMut};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::storage::{Snapshot, SnapshotMeta};
    use openraft::{
        CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, StoredMembership, Vote,
    };

    use super::{CodecError, Reader, decode_payload, encode_payload, len_i32, node_id};
    use crate::quorum::Quorum;
    use crate::quorum::store::ImageSnapshot;

    fn put_vote(buf: &mut BytesMut, vote: &Vote<u64>) {
        buf.put_i64(vote.leader_id.term as i64);
        buf.put_i64(vote.leader_id.voted_for.map_or(-1, |id| id as i64));
        buf.put_i8(i8::from(vote.committed));
    }

    fn read_vote(r: &mut Reader) -> Result<Vote<u64>, CodecError> {
        let term = u64::try_from(r.i64()?).map_err(|_| CodecError("negative term".into()))?;
        let voted_for = match r.i64()? {
            -1 => None,
            id => Some(node_id(id)?),
        };
        let committed = r.i8()? != 0;
        Ok(Vote {
            leader_id: LeaderId { term, voted_for },
            committed,
        })
    }

    fn put_log_id(buf: &mut BytesMut, log_id: Option<&LogId<u64>>) {
        match log_id {
            None => buf.put_i8(0),
            Some(id) => {
                buf.put_i8(1);
                buf.put_i64(id.leader_id.term as i64);
                buf.put_i64(id.index as i64);
            }
        }
    }

    fn read_log_id(r: &mut Reader) -> Result<Option<LogId<u64>>, CodecError> {
        if r.i8()? == 0 {
            return Ok(None);
        }
        let term = u64::try_from(r.i64()?).map_err(|_| CodecError("negative term".into()))?;
        let index = u64::try_from(r.i64()?).map_err(|_| CodecError("negative index".into()))?;
        Ok(Some(LogId::new(CommittedLeaderId::new(term, 0), index)))
    }

    fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) -> Result<(), CodecError> {
        buf.put_i32(len_i32(bytes.len())?);
        buf.put_slice(bytes);
        Ok(())
    }

    fn read_bytes(r: &mut Reader) -> Result<Bytes, CodecError> {
        let len = r.count(1)?;
        r.bytes(len)
    }

    pub fn encode_vote_request(request: &VoteRequest<u64>) -> Bytes {
        let mut buf = BytesMut::new();
        put_vote(&mut buf, &request.vote);
        put_log_id(&mut buf, request.last_log_id.as_ref());
        buf.freeze()
    }

    pub fn decode_vote_request(bytes: Bytes) -> Result<VoteRequest<u64>, CodecError> {
        let mut r = Reader(bytes);
        let vote = read_vote(&mut r)?;
        let last_log_id = read_log_id(&mut r)?;
        r.finish()?;
        Ok(VoteRequest { vote, last_log_id })
    }

    pub fn encode_vote_response(response: &VoteResponse<u64>) -> Bytes {
        let mut buf = BytesMut::new();
        put_vote(&mut buf, &response.vote);
        buf.put_i8(i8::from(response.vote_granted));
        put_log_id(&mut buf, response.last_log_id.as_ref());
        buf.freeze()
    }

    pub fn decode_vote_response(bytes: Bytes) -> Result<VoteResponse<u64>, CodecError> {
        let mut r = Reader(bytes);
        let vote = read_vote(&mut r)?;
        let vote_granted = r.i8()? != 0;
        let last_log_id = read_log_id(&mut r)?;
        r.finish()?;
        Ok(VoteResponse {
            vote,
            vote_granted,
            last_log_id,
        })
    }

    pub fn encode_append_request(
        request: &AppendEntriesRequest<Quorum>,
    ) -> Result<Bytes, CodecError> {
        let mut buf = BytesMut::new();
        put_vote(&mut buf, &request.vote);
        put_log_id(&mut buf, request.prev_log_id.as_ref());
        put_log_id(&mut buf, request.leader_commit.as_ref());
        buf.put_i32(len_i32(request.entries.len())?);
        for entry in &request.entries {
            put_log_id(&mut buf, Some(&entry.log_id));
            put_bytes(&mut buf, &encode_payload(&entry.payload)?)?;
        }
        Ok(buf.freeze())
    }

    pub fn decode_append_request(bytes: Bytes) -> Result<AppendEntriesRequest<Quorum>, CodecError> {
        let mut r = Reader(bytes);
        let vote = read_vote(&mut r)?;
        let prev_log_id = read_log_id(&mut r)?;
        let leader_commit = read_log_id(&mut r)?;
        // An entry is at least a present log ID and a payload length.
        let count = r.count(1 + 16 + 4)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let log_id = read_log_id(&mut r)?
                .ok_or_else(|| CodecError("an entry without a log ID".into()))?;
            let payload = decode_payload(read_bytes(&mut r)?)?;
            entries.push(Entry { log_id, payload });
        }
        r.finish()?;
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
    }

    const SUCCESS: i8 = 0;
    const PARTIAL_SUCCESS: i8 = 1;
    const CONFLICT: i8 = 2;
    const HIGHER_VOTE: i8 = 3;

    pub fn encode_append_response(response: &AppendEntriesResponse<u64>) -> Bytes {
        let mut buf = BytesMut::new();
        match response {
            AppendEntriesResponse::Success => buf.put_i8(SUCCESS),
            AppendEntriesResponse::PartialSuccess(matching) => {
                buf.put_i8(PARTIAL_SUCCESS);
                put_log_id(&mut buf, matching.as_ref());
            }
            AppendEntriesResponse::Conflict => buf.put_i8(CONFLICT),
            AppendEntriesResponse::HigherVote(vote) => {
                buf.put_i8(HIGHER_VOTE);
                put_vote(&mut buf, vote);
            }
        }
        buf.freeze()
    }

    pub fn decode_append_response(bytes: Bytes) -> Result<AppendEntriesResponse<u64>, CodecError> {
        let mut r = Reader(bytes);
        let response = match r.i8()? {
            SUCCESS => AppendEntriesResponse::Success,
            PARTIAL_SUCCESS => AppendEntriesResponse::PartialSuccess(read_log_id(&mut r)?),
            CONFLICT => AppendEntriesResponse::Conflict,
            HIGHER_VOTE => AppendEntriesResponse::HigherVote(read_vote(&mut r)?),
            kind => return Err(CodecError(format!("unknown append answer {kind}"))),
        };
        r.finish()?;
        Ok(response)
    }

    /// A whole snapshot with the vote of the leader sending it.
    pub fn encode_snapshot(
        vote: &Vote<u64>,
        snapshot: &Snapshot<Quorum>,
    ) -> Result<Bytes, CodecError> {
        let mut buf = BytesMut::new();
        put_vote(&mut buf, vote);
        put_snapshot(&mut buf, snapshot)?;
        Ok(buf.freeze())
    }

    /// A snapshot's metadata and data, as messages and checkpoint files carry it.
    pub(super) fn put_snapshot(
        buf: &mut BytesMut,
        snapshot: &Snapshot<Quorum>,
    ) -> Result<(), CodecError> {
        let meta = &snapshot.meta;
        put_log_id(buf, meta.last_log_id.as_ref());
        put_log_id(buf, meta.last_membership.log_id().as_ref());
        let membership =
            EntryPayload::<Quorum>::Membership(meta.last_membership.membership().clone());
        put_bytes(buf, &encode_payload(&membership)?)?;
        put_bytes(buf, meta.snapshot_id.as_bytes())?;
        put_bytes(buf, &snapshot.snapshot.records)
    }

    pub(super) fn read_snapshot(r: &mut Reader) -> Result<Snapshot<Quorum>, CodecError> {
        let last_log_id = read_log_id(r)?;
        let membership_log_id = read_log_id(r)?;
        let EntryPayload::Membership(membership) = decode_payload(read_bytes(r)?)? else {
            return Err(CodecError("a snapshot without a membership".into()));
        };
        let snapshot_id = String::from_utf8(read_bytes(r)?.to_vec())
            .map_err(|_| CodecError("snapshot ID is not UTF-8".into()))?;
        let records = read_bytes(r)?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership: StoredMembership::new(membership_log_id, membership),
                snapshot_id,
            },
            snapshot: Box::new(ImageSnapshot { records }),
        })
    }

    pub fn decode_snapshot(bytes: Bytes) -> Result<(Vote<u64>, Snapshot<Quorum>), CodecError> {
        let mut r = Reader(bytes);
        let vote = read_vote(&mut r)?;
        let snapshot = read_snapshot(&mut r)?;
        r.finish()?;
        Ok((vote, snapshot))
    }

    pub fn encode_snapshot_response(response: &SnapshotResponse<u64>) -> Bytes {
        let mut buf = BytesMut::new();
        put_vote(&mut buf, &response.vote);
        buf.freeze()
    }

    pub fn decode_snapshot_response(bytes: Bytes) -> Result<SnapshotResponse<u64>, CodecError> {
        let mut r = Reader(bytes);
        let vote = read_vote(&mut r)?;
        r.finish()?;
        Ok(SnapshotResponse { vote })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spool_protocol::internal::ProducerIdsRecord;

    #[test]
    fn payloads_round_trip() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, BasicNode::new("127.0.0.1:9093")),
                (2, BasicNode::new("127.0.0.1:9193")),
                (3, BasicNode::new("127.0.0.1:9293")),
            ]),
        );
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Change(vec![MetadataRecord::ProducerIds(
                ProducerIdsRecord {
                    broker_id: 1,
                    broker_epoch: 4,
                    next_producer_id: 1000,
                    ..Default::default()
                },
            )])),
            EntryPayload::Normal(Change(Vec::new())),
            EntryPayload::Membership(membership),
        ] {
            let decoded = decode_payload(encode_payload(&payload).unwrap()).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{payload:?}"));
        }
    }

    #[test]
    fn quorum_state_round_trips() {
        for state in [
            QuorumState::default(),
            QuorumState {
                vote: Some(Vote::new(3, 2)),
                last_purged: None,
            },
            QuorumState {
                vote: Some(Vote::new_committed(7, 1)),
                last_purged: Some(LogId::new(openraft::CommittedLeaderId::new(5, 0), 120)),
            },
        ] {
            assert_eq!(QuorumState::decode(&state.encode()).unwrap(), state);
        }
        assert!(QuorumState::decode("term=x").is_err());
    }

    #[test]
    fn raft_messages_round_trip() {
        use openraft::raft::{
            AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest,
            VoteResponse,
        };
        use openraft::storage::{Snapshot, SnapshotMeta};
        use openraft::{CommittedLeaderId, Entry, StoredMembership};
        let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 0), index);
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            assert_eq!(format!("{a:?}"), format!("{b:?}"))
        };
        for request in [
            VoteRequest::new(Vote::new(3, 2), Some(log_id(2, 17))),
            VoteRequest::new(Vote::new(1, 1), None),
        ] {
            same(
                &rpc::decode_vote_request(rpc::encode_vote_request(&request)).unwrap(),
                &request,
            );
        }
        let response = VoteResponse::new(Vote::new_committed(4, 3), Some(log_id(4, 9)), true);
        same(
            &rpc::decode_vote_response(rpc::encode_vote_response(&response)).unwrap(),
            &response,
        );
        let request = AppendEntriesRequest::<Quorum> {
            vote: Vote::new_committed(5, 1),
            prev_log_id: Some(log_id(4, 10)),
            leader_commit: Some(log_id(4, 9)),
            entries: vec![
                Entry {
                    log_id: log_id(5, 11),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(5, 12),
                    payload: EntryPayload::Normal(Change(vec![MetadataRecord::ProducerIds(
                        ProducerIdsRecord {
                            broker_id: 2,
                            broker_epoch: 7,
                            next_producer_id: 3000,
                            ..Default::default()
                        },
                    )])),
                },
            ],
        };
        same(
            &rpc::decode_append_request(rpc::encode_append_request(&request).unwrap()).unwrap(),
            &request,
        );
        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(5, 11))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(6, 3)),
        ] {
            assert_eq!(
                rpc::decode_append_response(rpc::encode_append_response(&response)).unwrap(),
                response
            );
        }
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, BasicNode::new("a:9093")), (2, BasicNode::new("b:9093"))]),
        );
        let snapshot = Snapshot::<Quorum> {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(5, 12)),
                last_membership: StoredMembership::new(Some(log_id(1, 0)), membership),
                snapshot_id: "5-12".into(),
            },
            snapshot: Box::new(super::super::store::ImageSnapshot {
                records: Bytes::from_static(b"records"),
            }),
        };
        let vote = Vote::new_committed(5, 1);
        let (decoded_vote, decoded) =
            rpc::decode_snapshot(rpc::encode_snapshot(&vote, &snapshot).unwrap()).unwrap();
        assert_eq!(decoded_vote, vote);
        same(&decoded.meta, &snapshot.meta);
        assert_eq!(decoded.snapshot.records, snapshot.snapshot.records);
        // The same snapshot as a file; any flipped byte is refused.
        let file = encode_checkpoint(&snapshot).unwrap();
        let read = decode_checkpoint(file.clone()).unwrap();
        same(&read.meta, &snapshot.meta);
        assert_eq!(read.snapshot.records, snapshot.snapshot.records);
        for at in 0..file.len() {
            let mut damaged = file.to_vec();
            damaged[at] ^= 0x01;
            assert!(
                decode_checkpoint(Bytes::from(damaged)).is_err(),
                "byte {at}"
            );
        }
        assert!(decode_checkpoint(file.slice(..file.len() - 1)).is_err());
        let response = SnapshotResponse::new(Vote::new(6, 2));
        assert_eq!(
            rpc::decode_snapshot_response(rpc::encode_snapshot_response(&response))
                .unwrap()
                .vote,
            response.vote
        );
    }

    proptest! {
        /// Damaged Raft messages are errors, never panics.
        #[test]
        fn any_bytes_decode_as_raft_messages_or_fail_cleanly(
            bytes in prop::collection::vec(any::<u8>(), 0..96)
        ) {
            let bytes = Bytes::from(bytes);
            let _ = rpc::decode_vote_request(bytes.clone());
            let _ = rpc::decode_vote_response(bytes.clone());
            let _ = rpc::decode_append_request(bytes.clone());
            let _ = rpc::decode_append_response(bytes.clone());
            let _ = rpc::decode_snapshot(bytes.clone());
            let _ = decode_checkpoint(bytes.clone());
            let _ = rpc::decode_snapshot_response(bytes);
        }
    }

    proptest! {
        /// Damaged entries are errors, never panics.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_payload(Bytes::from(bytes.clone()));
            let _ = decode_records(Bytes::from(bytes));
        }
    }
}
