//! TxnOffsetCommit (versions 0-5): offsets a transactional producer commits for a group
//! (consume-transform-produce). The transaction must hold the group's partition of
//! `__consumer_offsets` — added by AddOffsetsToTxn, which is checked here (KIP-890's
//! verification), or from v5 (transaction version 2) added by this request. The offsets
//! are written in the producer's transactional batch and take effect only when the
//! transaction commits.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use spool_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use crate::group::OFFSETS_TOPIC;
use crate::state::BrokerState;
use crate::txn::runtime::join_or_verify;
use crate::txn::shard::Producer;

/// The first version of transaction version 2, which adds the partition itself.
const IMPLICIT_ADD_SINCE: i16 = 5;

pub async fn handle(
    state: &Arc<BrokerState>,
    request: TxnOffsetCommitRequest,
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
        return error(&request, code);
    }
    let exists = |topic: &str, partition: i32| state.has_partition(topic, partition);
    state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.txn_commit_offsets(now, &request, &exists)
        })
        .await
        .unwrap_or_else(|code| error(&request, code))
}

fn error(request: &TxnOffsetCommitRequest, error: ErrorCode) -> TxnOffsetCommitResponse {
    TxnOffsetCommitResponse {
        topics: request
            .topics
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
