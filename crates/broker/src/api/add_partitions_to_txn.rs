//! AddPartitionsToTxn (versions 0-5): partitions join a producer's transaction before it
//! writes to them. Up to v3 a client adds partitions to its own transaction; from v4 a
//! request may carry several transactions and ask only to verify that the partitions are
//! already in them (`verify_only`, KIP-890's check before a transactional write); such
//! requests come from partition leaders, which without `verify_only` add the partition a
//! transaction version 2 producer wrote to.
//! A partition that does not exist is UNKNOWN_TOPIC_OR_PARTITION and the others of its
//! transaction OPERATION_NOT_ATTEMPTED, as in Kafka.

use std::collections::HashSet;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use spool_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use spool_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use crate::acl::{Authz, operation};
use crate::state::BrokerState;
use crate::txn::for_version;
use crate::txn::shard::Producer;

/// The first version that understands PRODUCER_FENCED.
const FENCED_SINCE: i16 = 2;
/// The first version with batched transactions.
const BATCHED_SINCE: i16 = 4;

/// Each transaction needs WRITE on its transactional ID (else
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED on all its partitions) and on each topic (else
/// TOPIC_AUTHORIZATION_FAILED); the brokers' batched form (v4+) needs CLUSTER_ACTION on
/// the cluster (else CLUSTER_AUTHORIZATION_FAILED), as in Kafka.
pub async fn handle(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version < BATCHED_SINCE {
        let transaction = AddPartitionsToTxnTransaction {
            transactional_id: request.v3_and_below_transactional_id,
            producer_id: request.v3_and_below_producer_id,
            producer_epoch: request.v3_and_below_producer_epoch,
            verify_only: false,
            topics: request.v3_and_below_topics,
            ..Default::default()
        };
        let result = add(state, authz, &transaction, version).await;
        return AddPartitionsToTxnResponse {
            results_by_topic_v3_and_below: result.topic_results,
            ..Default::default()
        };
    }
    if !authz.cluster(operation::CLUSTER_ACTION) {
        return AddPartitionsToTxnResponse {
            error_code: ErrorCode::ClusterAuthorizationFailed.code(),
            ..Default::default()
        };
    }
    let mut results = Vec::with_capacity(request.transactions.len());
    for transaction in &request.transactions {
        results.push(add(state, authz, transaction, version).await);
    }
    AddPartitionsToTxnResponse {
        results_by_transaction: results,
        ..Default::default()
    }
}

async fn add(
    state: &Arc<BrokerState>,
    authz: &Authz<'_>,
    transaction: &AddPartitionsToTxnTransaction,
    version: i16,
) -> AddPartitionsToTxnResult {
    let partitions: Vec<(String, i32)> = transaction
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.clone(), p)))
        .collect();
    let writable: HashSet<&str> = transaction
        .topics
        .iter()
        .map(|t| t.name.as_str())
        .filter(|t| authz.topic(operation::WRITE, t))
        .collect();
    let refusal = |topic: &str, partition: i32| {
        if !writable.contains(topic) {
            Some(ErrorCode::TopicAuthorizationFailed)
        } else if !state.has_partition(topic, partition) {
            Some(ErrorCode::UnknownTopicOrPartition)
        } else {
            None
        }
    };
    let error = if !authz.transactional_id(operation::WRITE, &transaction.transactional_id) {
        Some(ErrorCode::TransactionalIdAuthorizationFailed)
    } else if partitions.iter().any(|(t, p)| refusal(t, *p).is_some()) {
        None
    } else {
        let producer = Producer {
            id: transaction.producer_id,
            epoch: transaction.producer_epoch,
        };
        let id = transaction.transactional_id.as_str();
        // From v4 only partition leaders send this: without `verify_only` a leader adds
        // the partition a transaction version 2 producer wrote to.
        let txn_version = if version >= BATCHED_SINCE && !transaction.verify_only {
            2
        } else {
            0
        };
        let outcome = state
            .txns
            .run(state, id, |shard, now, _| {
                shard.add_partitions(
                    id,
                    producer,
                    &partitions,
                    transaction.verify_only,
                    txn_version,
                    now,
                )
            })
            .await;
        Some(match outcome {
            Ok(Ok(())) => ErrorCode::None,
            Ok(Err(code)) | Err(code) => for_version(code, version, FENCED_SINCE),
        })
    };
    AddPartitionsToTxnResult {
        transactional_id: transaction.transactional_id.clone(),
        topic_results: transaction
            .topics
            .iter()
            .map(|topic| topic_result(topic, error, &refusal))
            .collect(),
        ..Default::default()
    }
}

/// One topic's answer: `error` for every partition, or (`None`) each partition's own
/// refusal (authorization, then existence), OPERATION_NOT_ATTEMPTED for the others.
fn topic_result(
    topic: &AddPartitionsToTxnTopic,
    error: Option<ErrorCode>,
    refusal: &dyn Fn(&str, i32) -> Option<ErrorCode>,
) -> AddPartitionsToTxnTopicResult {
    AddPartitionsToTxnTopicResult {
        name: topic.name.clone(),
        results_by_partition: topic
            .partitions
            .iter()
            .map(|&partition| {
                let code = error
                    .or_else(|| refusal(&topic.name, partition))
                    .unwrap_or(ErrorCode::OperationNotAttempted);
                AddPartitionsToTxnPartitionResult {
                    partition_index: partition,
                    partition_error_code: code.code(),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}
