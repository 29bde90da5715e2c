//! InitProducerId (versions 0-5) for idempotent producers: a producer ID never handed out
//! before, at epoch 0. As in Kafka, a request without a transactional ID always gets a
//! fresh ID; the producer ID and epoch it may carry (v3+) are not consulted.
//!
//! Transactional IDs need the transaction coordinator, which this broker does not run
//! yet: such requests are answered COORDINATOR_NOT_AVAILABLE, as Kafka answers while its
//! transaction log is not available. An empty transactional ID is INVALID_REQUEST.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use crate::state::BrokerState;

fn error(code: ErrorCode) -> InitProducerIdResponse {
    InitProducerIdResponse {
        error_code: code.code(),
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    }
}

pub async fn handle(
    state: &Arc<BrokerState>,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    match request.transactional_id.as_deref() {
        None => {}
        Some("") => return error(ErrorCode::InvalidRequest),
        Some(_) => return error(ErrorCode::CoordinatorNotAvailable),
    }
    let allocating = Arc::clone(state);
    match tokio::task::spawn_blocking(move || allocating.allocate_producer_id()).await {
        Ok(Ok(producer_id)) => InitProducerIdResponse {
            producer_id,
            producer_epoch: 0,
            ..Default::default()
        },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no producer ID could be recorded");
            error(ErrorCode::UnknownServerError)
        }
        Err(_) => error(ErrorCode::UnknownServerError),
    }
}
