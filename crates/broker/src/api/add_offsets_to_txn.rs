//! AddOffsetsToTxn (versions 0-4): the partition of `__consumer_offsets` that holds the
//! group joins the producer's transaction, so the offsets it commits there
//! (TxnOffsetCommit) are decided by the transaction's marker.

use std::sync::Arc;

use spool_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use crate::acl::{Authz, operation};
use crate::group::OFFSETS_TOPIC;
use crate::state::BrokerState;
use crate::txn::for_version;
use crate::txn::shard::Producer;

/// The first version that understands PRODUCER_FENCED.
const FENCED_SINCE: i16 = 2;

/// Needs WRITE on the transactional ID (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and
/// READ on the group (else GROUP_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let refusal = if !authz.transactional_id(operation::WRITE, &request.transactional_id) {
        Some(spool_protocol::ErrorCode::TransactionalIdAuthorizationFailed)
    } else if !authz.group(operation::READ, &request.group_id) {
        Some(spool_protocol::ErrorCode::GroupAuthorizationFailed)
    } else {
        None
    };
    if let Some(error) = refusal {
        return AddOffsetsToTxnResponse {
            error_code: error.code(),
            ..Default::default()
        };
    }
    let partition = (
        OFFSETS_TOPIC.to_string(),
        state.groups.partition_for(&request.group_id),
    );
    let producer = Producer {
        id: request.producer_id,
        epoch: request.producer_epoch,
    };
    let id = request.transactional_id.as_str();
    let outcome = state
        .txns
        .run(state, id, |shard, now, _| {
            shard.add_partitions(
                id,
                producer,
                std::slice::from_ref(&partition),
                false,
                0,
                now,
            )
        })
        .await;
    let error = match outcome {
        Ok(Ok(())) => spool_protocol::ErrorCode::None,
        Ok(Err(code)) | Err(code) => for_version(code, version, FENCED_SINCE),
    };
    AddOffsetsToTxnResponse {
        error_code: error.code(),
        ..Default::default()
    }
}
