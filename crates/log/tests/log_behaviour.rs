//! The partition log's promises, one story each, on the in-memory file system.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spool_log::log::CHECKPOINT_FILE;
use spool_log::storage::Storage;
use spool_log::{Faults, LogConfig, LogError, MemStorage, PartitionLog};
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::{RecordBatch, RecordBatchBuilder};

mod common;

const DIR: &str = "/data/orders-0";

fn batch(first_id: usize, count: usize, timestamp: i64, compression: Compression) -> Bytes {
    let mut builder = RecordBatchBuilder::new(compression);
    for id in first_id..first_id + count {
        let value = format!("value-{id}-{}", "x".repeat(id % 50));
        builder
            .append(
                timestamp + id as i64,
                Some(format!("key-{id}").as_bytes()),
                Some(value.as_bytes()),
                &[],
            )
            .unwrap();
    }
    builder.build().unwrap()
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 512,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

fn open(storage: &MemStorage, config: LogConfig) -> (PartitionLog, spool_log::OpenReport) {
    PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config, 0).unwrap()
}

/// Every record readable from `from`, as (offset, value).
fn read_all(log: &PartitionLog, from: i64) -> Vec<(i64, String)> {
    common::records_from(log, from, 1 << 20)
        .into_iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value.expect("a value").to_vec()).expect("utf-8"),
            )
        })
        .collect()
}

#[test]
fn appends_get_consecutive_offsets_and_read_back_across_segment_rolls() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    let mut expected = Vec::new();
    for i in 0..40 {
        let codec = Compression::ALL[i % 5];
        let info = log
            .append_as_leader(batch(i * 3, 3, 1000, codec), 7, 0)
            .unwrap();
        assert_eq!(
            (info.first_offset, info.last_offset),
            (i as i64 * 3, i as i64 * 3 + 2)
        );
        for id in i * 3..i * 3 + 3 {
            expected.push((id as i64, format!("value-{id}-{}", "x".repeat(id % 50))));
        }
    }
    assert!(
        log.segment_count() > 5,
        "small segments roll: {}",
        log.segment_count()
    );
    assert_eq!(log.log_end_offset(), 120);
    assert_eq!(read_all(&log, 0), expected);
    assert_eq!(read_all(&log, 61), expected[61..].to_vec());
    // Batches carry the leader epoch the leader stamped.
    let first = log
        .read(0, 1, i64::MAX)
        .unwrap()
        .range
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(
        RecordBatch::split_first(&mut first.clone())
            .unwrap()
            .partition_leader_epoch(),
        7
    );
}

#[test]
fn the_first_batch_is_returned_whole_even_when_larger_than_max_bytes() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    log.append_as_leader(batch(0, 20, 0, Compression::None), 0, 0)
        .unwrap();
    log.append_as_leader(batch(20, 20, 0, Compression::None), 0, 0)
        .unwrap();
    let read = log.read(5, 10, i64::MAX).unwrap();
    assert_eq!((read.first_batch_offset, read.next_offset), (0, 20));
    // The high watermark bounds what is read.
    assert_eq!(log.read(0, 1 << 20, 20).unwrap().next_offset, 20);
    assert!(log.read(20, 1 << 20, 20).unwrap().range.is_none());
}

#[test]
fn reading_outside_the_log_is_offset_out_of_range() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    log.append_as_leader(batch(0, 5, 0, Compression::None), 0, 0)
        .unwrap();
    let err = log.read(6, 100, i64::MAX).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::OffsetOutOfRange);
    assert!(
        log.read(5, 100, i64::MAX).unwrap().range.is_none(),
        "reading at the end is empty, not an error"
    );
    log.advance_log_start_offset(3).unwrap();
    assert_eq!(
        log.read(2, 100, i64::MAX).unwrap_err().error_code(),
        ErrorCode::OffsetOutOfRange
    );
}

