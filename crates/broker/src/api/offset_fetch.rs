//! OffsetFetch (versions 1–9; several groups at once from v8): a group's committed
//! offsets, of the partitions asked for or of every partition. A partition without a
//! committed offset answers offset -1, as does every partition of a group that does not
//! exist. A consumer group member asking with its member ID and epoch (v9) must be
//! current: UNKNOWN_MEMBER_ID or STALE_MEMBER_EPOCH otherwise.

use std::collections::HashMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use spool_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};

use crate::acl::{Authz, operation};
use crate::group::shard::{Committed, TopicOffsets};
use crate::state::BrokerState;

/// Partitions asked for by topic; `None` for every committed partition.
type Asked = Option<Vec<(String, Vec<i32>)>>;

pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
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
                authz,
                (&group.group_id, asked),
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
        authz,
        (&request.group_id, asked.clone()),
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

/// Partitions answered with an error instead of an offset: UNSTABLE_OFFSET_COMMIT when an
/// open transaction is about to change it, TOPIC_AUTHORIZATION_FAILED when the caller may
/// not DESCRIBE its topic.
type Unstable = HashMap<(String, i32), ErrorCode>;

fn stability(unstable: &Unstable, topic: &str, partition: i32) -> ErrorCode {
    unstable
        .get(&(topic.to_string(), partition))
        .copied()
        .unwrap_or(ErrorCode::None)
}

/// The committed offsets asked for; `member` is the member ID and epoch of a consumer
/// group member asking (v9), checked first. With `require_stable` (KIP-447), a partition
/// whose offset an open transaction committed is reported unstable (offset -1), and the
/// consumer asks again once the transaction ended.
///
/// Needs DESCRIBE on the group (else GROUP_AUTHORIZATION_FAILED). A topic the caller may
/// not DESCRIBE is answered TOPIC_AUTHORIZATION_FAILED when asked for, and left out of a
/// listing of every partition.
async fn fetch(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    (group_id, asked): (&str, Asked),
    member: (Option<String>, i32),
    require_stable: bool,
) -> Result<(TopicOffsets, Unstable), ErrorCode> {
    if !authz.group(operation::DESCRIBE, group_id) {
        return Err(ErrorCode::GroupAuthorizationFailed);
    }
    let describable = |topic: &str| authz.topic(operation::DESCRIBE, topic);
    let (asked, denied): (Asked, Vec<(String, Vec<i32>)>) = match asked {
        None => (None, Vec::new()),
        Some(topics) => {
            let (allowed, denied) = topics.into_iter().partition(|(t, _)| describable(t));
            (Some(allowed), denied)
        }
    };
    let (mut found, mut unstable) = state
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
                            unstable.insert(
                                (topic.clone(), *partition),
                                ErrorCode::UnstableOffsetCommit,
                            );
                        }
                    }
                }
            }
            Ok((found, unstable))
        })
        .await
        .and_then(|found| found)?;
    found.retain(|(topic, _)| describable(topic));
    for (topic, partitions) in denied {
        for &partition in &partitions {
            unstable.insert(
                (topic.clone(), partition),
                ErrorCode::TopicAuthorizationFailed,
            );
        }
        found.push((topic, partitions.into_iter().map(|p| (p, None)).collect()));
    }
    Ok((found, unstable))
}

/// Offset, leader epoch and metadata; -1, -1 and "" when nothing was committed.
fn values(committed: Option<Committed>) -> (i64, i32, String) {
    committed.map_or((-1, -1, String::new()), |c| {
        (c.offset, c.leader_epoch, c.metadata)
    })
}
