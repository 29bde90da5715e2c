//! Offsets committed inside transactions (TxnOffsetCommit): kept pending per producer
//! until the transaction's marker reaches this partition of `__consumer_offsets`, then
//! applied (commit) or dropped (abort), as Kafka's group coordinator does. Their records
//! are written in transactional batches of the producer, so a load replays the same
//! decision from the markers in the log.

use spool_protocol::ErrorCode;
use spool_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use spool_protocol::messages::{
    OffsetCommitRequest, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use super::{Committed, Group, Shard, TxnRecords, offset_record, refused_commit};
use crate::group::GroupRecord;

impl Shard {
    /// TxnOffsetCommit: the offsets wait for the transaction's outcome. The group and
    /// member are checked as for a commit (a member's stale epoch or generation is
    /// ILLEGAL_GENERATION, as Kafka answers transactional commits).
    pub fn txn_commit_offsets(
        &mut self,
        now: i64,
        request: &TxnOffsetCommitRequest,
        exists: &dyn Fn(&str, i32) -> bool,
    ) -> TxnOffsetCommitResponse {
        let as_commit = OffsetCommitRequest {
            group_id: request.group_id.clone(),
            generation_id_or_member_epoch: request.generation_id,
            member_id: request.member_id.clone(),
            group_instance_id: request.group_instance_id.clone(),
            ..OffsetCommitRequest::default()
        };
        let group_error = self
            .validate_commit(now, &as_commit, 9)
            .err()
            .map(|e| match e {
                ErrorCode::StaleMemberEpoch | ErrorCode::GroupIdNotFound => {
                    ErrorCode::IllegalGeneration
                }
                other => other,
            });
        let mut records = Vec::new();
        let mut topics = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let metadata = p.committed_metadata.clone().unwrap_or_default();
                let refused = refused_commit(
                    group_error,
                    exists(&topic.name, p.partition_index),
                    &metadata,
                    &self.config,
                );
                let error = if let Some(error) = refused {
                    error
                } else {
                    let committed = Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp: now,
                        expire_timestamp: None,
                    };
                    records.push(offset_record(
                        &request.group_id,
                        &topic.name,
                        p.partition_index,
                        &committed,
                    ));
                    self.pending_txn
                        .entry(request.producer_id)
                        .or_default()
                        .insert(
                            (
                                request.group_id.clone(),
                                topic.name.clone(),
                                p.partition_index,
                            ),
                            committed,
                        );
                    ErrorCode::None
                };
                partitions.push(TxnOffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code: error.code(),
                    ..Default::default()
                });
            }
            topics.push(TxnOffsetCommitResponseTopic {
                name: topic.name.clone(),
                partitions,
                ..Default::default()
            });
        }
        if !records.is_empty() {
            self.effects.txn_records.push(TxnRecords {
                producer_id: request.producer_id,
                producer_epoch: request.producer_epoch,
                records,
            });
        }
        TxnOffsetCommitResponse {
            topics,
            ..Default::default()
        }
    }

    /// A transaction's marker reached this partition: its pending offsets are applied
    /// (commit) or dropped (abort).
    pub fn complete_transaction(&mut self, producer_id: i64, commit: bool, now: i64) {
        let Some(pending) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        if !commit {
            return;
        }
        for ((group, topic, partition), committed) in pending {
            self.groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, now))
                .offsets
                .insert((topic, partition), committed);
        }
    }

    /// Applies a stored record of a transactional batch while loading: pending until the
    /// producer's marker is replayed.
    pub fn replay_transactional(&mut self, producer_id: i64, record: GroupRecord) {
        if let GroupRecord::Offset {
            group,
            topic,
            partition,
            value: Some(value),
        } = record
        {
            self.pending_txn.entry(producer_id).or_default().insert(
                (group, topic, partition),
                Committed {
                    offset: value.offset,
                    leader_epoch: value.leader_epoch,
                    metadata: value.metadata,
                    commit_timestamp: value.commit_timestamp,
                    expire_timestamp: None,
                },
            );
        }
    }

    /// Whether an open transaction holds an offset for the group's partition (an
    /// OffsetFetch that requires stable offsets must wait).
    pub fn has_pending_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn.values().any(|pending| {
            pending.contains_key(&(group_id.to_string(), topic.to_string(), partition))
        })
    }
}
