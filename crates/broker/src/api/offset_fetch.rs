//! OffsetFetch (versions 1–9; several groups at once from v8): a group's committed
//! offsets, of the partitions asked for or of every partition. A partition without a
//! committed offset answers offset -1, as does every partition of a group that does not
//! exist. A consumer group member asking with its member ID and epoch (v9) must be
//! current: UNKNOWN_MEMBER_ID or STALE_MEMBER_EPOCH otherwise.

use std::collections::HashSet;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use spool_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};

use crate::group::shard::{Committed, TopicOffsets};
use crate::state::BrokerState;

/// Partitions asked for by topic; `None` for every committed partition.
type Asked = Option<Vec<(String, Vec<i32>)>>;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let asked = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let member = (group.member_id.clone(), group.member_epoch);
            let fetched = fetch(
                state,
                &group.group_id,
                asked,
                member,
                request.require_stable,
            );
            let ((topics, unstable), error) = match fetched.await {
                Ok(found) => (found, ErrorCode::None),
                Err(error) => ((Vec::new(), Unstable::new()), error),
            };
            groups.push(OffsetFetchResponseGroup {
                group_id: group.group_id,
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| OffsetFetchResponseTopics {
                        name: name.clone(),
                        partitions: partitions
                            .into_iter()
                            .map(|(index, committed)| {
                                let (offset, epoch, metadata) = values(committed);
                                OffsetFetchResponsePartitions {
                                    partition_index: index,
                                    committed_offset: offset,
                                    committed_leader_epoch: epoch,
                                    metadata: Some(metadata),
                                    error_code: stability(&unstable, &name, index).code(),
                                    ..OffsetFetchResponsePartitions::default()
                                }
                            })
                            .collect(),
                        ..OffsetFetchResponseTopics::default()
                    })
                    .collect(),
                error_code: error.code(),
                ..OffsetFetchResponseGroup::default()
            });
        }
        return OffsetFetchResponse {
            groups,
            ..OffsetFetchResponse::default()
        };
    }
    let asked: Asked = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    let fetched = fetch(
        state,
        &request.group_id,
        asked.clone(),
        (None, -1),
        request.require_stable,
    );
    let ((found, unstable), error) = match fetched.await {
        Ok(found) => (found, ErrorCode::None),
        // Version 1 has no top-level error: each partition asked for carries it.
        Err(error) if version < 2 => (
            (
                asked
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()))
                    .collect(),
                Unstable::new(),
            ),
            error,
        ),
        Err(error) => ((Vec::new(), Unstable::new()), error),
    };
    let partition_error = if version < 2 { error } else { ErrorCode::None };
    OffsetFetchResponse {
        topics: found
            .into_iter()
            .map(|(name, partitions)| OffsetFetchResponseTopic {
                name: name.clone(),
                partitions: partitions
                    .into_iter()
                    .map(|(index, committed)| {
                        let (offset, epoch, metadata) = values(committed);
                        let error = match stability(&unstable, &name, index) {
                            ErrorCode::None => partition_error,
                            unstable => unstable,
                        };
                        OffsetFetchResponsePartition {
                            partition_index: index,
                            committed_offset: offset,
                            committed_leader_epoch: epoch,
                            metadata: Some(metadata),
                            error_code: error.code(),
                            ..OffsetFetchResponsePartition::default()
                        }
                    })
                    .collect(),
                ..OffsetFetchResponseTopic::default()
            })
            .collect(),
        error_code: error.code(),
        ..OffsetFetchResponse::default()
    }
}

/// Partitions whose offset an open transaction is about to change.
type Unstable = HashSet<(String, i32)>;

/// UNSTABLE_OFFSET_COMMIT for a partition with a pending transactional offset.
fn stability(unstable: &Unstable, topic: &str, partition: i32) -> ErrorCode {
    if unstable.contains(&(topic.to_string(), partition)) {
        ErrorCode::UnstableOffsetCommit
    } else {
        ErrorCode::None
    }
}

/// The committed offsets asked for; `member` is the member ID and epoch of a consumer
/// group member asking (v9), checked first. With `require_stable` (KIP-447), a partition
/// whose offset an open transaction committed is reported unstable (offset -1), and the
/// consumer asks again once the transaction ended.
async fn fetch(
    state: &Arc<BrokerState>,
    group_id: &str,
    asked: Asked,
    member: (Option<String>, i32),
    require_stable: bool,
) -> Result<(TopicOffsets, Unstable), ErrorCode> {
    state
        .groups
        .run(state, group_id, |shard, _| {
            shard.check_fetching_member(group_id, member.0.as_deref(), member.1)?;
            let mut found = shard.fetch_offsets(group_id, asked.as_deref());
            let mut unstable = Unstable::new();
            if require_stable {
                for (topic, partitions) in &mut found {
                    for (partition, committed) in partitions.iter_mut() {
                        if shard.has_pending_offset(group_id, topic, *partition) {
                            *committed = None;
                            unstable.insert((topic.clone(), *partition));
                        }
                    }
                }
            }
            Ok((found, unstable))
        })
        .await
        .and_then(|found| found)
}

/// Offset, leader epoch and metadata; -1, -1 and "" when nothing was committed.
fn values(committed: Option<Committed>) -> (i64, i32, String) {
    committed.map_or((-1, -1, String::new()), |c| {
        (c.offset, c.leader_epoch, c.metadata)
    })
}