#[test]
fn a_crash_keeps_flushed_records_and_loses_only_unflushed_ones() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    for i in 0..10 {
        log.append_as_leader(batch(i * 4, 4, 0, Compression::Lz4), 0, 0)
            .unwrap();
    }
    assert_eq!(log.flush().unwrap(), 40);
    for i in 10..15 {
        log.append_as_leader(batch(i * 4, 4, 0, Compression::Lz4), 0, 0)
            .unwrap();
    }
    drop(log);
    storage.crash();

    let (log, report) = open(&storage, small_segments());
    // Every flushed record survives; unflushed ones may too (a segment roll makes the
    // outgoing segment durable), but only as a prefix with no holes.
    let end = log.log_end_offset();
    assert!((40..=60).contains(&end), "{report:?}");
    let offsets: Vec<i64> = read_all(&log, 0).iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..end).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_batch() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    for i in 0..3 {
        log.append_as_leader(batch(i * 5, 5, 0, Compression::None), 0, 0)
            .unwrap();
    }
    drop(log);
    let path = Path::new(DIR).join("00000000000000000000.log");
    let mut bytes = storage.contents(&path).unwrap();
    bytes.truncate(bytes.len() - 7);
    storage.set_contents(&path, bytes);

    let (log, report) = open(&storage, LogConfig::default());
    assert_eq!(log.log_end_offset(), 10);
    assert!(report.truncated_bytes > 0);
    assert_eq!(read_all(&log, 0).len(), 10);
}

#[test]
fn a_flipped_byte_in_an_unflushed_batch_cuts_the_log_there() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    let sizes: Vec<u64> = (0..3)
        .map(|i| {
            log.append_as_leader(batch(i * 5, 5, 0, Compression::None), 0, 0)
                .unwrap();
            log.size_bytes()
        })
        .collect();
    drop(log);
    let path = Path::new(DIR).join("00000000000000000000.log");
    let mut bytes = storage.contents(&path).unwrap();
    bytes[sizes[0] as usize + 70] ^= 0x40; // inside the second batch's records
    storage.set_contents(&path, bytes);

    let (log, _) = open(&storage, LogConfig::default());
    assert_eq!(log.log_end_offset(), 5, "only the first batch survives");
    assert_eq!(log.size_bytes(), sizes[0]);
}

#[test]
fn missing_or_corrupt_indexes_are_rebuilt() {
    let storage = MemStorage::new();
    let config = LogConfig {
        index_interval_bytes: 100,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&storage, config.clone());
    for i in 0..30 {
        log.append_as_leader(batch(i * 2, 2, 0, Compression::None), 0, 0)
            .unwrap();
    }
    log.close().unwrap();
    let index = Path::new(DIR).join("00000000000000000000.index");
    storage.remove_file(&index).unwrap();
    let time_index = Path::new(DIR).join("00000000000000000000.timeindex");
    storage.set_contents(&time_index, vec![0xff; 13]);

    let (log, _) = open(&storage, config);
    assert!(
        storage.contents(&index).unwrap().len() >= 8 * 10,
        "the offset index was rebuilt"
    );
    assert_eq!(read_all(&log, 33).first().map(|r| r.0), Some(33));
    assert_eq!(log.offset_for_timestamp(40).unwrap(), Some((40, 40)));
}

#[test]
fn a_full_disk_fails_the_append_cleanly_and_the_log_stays_readable() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    log.append_as_leader(batch(0, 5, 0, Compression::None), 0, 0)
        .unwrap();
    storage.set_faults(Faults {
        space_left_bytes: Some(40),
        ..Faults::default()
    });
    let err = log
        .append_as_leader(batch(5, 5, 0, Compression::None), 0, 0)
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::KafkaStorageError);
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(read_all(&log, 0).len(), 5);
    // Space comes back: appending works again, over the partial bytes.
    storage.set_faults(Faults::default());
    log.append_as_leader(batch(5, 5, 0, Compression::None), 0, 0)
        .unwrap();
    assert_eq!(read_all(&log, 0).len(), 10);
    log.flush().unwrap();
    drop(log);
    storage.crash();
    assert_eq!(
        read_all(&open(&storage, LogConfig::default()).0, 0).len(),
        10
    );
}

#[test]
fn a_failed_fsync_takes_the_log_offline_for_good() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    log.append_as_leader(batch(0, 5, 0, Compression::None), 0, 0)
        .unwrap();
    storage.set_faults(Faults {
        fail_syncs: true,
        ..Faults::default()
    });
    assert!(matches!(log.flush(), Err(LogError::Storage(_))));
    storage.set_faults(Faults::default());
    assert!(
        matches!(log.flush(), Err(LogError::Offline)),
        "no retry that pretends success"
    );
    assert!(matches!(
        log.append_as_leader(batch(5, 1, 0, Compression::None), 0, 0),
        Err(LogError::Offline)
    ));
}

#[test]
fn offsets_are_found_by_timestamp() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    // Record i has timestamp 10_000 + 10 * i.
    for i in 0..50 {
        let mut builder = RecordBatchBuilder::new(Compression::Gzip);
        builder
            .append(10_000 + 10 * i, Some(b"k"), Some(&[0u8; 64]), &[])
            .unwrap();
        log.append_as_leader(builder.build().unwrap(), 0, 0)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 10_000)));
    assert_eq!(
        log.offset_for_timestamp(10_125).unwrap(),
        Some((13, 10_130))
    );
    assert_eq!(
        log.offset_for_timestamp(10_490).unwrap(),
        Some((49, 10_490))
    );
    assert_eq!(log.offset_for_timestamp(10_491).unwrap(), None);
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((49, 10_490)));
}

