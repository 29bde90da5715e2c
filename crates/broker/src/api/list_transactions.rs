//! ListTransactions (versions 0-2): the transactional IDs this coordinator holds, filtered
//! by state, producer ID, how long their transaction has run (v1) and an RE2 pattern the
//! whole ID must match (v2). Unknown state names are echoed back; a pattern that does not
//! compile is INVALID_REGULAR_EXPRESSION.

use std::sync::Arc;

use regex::Regex;
use spool_protocol::ErrorCode;
use spool_protocol::messages::list_transactions_response::TransactionState;
use spool_protocol::messages::{ListTransactionsRequest, ListTransactionsResponse};

use crate::acl::{Authz, operation};
use crate::state::{BrokerState, now_ms};
use crate::txn::shard::TxnState;

const STATES: [TxnState; 8] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
    TxnState::Dead,
    TxnState::PrepareEpochFence,
];

/// Lists only the transactions whose ID the caller may DESCRIBE.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: ListTransactionsRequest,
    _version: i16,
) -> ListTransactionsResponse {
    let pattern = match request.transactional_id_pattern.as_deref() {
        None | Some("") => None,
        Some(pattern) => match Regex::new(&format!("^(?:{pattern})$")) {
            Ok(regex) => Some(regex),
            Err(_) => {
                return ListTransactionsResponse {
                    error_code: ErrorCode::InvalidRegularExpression.code(),
                    ..Default::default()
                };
            }
        },
    };
    let unknown_state_filters: Vec<String> = request
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    let now = now_ms();
    let (found, loading) = state.txns.read_all(|shard| {
        shard
            .iter()
            .filter(|(id, m)| {
                (request.state_filters.is_empty()
                    || request.state_filters.iter().any(|f| f == m.state.name()))
                    && (request.producer_id_filters.is_empty()
                        || request.producer_id_filters.contains(&m.producer_id))
                    && (request.duration_filter < 0
                        || (m.start_ms >= 0
                            && now.saturating_sub(m.start_ms) >= request.duration_filter))
                    && pattern.as_ref().is_none_or(|p| p.is_match(id))
            })
            .map(|(id, m)| TransactionState {
                transactional_id: id.clone(),
                producer_id: m.producer_id,
                transaction_state: m.state.name().to_string(),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    });
    let mut transaction_states: Vec<TransactionState> = found
        .into_iter()
        .flatten()
        .filter(|t| authz.transactional_id(operation::DESCRIBE, &t.transactional_id))
        .collect();
    transaction_states.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    ListTransactionsResponse {
        error_code: if loading {
            ErrorCode::CoordinatorLoadInProgress.code()
        } else {
            ErrorCode::None.code()
        },
        unknown_state_filters,
        transaction_states,
        ..Default::default()
    }
}
