//! DescribeTransactions (version 0): a transactional ID's producer, epoch, timeout, state
//! and partitions, from the transaction coordinator. An unknown ID is
//! TRANSACTIONAL_ID_NOT_FOUND.

use std::collections::HashMap;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use spool_protocol::messages::{DescribeTransactionsRequest, DescribeTransactionsResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;

/// Each transaction needs DESCRIBE on its ID (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
/// only the topics the caller may DESCRIBE are listed in it.
pub fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: DescribeTransactionsRequest,
    _version: i16,
) -> DescribeTransactionsResponse {
    let transaction_states = request
        .transactional_ids
        .iter()
        .map(|id| {
            if !authz.transactional_id(operation::DESCRIBE, id) {
                return error(id, ErrorCode::TransactionalIdAuthorizationFailed);
            }
            let found = state.txns.read(id, |shard| shard.get(id).cloned());
            let metadata = match found {
                Ok(Some(metadata)) => metadata,
                Ok(None) => return error(id, ErrorCode::TransactionalIdNotFound),
                Err(code) => return error(id, code),
            };
            let mut topics: Vec<TopicData> = Vec::new();
            let mut describable = HashMap::new();
            for (topic, partition) in &metadata.partitions {
                let allowed = *describable
                    .entry(topic.as_str())
                    .or_insert_with(|| authz.topic(operation::DESCRIBE, topic));
                if !allowed {
                    continue;
                }
                match topics.last_mut() {
                    Some(last) if &last.topic == topic => last.partitions.push(*partition),
                    _ => topics.push(TopicData {
                        topic: topic.clone(),
                        partitions: vec![*partition],
                        ..Default::default()
                    }),
                }
            }
            TransactionState {
                transactional_id: id.clone(),
                transaction_state: metadata.state.name().to_string(),
                transaction_timeout_ms: metadata.timeout_ms,
                transaction_start_time_ms: metadata.start_ms,
                producer_id: metadata.producer_id,
                producer_epoch: metadata.producer_epoch,
                topics,
                ..Default::default()
            }
        })
        .collect();
    DescribeTransactionsResponse {
        transaction_states,
        ..Default::default()
    }
}

fn error(id: &str, code: ErrorCode) -> TransactionState {
    TransactionState {
        error_code: code.code(),
        transactional_id: id.to_string(),
        transaction_start_time_ms: -1,
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    }
}