#[test]
fn truncation_removes_the_tail_durably_and_appends_continue_from_there() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    for i in 0..20 {
        log.append_as_leader(batch(i * 2, 2, 0, Compression::None), 0, 0)
            .unwrap();
    }
    log.truncate_to(14).unwrap();
    assert_eq!(log.log_end_offset(), 14);
    let info = log
        .append_as_leader(batch(100, 2, 0, Compression::None), 1, 0)
        .unwrap();
    assert_eq!(info.first_offset, 14);
    drop(log);
    storage.crash();
    let (log, _) = open(&storage, small_segments());
    assert_eq!(
        log.log_end_offset(),
        14,
        "the truncation was durable, the later append was not flushed"
    );
}

#[test]
fn after_a_clean_shutdown_open_scans_nothing() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    for i in 0..30 {
        log.append_as_leader(batch(i, 1, 0, Compression::None), 0, 0)
            .unwrap();
    }
    log.close().unwrap();
    let (log, report) = open(&storage, small_segments());
    assert!(report.clean_shutdown);
    assert_eq!(report.segments_scanned, 0);
    assert_eq!(log.log_end_offset(), 30);
    // The marker is gone: a crash now would mean a scan again.
    drop(log);
    let (_, report) = open(&storage, small_segments());
    assert!(!report.clean_shutdown);
}

#[test]
fn a_crash_scans_only_what_follows_the_recovery_point() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    for i in 0..60 {
        log.append_as_leader(batch(i, 1, 0, Compression::None), 0, 0)
            .unwrap();
    }
    log.flush().unwrap();
    log.write_checkpoint().unwrap();
    let segments = log.segment_count();
    log.append_as_leader(batch(60, 1, 0, Compression::None), 0, 0)
        .unwrap();
    drop(log);
    storage.crash();
    let (_, report) = open(&storage, small_segments());
    assert!(segments > 10);
    assert_eq!(
        report.segments_scanned, 1,
        "only the active segment is scanned"
    );
}

#[test]
fn a_damaged_checkpoint_only_means_a_longer_recovery() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, small_segments());
    for i in 0..20 {
        log.append_as_leader(batch(i, 1, 0, Compression::None), 0, 0)
            .unwrap();
    }
    log.flush().unwrap();
    log.write_checkpoint().unwrap();
    drop(log);
    storage.set_contents(&Path::new(DIR).join(CHECKPOINT_FILE), b"garbage".to_vec());
    let (log, report) = open(&storage, small_segments());
    assert_eq!(log.log_end_offset(), 20);
    assert!(report.segments_scanned > 1);
}

#[test]
fn oversized_and_legacy_batches_are_refused_with_kafka_codes() {
    let storage = MemStorage::new();
    let (mut log, _) = open(
        &storage,
        LogConfig {
            max_message_bytes: 200,
            ..LogConfig::default()
        },
    );
    let err = log
        .append_as_leader(batch(0, 10, 0, Compression::None), 0, 0)
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::MessageTooLarge);
    let mut legacy = batch(0, 1, 0, Compression::None).to_vec();
    legacy[16] = 1;
    let err = log.append_as_leader(Bytes::from(legacy), 0, 0).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidRecord);
    assert_eq!(log.log_end_offset(), 0);
}

/// 40 single-record batches, record i stamped 1_000 * i, in ~5 small segments.
fn timed_log(storage: &MemStorage, config: LogConfig) -> PartitionLog {
    let (mut log, _) = open(storage, config);
    for i in 0..40 {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder
            .append(1_000 * i, Some(b"k"), Some(&[7u8; 60]), &[])
            .unwrap();
        log.append_as_leader(builder.build().unwrap(), 0, 0)
            .unwrap();
    }
    log
}

