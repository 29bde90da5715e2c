//! Transactions through the real binary at the protocol level: the KAFKA-17754 scenario
//! under transaction version 2, Kafka's errors for bad transactional requests, the admin
//! views (DescribeTransactions, ListTransactions, DescribeProducers) and WriteTxnMarkers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use common::*;
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::messages::*;
use spool_protocol::record_batch::{RecordBatchBuilder, RecordBatches};

mod common;

fn code(error: i16) -> ErrorCode {
    ErrorCode::from_code(error).expect("a known error code")
}

fn find_txn_coordinator(client: &mut Client, id: &str) -> ErrorCode {
    let request = FindCoordinatorRequest {
        key_type: 1,
        coordinator_keys: vec![id.into()],
        ..Default::default()
    };
    let ResponseBody::FindCoordinator(response) =
        client.call(RequestBody::FindCoordinator(request), 4)
    else {
        panic!("not a FindCoordinator response")
    };
    code(response.coordinators[0].error_code)
}

fn init(client: &mut Client, id: &str, timeout_ms: i32) -> (ErrorCode, i64, i16) {
    let request = InitProducerIdRequest {
        transactional_id: Some(id.into()),
        transaction_timeout_ms: timeout_ms,
        ..Default::default()
    };
    let ResponseBody::InitProducerId(r) = client.call(RequestBody::InitProducerId(request), 4)
    else {
        panic!("not an InitProducerId response")
    };
    (code(r.error_code), r.producer_id, r.producer_epoch)
}

/// EndTxn at `version`; the answer's error, producer ID and epoch.
fn end_txn(
    client: &mut Client,
    id: &str,
    (producer_id, producer_epoch): (i64, i16),
    committed: bool,
    version: i16,
) -> (ErrorCode, i64, i16) {
    let request = EndTxnRequest {
        transactional_id: id.into(),
        producer_id,
        producer_epoch,
        committed,
        ..Default::default()
    };
    let ResponseBody::EndTxn(r) = client.call(RequestBody::EndTxn(request), version) else {
        panic!("not an EndTxn response")
    };
    (code(r.error_code), r.producer_id, r.producer_epoch)
}

