//! Idempotent producers in the partition log: sequence checks, retries answered with the
//! original offsets, and state that survives clean restarts, crashes and truncation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spool_log::storage::Storage;
use spool_log::{LogConfig, LogError, MemStorage, PartitionLog};
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;

const DIR: &str = "/data/payments-0";

/// `count` records from producer `pid`/`epoch` starting at sequence `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None).producer(pid, epoch, seq);
    for i in 0..count {
        let value = format!("p{pid}-e{epoch}-s{}", seq + i);
        builder
            .append(1_000, Some(b"k"), Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        ..LogConfig::default()
    }
}

fn open(storage: &MemStorage) -> PartitionLog {
    PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config(), 0)
        .unwrap()
        .0
}

fn error_of(result: Result<spool_log::AppendInfo, LogError>) -> ErrorCode {
    result.unwrap_err().error_code()
}

#[test]
fn retries_get_the_original_offsets_and_gaps_or_old_epochs_are_refused() {
    let storage = MemStorage::new();
    let mut log = open(&storage);
    let first = log.append_as_leader(batch(5, 0, 0, 3), 0, 0).unwrap();
    let second = log.append_as_leader(batch(5, 0, 3, 2), 0, 0).unwrap();
    assert_eq!((second.first_offset, second.last_offset), (3, 4));
    // A retry of the first batch: nothing written, the original offsets returned.
    let retry = log.append_as_leader(batch(5, 0, 0, 3), 0, 0).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.first_offset, retry.last_offset), (0, 2));
    assert!(!first.duplicate);
    assert_eq!(log.log_end_offset(), 5);
    // A gap in the sequence.
    assert_eq!(
        error_of(log.append_as_leader(batch(5, 0, 9, 1), 0, 0)),
        ErrorCode::OutOfOrderSequenceNumber
    );
    // A new epoch starts at 0; then the old epoch is fenced.
    assert_eq!(
        error_of(log.append_as_leader(batch(5, 1, 7, 1), 0, 0)),
        ErrorCode::OutOfOrderSequenceNumber
    );
    log.append_as_leader(batch(5, 1, 0, 1), 0, 0).unwrap();
    assert_eq!(
        error_of(log.append_as_leader(batch(5, 0, 5, 1), 0, 0)),
        ErrorCode::InvalidProducerEpoch
    );
    // Producers do not interfere, and batches without a producer are not checked.
    log.append_as_leader(batch(6, 0, 100, 1), 0, 0).unwrap();
    log.append_as_leader(batch(-1, -1, -1, 2), 0, 0).unwrap();
    assert_eq!(log.log_end_offset(), 9);
}

#[test]
fn producer_state_survives_clean_restarts_crashes_and_truncation() {
    let storage = MemStorage::new();
    let mut log = open(&storage);
    // Enough batches to roll several small segments (each roll writes a snapshot).
    for i in 0..20 {
        log.append_as_leader(batch(1, 0, i * 2, 2), 0, 0).unwrap();
    }
    assert!(log.segment_count() > 3);
    let before = log.producer_state().clone();
    log.close().unwrap();
    let names = storage.list(Path::new(DIR)).unwrap();
    assert!(names.iter().any(|n| n.ends_with(".snapshot")), "{names:?}");

    let mut log = open(&storage);
    assert_eq!(log.producer_state(), &before);
    let retry = log.append_as_leader(batch(1, 0, 38, 2), 0, 0).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.first_offset, 38);

    // After a crash, the state is rebuilt from the newest snapshot and the durable tail.
    log.append_as_leader(batch(1, 0, 40, 2), 0, 0).unwrap();
    log.flush().unwrap();
    drop(log);
    storage.crash();
    let mut log = open(&storage);
    assert!(
        log.append_as_leader(batch(1, 0, 40, 2), 0, 0)
            .unwrap()
            .duplicate
    );
    assert_eq!(
        error_of(log.append_as_leader(batch(1, 0, 50, 1), 0, 0)),
        ErrorCode::OutOfOrderSequenceNumber
    );

    // A replica truncating its tail forgets the batches it dropped.
    log.truncate_to(30).unwrap();
    let entry = log.producer_state().entry(1).unwrap();
    assert_eq!(entry.batches.back().map(|b| b.last_offset), Some(29));
    log.append_as_leader(batch(1, 0, 30, 2), 0, 0).unwrap();
    assert_eq!(log.log_end_offset(), 32);

    // Expiry forgets idle producers: any sequence is then accepted.
    assert_eq!(log.remove_expired_producers(1_000 + 86_400_000), 1);
    assert!(
        !log.append_as_leader(batch(1, 0, 77, 1), 0, 0)
            .unwrap()
            .duplicate
    );
}

#[test]
fn a_damaged_snapshot_falls_back_to_replaying_the_log() {
    let storage = MemStorage::new();
    let mut log = open(&storage);
    for i in 0..10 {
        log.append_as_leader(batch(3, 2, i, 1), 0, 0).unwrap();
    }
    let before = log.producer_state().clone();
    log.close().unwrap();
    for name in storage.list(Path::new(DIR)).unwrap() {
        if name.ends_with(".snapshot") {
            let file = storage.open(&Path::new(DIR).join(&name), false).unwrap();
            file.write_at(b"garbage!", 0).unwrap();
        }
    }
    let log = open(&storage);
    assert_eq!(log.producer_state(), &before);
}