#[test]
fn time_retention_deletes_expired_closed_segments_and_moves_the_log_start() {
    let storage = MemStorage::new();
    let config = LogConfig {
        segment_bytes: 1024,
        retention_ms: 10_000,
        ..LogConfig::default()
    };
    let mut log = timed_log(&storage, config);
    let segments = log.segment_count();
    assert!(segments >= 4, "{segments} segments");

    // At now = 30_500, records stamped before 20_500 are expired.
    let deleted = log.apply_retention(30_500).unwrap();
    assert!(deleted >= 1);
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 21, "log start {start}");
    assert_eq!(
        log.read(start - 1, 100, i64::MAX).unwrap_err().error_code(),
        ErrorCode::OffsetOutOfRange
    );
    assert_eq!(read_all(&log, start).first().map(|r| r.0), Some(start));
    // Deleted segments wait as .deleted files until purged.
    let names = storage.list(Path::new(DIR)).unwrap();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".log.deleted")).count(),
        deleted
    );
    assert_eq!(log.purge_deleted().unwrap(), deleted * 3);
    assert!(
        !storage
            .list(Path::new(DIR))
            .unwrap()
            .iter()
            .any(|n| n.ends_with(".deleted"))
    );

    // Far in the future everything has expired, but the active segment stays.
    log.apply_retention(10_000_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end_offset(), 40);
    let active_base = log.log_start_offset();
    assert_eq!(read_all(&log, active_base).last().map(|r| r.0), Some(39));
}

#[test]
fn size_retention_keeps_the_log_under_retention_bytes_and_survives_restart() {
    let storage = MemStorage::new();
    let config = LogConfig {
        segment_bytes: 1024,
        retention_ms: -1,
        retention_bytes: 2048,
        ..LogConfig::default()
    };
    let mut log = timed_log(&storage, config.clone());
    let before = log.size_bytes();
    log.apply_retention(0).unwrap();
    assert!(
        before > 2048 && log.size_bytes() <= 2048 + 1024,
        "{before} -> {}",
        log.size_bytes()
    );
    let start = log.log_start_offset();
    log.close().unwrap();
    let (log, _) = open(&storage, config);
    assert_eq!(
        log.log_start_offset(),
        start,
        "the new log start offset was checkpointed"
    );
    assert_eq!(log.log_end_offset(), 40);
}

#[test]
fn the_retention_point_stops_at_the_bound_and_changes_nothing() {
    let storage = MemStorage::new();
    let config = LogConfig {
        segment_bytes: 1024,
        retention_ms: -1,
        retention_bytes: 0,
        ..LogConfig::default()
    };
    let log = timed_log(&storage, config);
    // Unbounded: every closed segment could go, up to the active one.
    let all = log.retention_point(0, i64::MAX).unwrap();
    let active_base = all;
    assert!(active_base > 0 && active_base < 40);
    // Bounded: only segments that end at or before the bound.
    let bounded = log.retention_point(0, active_base - 1).unwrap();
    assert!(bounded < active_base, "{bounded} vs {active_base}");
    assert_eq!(
        log.retention_point(0, bounded - 1).map(|p| p < bounded),
        Some(true)
    );
    assert_eq!(log.retention_point(0, 0), None);
    assert_eq!(log.log_start_offset(), 0, "nothing was deleted");
}

#[test]
fn retention_leaves_compacted_topics_alone() {
    let storage = MemStorage::new();
    let config = LogConfig {
        segment_bytes: 1024,
        retention_ms: 1,
        cleanup_delete: false,
        ..LogConfig::default()
    };
    let mut log = timed_log(&storage, config);
    let segments = log.segment_count();
    assert_eq!(log.apply_retention(10_000_000).unwrap(), 0);
    assert_eq!(log.segment_count(), segments);
}

#[test]
fn the_flush_policy_asks_for_a_flush_by_count_or_age() {
    let storage = MemStorage::new();
    let (mut log, _) = open(
        &storage,
        LogConfig {
            flush_messages: 10,
            flush_ms: 5_000,
            ..LogConfig::default()
        },
    );
    log.append_as_leader(batch(0, 4, 0, Compression::None), 0, 1_000)
        .unwrap();
    assert!(!log.flush_due(1_000));
    assert!(
        log.flush_due(6_000),
        "the oldest unflushed message is 5 s old"
    );
    log.append_as_leader(batch(4, 6, 0, Compression::None), 0, 1_100)
        .unwrap();
    assert!(log.flush_due(1_100), "ten messages are unflushed");
    log.flush().unwrap();
    assert!(!log.flush_due(1_000_000), "nothing is unflushed");
}