/// AddPartitionsToTxn v3 for partitions of `topic`: each partition's error.
fn add_partitions(
    client: &mut Client,
    id: &str,
    (producer_id, producer_epoch): (i64, i16),
    topic: &str,
    partitions: &[i32],
) -> Vec<ErrorCode> {
    let request = AddPartitionsToTxnRequest {
        v3_and_below_transactional_id: id.into(),
        v3_and_below_producer_id: producer_id,
        v3_and_below_producer_epoch: producer_epoch,
        v3_and_below_topics: vec![add_partitions_to_txn_request::AddPartitionsToTxnTopic {
            name: topic.into(),
            partitions: partitions.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::AddPartitionsToTxn(r) =
        client.call(RequestBody::AddPartitionsToTxn(request), 3)
    else {
        panic!("not an AddPartitionsToTxn response")
    };
    r.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| code(p.partition_error_code))
        .collect()
}

/// A transactional produce of `value` to partition 0 at Produce `version`.
fn produce_txn(
    client: &mut Client,
    id: &str,
    topic: &str,
    (producer_id, producer_epoch): (i64, i16),
    sequence: i32,
    value: &str,
    version: i16,
) -> ErrorCode {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(producer_id, producer_epoch, sequence)
        .transactional(true);
    builder
        .append(1_700_000_000_000, None, Some(value.as_bytes()), &[])
        .unwrap();
    let mut request = produce_request(topic, 0, -1, builder.build().unwrap());
    request.transactional_id = Some(id.into());
    match client.call(RequestBody::Produce(request), version) {
        ResponseBody::Produce(r) => code(r.responses[0].partition_responses[0].error_code),
        other => panic!("{other:?}"),
    }
}

/// What a read_committed consumer of partition 0 keeps: (last stable offset, values),
/// dropping the records of the aborted transactions the broker lists.
fn read_committed(client: &mut Client, topic: &str) -> (i64, Vec<String>) {
    let request = FetchRequest {
        replica_id: -1,
        max_bytes: 1 << 20,
        isolation_level: 1,
        session_epoch: -1,
        topics: vec![fetch_request::FetchTopic {
            topic: topic.into(),
            partitions: vec![fetch_request::FetchPartition {
                partition: 0,
                partition_max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::Fetch(mut response) = client.call(RequestBody::Fetch(request), 12) else {
        panic!("not a Fetch response")
    };
    let data = response.responses.remove(0).partitions.remove(0);
    let aborted = data.aborted_transactions.unwrap_or_default();
    let mut values = Vec::new();
    for batch in RecordBatches::new(data.records.unwrap_or_default()) {
        let batch = batch.unwrap();
        let dropped = aborted
            .iter()
            .any(|t| t.producer_id == batch.producer_id() && t.first_offset <= batch.base_offset());
        if batch.is_control() || (batch.is_transactional() && dropped) {
            continue;
        }
        for record in batch.records(1 << 20).unwrap() {
            let value = record.unwrap().value.unwrap_or_default();
            values.push(String::from_utf8(value.to_vec()).unwrap());
        }
    }
    (data.last_stable_offset, values)
}

fn describe_transaction(
    client: &mut Client,
    id: &str,
) -> describe_transactions_response::TransactionState {
    let request = DescribeTransactionsRequest {
        transactional_ids: vec![id.into()],
        ..Default::default()
    };
    let ResponseBody::DescribeTransactions(mut r) =
        client.call(RequestBody::DescribeTransactions(request), 0)
    else {
        panic!("not a DescribeTransactions response")
    };
    r.transaction_states.remove(0)
}

fn describe_producers(
    client: &mut Client,
    topic: &str,
) -> describe_producers_response::PartitionResponse {
    let request = DescribeProducersRequest {
        topics: vec![describe_producers_request::TopicRequest {
            name: topic.into(),
            partition_indexes: vec![0],
            ..Default::default()
        }],
        ..Default::default()
    };
    let ResponseBody::DescribeProducers(mut r) =
        client.call(RequestBody::DescribeProducers(request), 0)
    else {
        panic!("not a DescribeProducers response")
    };
    r.topics.remove(0).partitions.remove(0)
}

fn list_transactions(
    client: &mut Client,
    states: &[&str],
    pattern: Option<&str>,
) -> ListTransactionsResponse {
    let request = ListTransactionsRequest {
        state_filters: states.iter().map(|s| s.to_string()).collect(),
        transactional_id_pattern: pattern.map(str::to_string),
        ..Default::default()
    };
    let ResponseBody::ListTransactions(r) = client.call(RequestBody::ListTransactions(request), 2)
    else {
        panic!("not a ListTransactions response")
    };
    r
}

/// KAFKA-17754: under transaction version 2 (EndTxn v5, Produce v12) every transaction
/// ends with a new epoch. An EndTxn or a produce of transaction N delivered late, after
/// transaction N+1 began, is fenced and can neither commit nor abort N+1 nor add to it.
#[test]
fn kafka_17754_a_late_end_txn_or_produce_of_transaction_n_does_not_affect_n_plus_1() {
    let dir = temp_dir("txn-17754");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    let topic = "ledger";
    metadata(&mut client, topic);
    let id = "kafka-17754";
    assert_eq!(find_txn_coordinator(&mut client, id), ErrorCode::None);
    let (error, pid, e0) = init(&mut client, id, 60_000);
    assert_eq!(error, ErrorCode::None);

    // Transaction N: the produce adds the partition itself; the commit bumps the epoch.
    let produced = produce_txn(&mut client, id, topic, (pid, e0), 0, "n", 12);
    assert_eq!(produced, ErrorCode::None);
    let (error, pid1, e1) = end_txn(&mut client, id, (pid, e0), true, 5);
    assert_eq!((error, pid1, e1), (ErrorCode::None, pid, e0 + 1));

    // Transaction N+1 begins.
    let produced = produce_txn(&mut client, id, topic, (pid, e1), 0, "n+1", 12);
    assert_eq!(produced, ErrorCode::None);
    // The late EndTxn of N is fenced; so is a late produce of N.
    let (error, _, _) = end_txn(&mut client, id, (pid, e0), true, 5);
    assert_eq!(error, ErrorCode::ProducerFenced);
    let late = produce_txn(&mut client, id, topic, (pid, e0), 1, "late", 12);
    assert_eq!(late, ErrorCode::InvalidProducerEpoch);
    let state = describe_transaction(&mut client, id);
    assert_eq!(
        (state.transaction_state.as_str(), state.producer_epoch),
        ("Ongoing", e1)
    );
    // N+1 is still open: read_committed stops before it and sees only N.
    let (lso, values) = read_committed(&mut client, topic);
    assert_eq!((lso, values), (2, vec!["n".to_string()]));

    // N+1 is aborted by its own producer, at its own epoch.
    let (error, _, e2) = end_txn(&mut client, id, (pid, e1), false, 5);
    assert_eq!((error, e2), (ErrorCode::None, e1 + 1));
    let (lso, values) = read_committed(&mut client, topic);
    assert_eq!((lso, values), (4, vec!["n".to_string()]));
    // A retry of that abort changes nothing and is told the current epoch.
    assert_eq!(
        end_txn(&mut client, id, (pid, e1), false, 5),
        (ErrorCode::None, pid, e2)
    );
    let producers = describe_producers(&mut client, topic);
    assert_eq!(producers.active_producers.len(), 1);
    let producer = &producers.active_producers[0];
    assert_eq!(
        (producer.producer_id, producer.producer_epoch),
        (pid, i32::from(e2))
    );
    assert_eq!(producer.current_txn_start_offset, -1);
    server.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_transactional_requests_get_kafkas_errors_and_the_coordinator_keeps_serving() {
    let dir = temp_dir("txn-errors");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "orders");
    metadata(&mut client, "doomed");
    let id = "careful";
    assert_eq!(find_txn_coordinator(&mut client, id), ErrorCode::None);
    assert_eq!(
        init(&mut client, id, 900_001).0,
        ErrorCode::InvalidTransactionTimeout
    );
    let (_, pid, epoch) = init(&mut client, id, 60_000);
    // Unknown transactional ID, unknown producer ID, wrong epoch (new and old versions).
    assert_eq!(
        end_txn(&mut client, "nobody", (pid, epoch), true, 3).0,
        ErrorCode::InvalidProducerIdMapping
    );
    assert_eq!(
        end_txn(&mut client, id, (pid + 1, epoch), true, 3).0,
        ErrorCode::InvalidProducerIdMapping
    );
    assert_eq!(
        end_txn(&mut client, id, (pid, epoch + 1), true, 3).0,
        ErrorCode::ProducerFenced
    );
    assert_eq!(
        end_txn(&mut client, id, (pid, epoch + 1), true, 1).0,
        ErrorCode::InvalidProducerEpoch
    );
    // Nothing to end.
    assert_eq!(
        end_txn(&mut client, id, (pid, epoch), true, 3).0,
        ErrorCode::InvalidTxnState
    );
    // A transactional write to a partition the transaction did not add (KIP-890
    // verification) is refused and opens nothing.
    assert_eq!(
        produce_txn(&mut client, id, "orders", (pid, epoch), 0, "stray", 9),
        ErrorCode::InvalidTxnState
    );
    assert_eq!(
        describe_producers(&mut client, "orders")
            .active_producers
            .len(),
        0
    );
    // A deleted topic cannot join a transaction.
    let request = DeleteTopicsRequest {
        topic_names: vec!["doomed".into()],
        timeout_ms: 30_000,
        ..Default::default()
    };
    client.call(RequestBody::DeleteTopics(request), 5);
    assert_eq!(
        add_partitions(&mut client, id, (pid, epoch), "doomed", &[0]),
        vec![ErrorCode::UnknownTopicOrPartition]
    );
    assert_eq!(
        describe_transaction(&mut client, "nobody").error_code,
        ErrorCode::TransactionalIdNotFound.code()
    );
    assert_eq!(
        list_transactions(&mut client, &[], Some("(")).error_code,
        ErrorCode::InvalidRegularExpression.code()
    );

    // The coordinator is healthy: a transaction of the older protocol commits.
    assert_eq!(
        add_partitions(&mut client, id, (pid, epoch), "orders", &[0]),
        vec![ErrorCode::None]
    );
    assert_eq!(
        produce_txn(&mut client, id, "orders", (pid, epoch), 0, "kept", 9),
        ErrorCode::None
    );
    assert_eq!(
        describe_producers(&mut client, "orders").active_producers[0].current_txn_start_offset,
        0
    );
    let listed = list_transactions(&mut client, &["Ongoing", "Bogus"], Some("care.*"));
    assert_eq!(listed.unknown_state_filters, vec!["Bogus".to_string()]);
    assert_eq!(listed.transaction_states.len(), 1);
    assert_eq!(listed.transaction_states[0].producer_id, pid);
    assert_eq!(
        end_txn(&mut client, id, (pid, epoch), true, 3),
        (ErrorCode::None, -1, -1)
    );
    assert_eq!(
        read_committed(&mut client, "orders"),
        (2, vec!["kept".to_string()])
    );
    assert!(
        list_transactions(&mut client, &["Ongoing"], None)
            .transaction_states
            .is_empty()
    );
    server.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn write_txn_markers_ends_a_transaction_in_a_partition() {
    let dir = temp_dir("txn-markers");
    let server = Server::start(&dir, &[]);
    let mut client = server.connect();
    metadata(&mut client, "events");
    let id = "marked";
    find_txn_coordinator(&mut client, id);
    let (_, pid, epoch) = init(&mut client, id, 60_000);
    add_partitions(&mut client, id, (pid, epoch), "events", &[0]);
    produce_txn(&mut client, id, "events", (pid, epoch), 0, "doomed", 9);
    assert_eq!(read_committed(&mut client, "events"), (0, vec![]));
    let marker = |partition: i32| write_txn_markers_request::WritableTxnMarker {
        producer_id: pid,
        producer_epoch: epoch,
        transaction_result: false,
        topics: vec![write_txn_markers_request::WritableTxnMarkerTopic {
            name: "events".into(),
            partition_indexes: vec![partition],
            ..Default::default()
        }],
        coordinator_epoch: 0,
        ..Default::default()
    };
    let request = WriteTxnMarkersRequest {
        markers: vec![marker(0), marker(7)],
        ..Default::default()
    };
    let ResponseBody::WriteTxnMarkers(response) =
        client.call(RequestBody::WriteTxnMarkers(request), 1)
    else {
        panic!("not a WriteTxnMarkers response")
    };
    let errors: Vec<ErrorCode> = response
        .markers
        .iter()
        .map(|m| code(m.topics[0].partitions[0].error_code))
        .collect();
    assert_eq!(
        errors,
        vec![ErrorCode::None, ErrorCode::UnknownTopicOrPartition]
    );
    // The abort marker ended the transaction here: the record is hidden, the LSO moves.
    assert_eq!(read_committed(&mut client, "events"), (2, vec![]));
    server.stop();
    let _ = std::fs::remove_dir_all(dir);
}
