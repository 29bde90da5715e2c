//! TxnOffsetCommit (versions 0-5): offsets a transactional producer commits for a group
//! (consume-transform-produce). The transaction must hold the group's partition of
//! `__consumer_offsets` — added by AddOffsetsToTxn, which is checked here (KIP-890's
//! verification), or from v5 (transaction version 2) added by this request. The offsets
//! are written in the producer's transactional batch and take effect only when the
//! transaction commits.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestTopic;
use spool_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use spool_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use crate::acl::{Authz, operation};
use crate::group::OFFSETS_TOPIC;
use crate::state::BrokerState;
use crate::txn::runtime::join_or_verify;
use crate::txn::shard::Producer;

/// The first version of transaction version 2, which adds the partition itself.
const IMPLICIT_ADD_SINCE: i16 = 5;

/// Needs WRITE on the transactional ID (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED), READ
/// on the group (else GROUP_AUTHORIZATION_FAILED), both on every partition, and READ on
/// each topic (else TOPIC_AUTHORIZATION_FAILED on its partitions).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    mut request: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    if !authz.transactional_id(operation::WRITE, &request.transactional_id) {
        return error(
            &request.topics,
            ErrorCode::TransactionalIdAuthorizationFailed,
        );
    }
    if !authz.group(operation::READ, &request.group_id) {
        return error(&request.topics, ErrorCode::GroupAuthorizationFailed);
    }
    let (allowed, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|t| authz.topic(operation::READ, &t.name));
    request.topics = allowed;
    let mut response = commit(state, &request, version).await;
    let refused = error(&denied, ErrorCode::TopicAuthorizationFailed);
    response.topics.extend(refused.topics);
    response
}

async fn commit(
    state: &Arc<BrokerState>,
    request: &TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let partition = state.groups.partition_for(&request.group_id);
    let producer = Producer {
        id: request.producer_id,
        epoch: request.producer_epoch,
    };
    let id = request.transactional_id.as_str();
    let implicit = version >= IMPLICIT_ADD_SINCE;
    let in_txn = join_or_verify(state, id, producer, (OFFSETS_TOPIC, partition), implicit).await;
    if let Err(code) = in_txn {
        return error(&request.topics, code);
    }
    let exists = |topic: &str, partition: i32| state.has_partition(topic, partition);
    state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.txn_commit_offsets(now, request, &exists)
        })
        .await
        .unwrap_or_else(|code| error(&request.topics, code))
}

/// Every partition of `topics` answered `error`.
fn error(topics: &[TxnOffsetCommitRequestTopic], error: ErrorCode) -> TxnOffsetCommitResponse {
    TxnOffsetCommitResponse {
        topics: topics
            .iter()
            .map(|t| TxnOffsetCommitResponseTopic {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| TxnOffsetCommitResponsePartition {
                        partition_index: p.partition_index,
                        error_code: error.code(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