#[test]
fn leader_epochs_are_recorded_truncated_and_survive_restarts_and_crashes() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    log.append_as_leader(batch(0, 5, 0, Compression::None), 1, 0)
        .unwrap();
    log.append_as_leader(batch(5, 5, 0, Compression::None), 1, 0)
        .unwrap();
    log.append_as_leader(batch(10, 5, 0, Compression::None), 4, 0)
        .unwrap();
    log.append_as_leader(batch(15, 5, 0, Compression::None), 6, 0)
        .unwrap();
    assert_eq!(log.end_offset_for_epoch(1), (1, 10));
    assert_eq!(log.end_offset_for_epoch(5), (4, 15));
    assert_eq!(log.end_offset_for_epoch(6), (6, 20));

    // A new leader's follower truncates to the divergence point: epoch 6 goes.
    log.truncate_to(15).unwrap();
    assert_eq!(log.leader_epochs().latest_epoch(), Some(4));
    log.close().unwrap();
    let (mut log, _) = open(&storage, LogConfig::default());
    assert_eq!(log.end_offset_for_epoch(4), (4, 15));

    // An epoch whose first batch a power cut took is dropped at open.
    log.append_as_leader(batch(15, 5, 0, Compression::None), 7, 0)
        .unwrap();
    drop(log);
    storage.crash();
    let (log, _) = open(&storage, LogConfig::default());
    assert_eq!(log.leader_epochs().latest_epoch(), Some(4));
}

#[test]
fn the_high_watermark_only_moves_forward_is_capped_and_persists() {
    let storage = MemStorage::new();
    let (mut log, _) = open(&storage, LogConfig::default());
    log.append_as_leader(batch(0, 5, 0, Compression::None), 0, 0)
        .unwrap();
    log.append_as_leader(batch(5, 5, 0, Compression::None), 0, 0)
        .unwrap();
    assert_eq!(log.advance_high_watermark(4), 4);
    assert_eq!(log.advance_high_watermark(2), 4, "never backwards");
    assert_eq!(log.advance_high_watermark(99), 10, "capped at the log end");
    assert_eq!(log.last_stable_offset(), 10);
    log.close().unwrap();
    let (mut log, _) = open(&storage, LogConfig::default());
    assert_eq!(log.high_watermark(), 10, "checkpointed");
    // Only a truncation below it brings it down.
    log.append_as_leader(batch(10, 5, 0, Compression::None), 0, 0)
        .unwrap();
    log.truncate_to(10).unwrap();
    assert_eq!(log.high_watermark(), 10);
    log.truncate_to(5).unwrap();
    assert_eq!(
        log.high_watermark(),
        5,
        "truncation removes whole batches: the log ends at 5"
    );
}

#[test]
fn segments_roll_on_segment_ms_by_record_time_even_across_restarts() {
    let storage = MemStorage::new();
    let config = LogConfig {
        segment_ms: 60_000,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&storage, config.clone());
    log.append_as_leader(batch(0, 1, 1_000_000, Compression::None), 0, 0)
        .unwrap();
    log.append_as_leader(batch(1, 1, 1_030_000, Compression::None), 0, 0)
        .unwrap();
    assert_eq!(log.segment_count(), 1, "30 s of record time: no roll");
    log.close().unwrap();
    // A restart does not reset the clock: it is the records' time that counts.
    let (mut log, _) = open(&storage, config);
    log.append_as_leader(batch(2, 1, 1_059_000, Compression::None), 0, 0)
        .unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append_as_leader(batch(3, 1, 1_061_000, Compression::None), 0, 0)
        .unwrap();
    assert_eq!(
        log.segment_count(),
        2,
        "61 s after the segment's first record: rolled"
    );
}

#[test]
fn create_time_records_outside_the_timestamp_bounds_are_invalid_timestamp() {
    let storage = MemStorage::new();
    let config = LogConfig {
        timestamp_after_max_ms: 3_600_000,
        timestamp_before_max_ms: 86_400_000,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&storage, config);
    let now = 1_700_000_000_000;
    let stamped = |timestamp: i64| {
        let mut builder = RecordBatchBuilder::new(Compression::Gzip);
        builder
            .append(now, Some(b"k"), Some(b"in range"), &[])
            .unwrap();
        builder
            .append(timestamp, Some(b"k"), Some(b"edge"), &[])
            .unwrap();
        builder.build().unwrap()
    };
    assert!(
        log.append_as_leader(stamped(now + 3_599_000), 0, now)
            .is_ok()
    );
    let future = log
        .append_as_leader(stamped(now + 7_200_000), 0, now)
        .unwrap_err();
    assert_eq!(future.error_code(), ErrorCode::InvalidTimestamp);
    let past = log
        .append_as_leader(stamped(now - 2 * 86_400_000), 0, now)
        .unwrap_err();
    assert_eq!(past.error_code(), ErrorCode::InvalidTimestamp);
    assert_eq!(log.log_end_offset(), 2, "refused batches append nothing");
}
