//! FindCoordinator (versions 0–6; batched keys from v4): this broker coordinates every
//! group and every transactional ID, since it leads every partition of
//! `__consumer_offsets` and `__transaction_state`. The first request for a group (or a
//! transactional ID) creates its topic.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::find_coordinator_response::Coordinator;
use spool_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};

use crate::group::runtime::ensure_offsets_topic;
use crate::state::BrokerState;
use crate::txn::runtime::ensure_txn_topic;

/// `key_type` of a consumer group.
const GROUP: i8 = 0;
/// `key_type` of a transactional ID.
const TRANSACTION: i8 = 1;

pub async fn handle(
    state: &Arc<BrokerState>,
    listener: &str,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys = if version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    let error = match request.key_type {
        GROUP if state.groups.is_attached() => ErrorCode::None,
        TRANSACTION if state.txns.is_attached() => ErrorCode::None,
        GROUP | TRANSACTION => {
            let created = if request.key_type == GROUP {
                ensure_offsets_topic(state).await
            } else {
                ensure_txn_topic(state).await
            };
            match created {
                Ok(()) => ErrorCode::None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a coordinator's internal topic");
                    ErrorCode::CoordinatorNotAvailable
                }
            }
        }
        _ => ErrorCode::InvalidRequest,
    };
    let endpoint = state.endpoint(listener);
    let error = match (error, endpoint) {
        (ErrorCode::None, None) => ErrorCode::CoordinatorNotAvailable,
        (error, _) => error,
    };
    let (node_id, host, port) = match (error, endpoint) {
        (ErrorCode::None, Some(e)) => (state.config.node_id, e.host.clone(), i32::from(e.port)),
        _ => (-1, String::new(), -1),
    };
    let message = (error != ErrorCode::None).then(|| error.message().to_string());
    if version >= 4 {
        FindCoordinatorResponse {
            coordinators: keys
                .into_iter()
                .map(|key| Coordinator {
                    key,
                    node_id,
                    host: host.clone(),
                    port,
                    error_code: error.code(),
                    error_message: message.clone(),
                    ..Coordinator::default()
                })
                .collect(),
            ..FindCoordinatorResponse::default()
        }
    } else {
        FindCoordinatorResponse {
            error_code: error.code(),
            error_message: message,
            node_id,
            host,
            port,
            ..FindCoordinatorResponse::default()
        }
    }
}
