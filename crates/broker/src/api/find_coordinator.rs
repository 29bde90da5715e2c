//! FindCoordinator (versions 0–6; batched keys from v4): a group's coordinator is the
//! leader of its partition of `__consumer_offsets`, a transactional ID's that of its
//! partition of `__transaction_state`. The first request for a group (or a transactional
//! ID) creates the topic.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::find_coordinator_response::Coordinator;
use spool_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};

use crate::acl::{Authz, operation};
use crate::group::OFFSETS_TOPIC;
use crate::group::runtime::ensure_offsets_topic;
use crate::state::BrokerState;
use crate::txn::TXN_TOPIC;
use crate::txn::runtime::ensure_txn_topic;

/// `key_type` of a consumer group.
const GROUP: i8 = 0;
/// `key_type` of a transactional ID.
const TRANSACTION: i8 = 1;

/// A group's coordinator is found with DESCRIBE on the group (else
/// GROUP_AUTHORIZATION_FAILED), a transaction's with DESCRIBE on its transactional ID
/// (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED).
pub async fn handle(
    state: &Arc<BrokerState>,
    (listener, authz): (&str, &Authz<'_>),
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys = if version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    // The coordinators' internal topic exists (created now if need be), or every key
    // gets the same error.
    let created = match request.key_type {
        GROUP => ensure_offsets_topic(state).await,
        TRANSACTION => ensure_txn_topic(state).await,
        _ => Ok(()),
    };
    let ready = match (request.key_type, created) {
        (GROUP | TRANSACTION, Ok(())) => Ok(()),
        (GROUP | TRANSACTION, Err(e)) => {
            tracing::warn!(error = %e, "cannot create a coordinator's internal topic");
            Err(ErrorCode::CoordinatorNotAvailable)
        }
        _ => Err(ErrorCode::InvalidRequest),
    };
    let brokers = state.live_brokers(listener);
    let locate = |key: &str| -> Result<(i32, String, i32), ErrorCode> {
        match request.key_type {
            GROUP if !authz.group(operation::DESCRIBE, key) => {
                return Err(ErrorCode::GroupAuthorizationFailed);
            }
            TRANSACTION if !authz.transactional_id(operation::DESCRIBE, key) => {
                return Err(ErrorCode::TransactionalIdAuthorizationFailed);
            }
            _ => {}
        }
        ready?;
        let (topic, partition) = if request.key_type == GROUP {
            (OFFSETS_TOPIC, state.groups.partition_for(key))
        } else {
            (TXN_TOPIC, state.txns.partition_for(key))
        };
        let (leader, _) = state
            .partition_leader(topic, partition)
            .ok_or(ErrorCode::CoordinatorNotAvailable)?;
        brokers
            .iter()
            .find(|b| b.id == leader)
            .map(|b| (b.id, b.host.clone(), i32::from(b.port)))
            .ok_or(ErrorCode::CoordinatorNotAvailable)
    };
    let answer = |key: &str| match locate(key) {
        Ok((node_id, host, port)) => (ErrorCode::None, node_id, host, port),
        Err(error) => (error, -1, String::new(), -1),
    };
    let message =
        |error: ErrorCode| (error != ErrorCode::None).then(|| error.message().to_string());
    if version >= 4 {
        FindCoordinatorResponse {
            coordinators: keys
                .into_iter()
                .map(|key| {
                    let (error, node_id, host, port) = answer(&key);
                    Coordinator {
                        key,
                        node_id,
                        host,
                        port,
                        error_code: error.code(),
                        error_message: message(error),
                        ..Coordinator::default()
                    }
                })
                .collect(),
            ..FindCoordinatorResponse::default()
        }
    } else {
        let (error, node_id, host, port) = answer(keys.first().map_or("", String::as_str));
        FindCoordinatorResponse {
            error_code: error.code(),
            error_message: message(error),
            node_id,
            host,
            port,
            ..FindCoordinatorResponse::default()
        }
    }
}
