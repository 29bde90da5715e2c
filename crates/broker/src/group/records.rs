//! The records of `__consumer_offsets` in Kafka's layout: a key that starts with its record
//! type (1 for a committed offset, 2 for a classic group's metadata, 3 and 5–8 for a
//! consumer group's epoch, members, target assignment and current assignments; Kafka also
//! reads 0 as an offset), a value that starts with its version, and no value (a tombstone)
//! for a removal.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use spool_protocol::internal::{
    ConsumerGroupCurrentMemberAssignmentKey, ConsumerGroupCurrentMemberAssignmentValue,
    ConsumerGroupMemberMetadataKey, ConsumerGroupMemberMetadataValue, ConsumerGroupMetadataKey,
    ConsumerGroupMetadataValue, ConsumerGroupTargetAssignmentMemberKey,
    ConsumerGroupTargetAssignmentMemberValue, ConsumerGroupTargetAssignmentMetadataKey,
    ConsumerGroupTargetAssignmentMetadataValue, GroupMetadataKey, GroupMetadataValue,
    OffsetCommitKey, OffsetCommitValue,
};
use spool_protocol::{DecodeError, EncodeError, Message};

/// The value versions Spool writes: offsets with their leader epoch, groups with static
/// members' instance IDs (both Kafka 2.3+ layouts, readable by every Kafka since).
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum GroupRecord {
    /// A committed offset, or its removal.
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetCommitValue>,
    },
    /// A classic group's membership and assignment, or its removal.
    Group {
        group: String,
        value: Option<GroupMetadataValue>,
    },
    /// A consumer group's epoch, or the group's removal.
    ConsumerGroup {
        group: String,
        value: Option<ConsumerGroupMetadataValue>,
    },
    /// A consumer group member's identity and subscription, or its removal.
    ConsumerMember {
        group: String,
        member: String,
        value: Option<ConsumerGroupMemberMetadataValue>,
    },
    /// The epoch of a consumer group's target assignment.
    TargetEpoch {
        group: String,
        value: Option<ConsumerGroupTargetAssignmentMetadataValue>,
    },
    /// A member's target assignment.
    TargetMember {
        group: String,
        member: String,
        value: Option<ConsumerGroupTargetAssignmentMemberValue>,
    },
    /// A member's current assignment and epochs.
    CurrentAssignment {
        group: String,
        member: String,
        value: Option<ConsumerGroupCurrentMemberAssignmentValue>,
    },
}

