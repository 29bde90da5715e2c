//! FindCoordinator (versions 0–6; batched keys from v4): this broker coordinates every
//! group, since it leads every partition of `__consumer_offsets`. The first request for a
//! group creates that topic. Transaction coordinators are not served yet.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::find_coordinator_response::Coordinator;
use spool_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};

use crate::group::runtime::ensure_offsets_topic;
use crate::state::BrokerState;

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
        GROUP => {
            let creator = Arc::clone(state);
            match tokio::task::spawn_blocking(move || ensure_offsets_topic(&creator)).await {
                Ok(Ok(())) => ErrorCode::None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot create the offsets topic");
                    ErrorCode::CoordinatorNotAvailable
                }
                Err(_) => ErrorCode::CoordinatorNotAvailable,
            }
        }
        TRANSACTION => ErrorCode::CoordinatorNotAvailable,
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
