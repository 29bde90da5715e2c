//! InitProducerId (versions 0-5). Without a transactional ID: a producer ID never handed
//! out before, at epoch 0 (idempotent producers; the producer ID and epoch a v3+ request
//! may carry are not consulted, as in Kafka). With one: the transaction coordinator's
//! answer — a new producer ID for a new transactional ID, else the epoch bumped, which
//! fences every older instance; an ongoing transaction of the ID is aborted first.
//! An empty transactional ID is INVALID_REQUEST.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use crate::acl::{Authz, operation, resource};
use crate::state::BrokerState;
use crate::txn::for_version;
use crate::txn::shard::{InitOutcome, Producer};

/// The first version that understands PRODUCER_FENCED.
const FENCED_SINCE: i16 = 4;

fn error(code: ErrorCode) -> InitProducerIdResponse {
    InitProducerIdResponse {
        error_code: code.code(),
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    }
}

fn ready(producer_id: i64, producer_epoch: i16) -> InitProducerIdResponse {
    InitProducerIdResponse {
        producer_id,
        producer_epoch,
        ..Default::default()
    }
}

/// A transactional producer needs WRITE on its transactional ID (else
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED); an idempotent one IDEMPOTENT_WRITE on the
/// cluster or WRITE on some topic (else CLUSTER_AUTHORIZATION_FAILED), as in Kafka.
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    match request.transactional_id.as_deref() {
        None => {
            if !authz.cluster(operation::IDEMPOTENT_WRITE)
                && !authz.allows_some(operation::WRITE, resource::TOPIC)
            {
                return error(ErrorCode::ClusterAuthorizationFailed);
            }
        }
        Some("") => return error(ErrorCode::InvalidRequest),
        Some(id) if !authz.transactional_id(operation::WRITE, id) => {
            return error(ErrorCode::TransactionalIdAuthorizationFailed);
        }
        Some(id) => {
            return match transactional(state, id, &request).await {
                Ok(response) => response,
                Err(code) => error(for_version(code, version, FENCED_SINCE)),
            };
        }
    }
    match state.allocate_producer_id().await {
        Ok(producer_id) => ready(producer_id, 0),
        Err(e) => {
            tracing::warn!(error = %e, "no producer ID could be had");
            error(ErrorCode::CoordinatorLoadInProgress)
        }
    }
}

/// Asks the coordinator; when an ongoing transaction must be aborted first, aborts it and
/// asks again (a fenced transaction takes one round).
async fn transactional(
    state: &Arc<BrokerState>,
    id: &str,
    request: &InitProducerIdRequest,
) -> Result<InitProducerIdResponse, ErrorCode> {
    let expected = (request.producer_id >= 0).then_some(Producer {
        id: request.producer_id,
        epoch: request.producer_epoch,
    });
    for _ in 0..2 {
        let outcome = state
            .txns
            .run(state, id, |shard, now, allocate| {
                shard.init_producer_id(id, request.transaction_timeout_ms, expected, now, allocate)
            })
            .await??;
        match outcome {
            InitOutcome::Ready {
                producer_id,
                producer_epoch,
            } => return Ok(ready(producer_id, producer_epoch)),
            InitOutcome::AbortFirst(job) => {
                state
                    .txns
                    .finish(state, job)
                    .await
                    .map_err(|_| ErrorCode::ConcurrentTransactions)?;
            }
        }
    }
    Err(ErrorCode::ConcurrentTransactions)
}
