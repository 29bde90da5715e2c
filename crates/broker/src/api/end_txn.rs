//! EndTxn (versions 0-5): commit or abort the producer's transaction. The decision is
//! made durable, a marker is written to every partition of the transaction, and the
//! transaction completes before the answer goes out, so a read_committed reader sees a
//! commit as soon as its producer learns of it. From v5 (KIP-890 transaction version 2)
//! the epoch moves on with every transaction and the answer carries the producer ID and
//! epoch to continue with.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;
use crate::txn::for_version;
use crate::txn::shard::{EndOutcome, Producer};

/// The first version that understands PRODUCER_FENCED.
const FENCED_SINCE: i16 = 2;
/// The first version of transaction version 2: an epoch bump per transaction.
pub const BUMP_SINCE: i16 = 5;

fn error(code: ErrorCode) -> EndTxnResponse {
    EndTxnResponse {
        error_code: code.code(),
        ..Default::default()
    }
}

/// Needs WRITE on the transactional ID (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    if !authz.transactional_id(operation::WRITE, &request.transactional_id) {
        return error(ErrorCode::TransactionalIdAuthorizationFailed);
    }
    match end(state, &request, version).await {
        Ok(producer) => EndTxnResponse {
            producer_id: if version >= BUMP_SINCE {
                producer.id
            } else {
                -1
            },
            producer_epoch: if version >= BUMP_SINCE {
                producer.epoch
            } else {
                -1
            },
            ..Default::default()
        },
        Err(code) => error(for_version(code, version, FENCED_SINCE)),
    }
}

async fn end(
    state: &Arc<BrokerState>,
    request: &EndTxnRequest,
    version: i16,
) -> Result<Producer, ErrorCode> {
    let producer = Producer {
        id: request.producer_id,
        epoch: request.producer_epoch,
    };
    let id = request.transactional_id.as_str();
    let outcome = state
        .txns
        .run(state, id, |shard, now, allocate| {
            shard.end_txn(
                id,
                producer,
                request.committed,
                version >= BUMP_SINCE,
                now,
                allocate,
            )
        })
        .await??;
    match outcome {
        EndOutcome::Done {
            producer_id,
            producer_epoch,
        } => Ok(Producer {
            id: producer_id,
            epoch: producer_epoch,
        }),
        // The decision is durable: if its markers cannot be written now, a retry of
        // this EndTxn waits (CONCURRENT_TRANSACTIONS) until the coordinator's tick has
        // written them, then succeeds.
        EndOutcome::Markers(job) => state
            .txns
            .finish(state, job)
            .await
            .map_err(|_| ErrorCode::ConcurrentTransactions),
    }
}