impl GroupRecord {
    /// The record's key and value as stored.
    pub fn encode(&self) -> Result<(Bytes, Option<Bytes>), EncodeError> {
        let mut key = BytesMut::new();
        let value = match self {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                key.put_i16(OffsetCommitKey::RECORD_TYPE);
                OffsetCommitKey {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(OFFSET_VALUE_VERSION))
                    .transpose()?
            }
            GroupRecord::Group { group, value } => {
                key.put_i16(GroupMetadataKey::RECORD_TYPE);
                GroupMetadataKey {
                    group: group.clone(),
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(GROUP_VALUE_VERSION))
                    .transpose()?
            }
            GroupRecord::ConsumerGroup { group, value } => {
                key.put_i16(ConsumerGroupMetadataKey::RECORD_TYPE);
                ConsumerGroupMetadataKey {
                    group_id: group.clone(),
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(0))
                    .transpose()?
            }
            GroupRecord::ConsumerMember {
                group,
                member,
                value,
            } => {
                key.put_i16(ConsumerGroupMemberMetadataKey::RECORD_TYPE);
                ConsumerGroupMemberMetadataKey {
                    group_id: group.clone(),
                    member_id: member.clone(),
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(0))
                    .transpose()?
            }
            GroupRecord::TargetEpoch { group, value } => {
                key.put_i16(ConsumerGroupTargetAssignmentMetadataKey::RECORD_TYPE);
                ConsumerGroupTargetAssignmentMetadataKey {
                    group_id: group.clone(),
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(0))
                    .transpose()?
            }
            GroupRecord::TargetMember {
                group,
                member,
                value,
            } => {
                key.put_i16(ConsumerGroupTargetAssignmentMemberKey::RECORD_TYPE);
                ConsumerGroupTargetAssignmentMemberKey {
                    group_id: group.clone(),
                    member_id: member.clone(),
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(0))
                    .transpose()?
            }
            GroupRecord::CurrentAssignment {
                group,
                member,
                value,
            } => {
                key.put_i16(ConsumerGroupCurrentMemberAssignmentKey::RECORD_TYPE);
                ConsumerGroupCurrentMemberAssignmentKey {
                    group_id: group.clone(),
                    member_id: member.clone(),
                }
                .encode(&mut key, 0)?;
                value
                    .as_ref()
                    .map(|v| v.to_versioned_bytes(0))
                    .transpose()?
            }
        };
        Ok((key.freeze(), value))
    }

    /// Reads a stored record; `None` for a record type this coordinator does not keep.
    pub fn decode(
        mut key: Bytes,
        value: Option<Bytes>,
    ) -> Result<Option<GroupRecord>, DecodeError> {
        if key.remaining() < 2 {
            return Err(DecodeError::Truncated {
                needed: 2,
                remaining: key.remaining(),
            });
        }
        match key.get_i16() {
            0 | 1 => {
                let key = OffsetCommitKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::Offset {
                    group: key.group,
                    topic: key.topic,
                    partition: key.partition,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            2 => {
                let key = GroupMetadataKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::Group {
                    group: key.group,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            3 => {
                let key = ConsumerGroupMetadataKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::ConsumerGroup {
                    group: key.group_id,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            5 => {
                let key = ConsumerGroupMemberMetadataKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::ConsumerMember {
                    group: key.group_id,
                    member: key.member_id,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            6 => {
                let key = ConsumerGroupTargetAssignmentMetadataKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::TargetEpoch {
                    group: key.group_id,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            7 => {
                let key = ConsumerGroupTargetAssignmentMemberKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::TargetMember {
                    group: key.group_id,
                    member: key.member_id,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            8 => {
                let key = ConsumerGroupCurrentMemberAssignmentKey::decode(&mut key, 0)?;
                Ok(Some(GroupRecord::CurrentAssignment {
                    group: key.group_id,
                    member: key.member_id,
                    value: value.map(Message::from_versioned_bytes).transpose()?,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Whether the record removes what its key names.
    pub fn is_tombstone(&self) -> bool {
        match self {
            GroupRecord::Offset { value, .. } => value.is_none(),
            GroupRecord::Group { value, .. } => value.is_none(),
            GroupRecord::ConsumerGroup { value, .. } => value.is_none(),
            GroupRecord::ConsumerMember { value, .. } => value.is_none(),
            GroupRecord::TargetEpoch { value, .. } => value.is_none(),
            GroupRecord::TargetMember { value, .. } => value.is_none(),
            GroupRecord::CurrentAssignment { value, .. } => value.is_none(),
        }
    }

    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            GroupRecord::Offset { group, .. }
            | GroupRecord::Group { group, .. }
            | GroupRecord::ConsumerGroup { group, .. }
            | GroupRecord::ConsumerMember { group, .. }
            | GroupRecord::TargetEpoch { group, .. }
            | GroupRecord::TargetMember { group, .. }
            | GroupRecord::CurrentAssignment { group, .. } => group,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_protocol::internal::group_metadata_value::MemberMetadata;

    #[test]
    fn records_round_trip_through_their_stored_form() {
        let records = [
            GroupRecord::Offset {
                group: "g".into(),
                topic: "orders".into(),
                partition: 3,
                value: Some(OffsetCommitValue {
                    offset: 42,
                    leader_epoch: 7,
                    metadata: "m".into(),
                    commit_timestamp: 1_000,
                    ..OffsetCommitValue::default()
                }),
            },
            GroupRecord::Offset {
                group: "g".into(),
                topic: "orders".into(),
                partition: 3,
                value: None,
            },
            GroupRecord::Group {
                group: "g".into(),
                value: Some(GroupMetadataValue {
                    protocol_type: "consumer".into(),
                    generation: 4,
                    protocol: Some("range".into()),
                    leader: Some("m-1".into()),
                    current_state_timestamp: 5,
                    members: vec![MemberMetadata {
                        member_id: "m-1".into(),
                        group_instance_id: Some("i".into()),
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        rebalance_timeout: 300_000,
                        session_timeout: 45_000,
                        subscription: Bytes::from_static(b"s"),
                        assignment: Bytes::from_static(b"a"),
                        ..MemberMetadata::default()
                    }],
                    ..GroupMetadataValue::default()
                }),
            },
            GroupRecord::Group {
                group: "g".into(),
                value: None,
            },
            GroupRecord::ConsumerGroup {
                group: "g".into(),
                value: Some(ConsumerGroupMetadataValue {
                    epoch: 9,
                    metadata_hash: -5,
                    ..ConsumerGroupMetadataValue::default()
                }),
            },
            GroupRecord::ConsumerMember {
                group: "g".into(),
                member: "m".into(),
                value: Some(ConsumerGroupMemberMetadataValue {
                    instance_id: Some("i".into()),
                    client_id: "c".into(),
                    subscribed_topic_names: vec!["orders".into()],
                    subscribed_topic_regex: Some("^pay.*".into()),
                    rebalance_timeout_ms: 300_000,
                    server_assignor: Some("range".into()),
                    ..ConsumerGroupMemberMetadataValue::default()
                }),
            },
            GroupRecord::TargetEpoch {
                group: "g".into(),
                value: Some(ConsumerGroupTargetAssignmentMetadataValue {
                    assignment_epoch: 9,
                    ..ConsumerGroupTargetAssignmentMetadataValue::default()
                }),
            },
            GroupRecord::TargetMember {
                group: "g".into(),
                member: "m".into(),
                value: None,
            },
            GroupRecord::CurrentAssignment {
                group: "g".into(),
                member: "m".into(),
                value: Some(ConsumerGroupCurrentMemberAssignmentValue {
                    member_epoch: 9,
                    previous_member_epoch: 8,
                    state: 1,
                    ..ConsumerGroupCurrentMemberAssignmentValue::default()
                }),
            },
        ];
        for record in records {
            let (key, value) = record.encode().unwrap();
            assert_eq!(GroupRecord::decode(key, value).unwrap(), Some(record));
        }
    }

    #[test]
    fn an_offset_key_is_laid_out_as_kafka_lays_it_out() {
        let (key, value) = GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            value: Some(OffsetCommitValue::default()),
        }
        .encode()
        .unwrap();
        // type 1, then group and topic as i16-length strings, then the partition.
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 1]);
        assert_eq!(&value.unwrap()[..2], &[0, 3]);
    }

    #[test]
    fn unknown_record_types_are_skipped_and_short_keys_refused() {
        assert_eq!(
            GroupRecord::decode(Bytes::from_static(&[0, 9, 1, 2]), None).unwrap(),
            None
        );
        assert!(GroupRecord::decode(Bytes::from_static(&[0]), None).is_err());
    }
}
