//! AddPartitionsToTxn (versions 0-5): partitions join a producer's transaction before it
//! writes to them. Up to v3 a client adds partitions to its own transaction; from v4 a
//! request may carry several transactions and ask only to verify that the partitions are
//! already in them (`verify_only`, KIP-890's check before a transactional write); such
//! requests come from partition leaders, which without `verify_only` add the partition a
//! transaction version 2 producer wrote to.
//! A partition that does not exist is UNKNOWN_TOPIC_OR_PARTITION and the others of its
//! transaction OPERATION_NOT_ATTEMPTED, as in Kafka.

use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use spool_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use spool_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use crate::state::BrokerState;
use crate::txn::for_version;
use crate::txn::shard::Producer;

/// The first version that understands PRODUCER_FENCED.
const FENCED_SINCE: i16 = 2;
/// The first version with batched transactions.
const BATCHED_SINCE: i16 = 4;

pub async fn handle(
    state: &Arc<BrokerState>,
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
        let result = add(state, &transaction, version).await;
        return AddPartitionsToTxnResponse {
            results_by_topic_v3_and_below: result.topic_results,
            ..Default::default()
        };
    }
    let mut results = Vec::with_capacity(request.transactions.len());
    for transaction in &request.transactions {
        results.push(add(state, transaction, version).await);
    }
    AddPartitionsToTxnResponse {
        results_by_transaction: results,
        ..Default::default()
    }
}

async fn add(
    state: &Arc<BrokerState>,
    transaction: &AddPartitionsToTxnTransaction,
    version: i16,
) -> AddPartitionsToTxnResult {
    let partitions: Vec<(String, i32)> = transaction
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.clone(), p)))
        .collect();
    let unknown = |topic: &str, partition: i32| !state.has_partition(topic, partition);
    let error = if partitions.iter().any(|(t, p)| unknown(t, *p)) {
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
            .map(|topic| topic_result(topic, error, &unknown))
            .collect(),
        ..Default::default()
    }
}

/// One topic's answer: `error` for every partition, or (`None`) each partition's own
/// existence check.
fn topic_result(
    topic: &AddPartitionsToTxnTopic,
    error: Option<ErrorCode>,
    unknown: &dyn Fn(&str, i32) -> bool,
) -> AddPartitionsToTxnTopicResult {
    AddPartitionsToTxnTopicResult {
        name: topic.name.clone(),
        results_by_partition: topic
            .partitions
            .iter()
            .map(|&partition| {
                let code = error.unwrap_or(if unknown(&topic.name, partition) {
                    ErrorCode::UnknownTopicOrPartition
                } else {
                    ErrorCode::OperationNotAttempted
                });
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
