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
//! Decoding checks every length against what is left, so a damaged entry is an error and
//! never a panic or a huge allocation.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};
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
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.0.remaining() < n {
            return Err(CodecError(format!(
                "needs {n} more bytes, {} left",
                self.0.remaining()
            )));
        }
        Ok(())
    }

    fn i8(&mut self) -> Result<i8, CodecError> {
        self.need(1)?;
        Ok(self.0.get_i8())
    }

    fn i16(&mut self) -> Result<i16, CodecError> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }

    /// A count of items each at least `item_bytes` long: never more than what is left
    /// could hold.
    fn count(&mut self, item_bytes: usize) -> Result<usize, CodecError> {
        let count = self.i32()?;
        let count =
            usize::try_from(count).map_err(|_| CodecError(format!("negative count {count}")))?;
        self.need(count.saturating_mul(item_bytes))?;
        Ok(count)
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, CodecError> {
        self.need(len)?;
        Ok(self.0.split_to(len))
    }

    fn finish(self) -> Result<(), CodecError> {
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

fn len_i32(len: usize) -> Result<i32, CodecError> {
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

    proptest! {
        /// Damaged entries are errors, never panics.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_payload(Bytes::from(bytes.clone()));
            let _ = decode_records(Bytes::from(bytes));
        }
    }
}
