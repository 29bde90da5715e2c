//! Compaction keeps exactly the latest record of every key (and tombstones until their
//! horizon), never changes an offset, never touches the active segment, and a crash at any
//! point of a cleaning pass leaves a valid log that lost no latest value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use spool_log::{Faults, KeepAllBatches, LogConfig, MemStorage, PartitionLog};
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;

mod common;

const DIR: &str = "/data/__consumer_offsets-0";

/// (offset, key, value) as read back.
type Rec = (i64, Vec<u8>, Option<Vec<u8>>);

fn compacted_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        cleanup_compact: true,
        cleanup_delete: false,
        delete_retention_ms: 1_000,
        ..LogConfig::default()
    }
}

fn open(storage: &MemStorage, config: &LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config.clone(), 0)
        .unwrap()
        .0
}

fn read_all(log: &PartitionLog) -> Vec<Rec> {
    common::records_from(log, log.log_start_offset(), 1 << 20)
        .into_iter()
        .map(|r| {
            (
                r.offset,
                r.key.expect("compacted records have keys").to_vec(),
                r.value.map(|v| v.to_vec()),
            )
        })
        .collect()
}

/// Appends `writes` (key, value or tombstone) in batches of `per_batch`, at time `now`.
fn append(
    log: &mut PartitionLog,
    writes: &[(u8, Option<Vec<u8>>)],
    per_batch: usize,
    codec: Compression,
    now: i64,
) -> Vec<Rec> {
    let mut appended = Vec::new();
    for chunk in writes.chunks(per_batch.max(1)) {
        let mut builder = RecordBatchBuilder::new(codec);
        for (key, value) in chunk {
            builder
                .append(now, Some(&[*key]), value.as_deref(), &[])
                .unwrap();
        }
        let info = log
            .append_as_leader(builder.build().unwrap(), 0, now)
            .unwrap();
        for (i, (key, value)) in chunk.iter().enumerate() {
            appended.push((info.first_offset + i as i64, vec![*key], value.clone()));
        }
    }
    appended
}

/// What compaction must leave: in the cleaned range, each key's latest record (dropping
/// expired tombstones); everything from `active_base` on, untouched.
fn expected_after_clean(all: &[Rec], active_base: i64, tombstones_expired: bool) -> Vec<Rec> {
    let mut latest: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for (offset, key, _) in all.iter().filter(|r| r.0 < active_base) {
        latest.insert(key.clone(), *offset);
    }
    all.iter()
        .filter(|(offset, key, value)| {
            *offset >= active_base
                || (latest.get(key) == Some(offset) && !(value.is_none() && tombstones_expired))
        })
        .cloned()
        .collect()
}

/// Writes over `keys` distinct keys, values of `value_bytes`, and (when `tombstone_every`
/// is set) about one tombstone in that many writes.
fn writes() -> impl Strategy<Value = Vec<(u8, Option<Vec<u8>>)>> {
    (
        prop_oneof![Just(1u8), Just(7), Just(60)],
        20usize..300,
        prop_oneof![Just(1usize), Just(40), Just(300)],
        prop_oneof![Just(0usize), Just(5)],
    )
        .prop_flat_map(|(keys, count, value_bytes, tombstone_every)| {
            proptest::collection::vec((0..keys, any::<u8>(), 0..tombstone_every.max(1)), count)
                .prop_map(move |raw| {
                    raw.into_iter()
                        .map(|(key, byte, t)| {
                            (
                                key,
                                if tombstone_every > 0 && t == 0 {
                                    None
                                } else {
                                    Some(vec![byte; value_bytes])
                                },
                            )
                        })
                        .collect()
                })
        })
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0xC1EA);
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 48;
    }
    config.failure_persistence = None;
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cleaning_keeps_the_latest_record_per_key_at_its_offset(
        writes in writes(),
        per_batch in 1usize..12,
        codec in 0usize..5,
        segment_bytes in prop_oneof![Just(600u64), Just(4000)],
    ) {
        let storage = MemStorage::new();
        let config = compacted_config(segment_bytes);
        let mut log = open(&storage, &config);
        let all = append(&mut log, &writes, per_batch, Compression::ALL[codec], 10_000);
        let before_end = log.log_end_offset();
        let untouched_from = first_offset_of_active_segment(&log, &all);

        // Tombstones are young: they must stay.
        log.clean(10_500, i64::MAX, &KeepAllBatches).unwrap();
        prop_assert_eq!(read_all(&log), expected_after_clean(&all, untouched_from, false));
        prop_assert_eq!(log.log_end_offset(), before_end, "offsets never change");

        // Past delete.retention.ms they go; a restart reads the same log.
        let after_first = read_all(&log);
        log.clean(20_000, i64::MAX, &KeepAllBatches).unwrap();
        let expected = expected_after_clean(&after_first, untouched_from, true);
        prop_assert_eq!(read_all(&log), expected.clone());
        log.close().unwrap();
        let log = open(&storage, &config);
        prop_assert_eq!(read_all(&log), expected);
    }
}

/// The first offset of the active segment: records from here on are never cleaned.
fn first_offset_of_active_segment(log: &PartitionLog, all: &[Rec]) -> i64 {
    // A read returns a range of the file holding the offset: walk back from the last record
    // while the reads still come from the active segment's file.
    let last = all.last().map_or(0, |r| r.0);
    let last_file = log.read(last, 1, i64::MAX).unwrap().range.unwrap();
    let mut first = last;
    for r in all.iter().rev() {
        let range = log.read(r.0, 1, i64::MAX).unwrap().range.unwrap();
        if !Arc::ptr_eq(&range.file, &last_file.file) {
            break;
        }
        first = r.0;
    }
    first
}

#[test]
fn a_compacted_topic_refuses_records_without_a_key() {
    let storage = MemStorage::new();
    let mut log = open(&storage, &compacted_config(1 << 20));
    let mut builder = RecordBatchBuilder::new(Compression::None);
    builder.append(0, None, Some(b"v"), &[]).unwrap();
    let err = log
        .append_as_leader(builder.build().unwrap(), 0, 0)
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidRecord);
}

#[test]
fn the_dirty_ratio_decides_when_to_clean() {
    let storage = MemStorage::new();
    let config = LogConfig {
        min_cleanable_dirty_ratio: 0.5,
        ..compacted_config(500)
    };
    let mut log = open(&storage, &config);
    let writes: Vec<(u8, Option<Vec<u8>>)> = (0..200)
        .map(|i| ((i % 5) as u8, Some(vec![i as u8; 20])))
        .collect();
    append(&mut log, &writes, 4, Compression::None, 0);
    assert!(
        log.needs_cleaning(0, i64::MAX),
        "nothing cleaned yet: all dirty"
    );
    log.clean(0, i64::MAX, &KeepAllBatches).unwrap();
    assert!(!log.needs_cleaning(0, i64::MAX), "just cleaned");
    // Nothing at or past the high watermark is cleaned.
    let storage = MemStorage::new();
    let mut log = open(&storage, &config);
    append(&mut log, &writes, 4, Compression::None, 0);
    let before = read_all(&log);
    assert!(log.clean(0, 0, &KeepAllBatches).unwrap().is_none());
    assert_eq!(read_all(&log), before);
}

#[test]
fn a_crash_at_any_write_of_a_cleaning_pass_leaves_a_valid_log_with_every_latest_value() {
    let config = compacted_config(700);
    let writes: Vec<(u8, Option<Vec<u8>>)> = (0..240u32)
        .map(|i| ((i * 7 % 13) as u8, Some(i.to_be_bytes().to_vec())))
        .collect();
    for writes_before_crash in 0..40 {
        let storage = MemStorage::new();
        let mut log = open(&storage, &config);
        let all = append(&mut log, &writes, 3, Compression::Lz4, 0);
        log.flush().unwrap();
        let latest: BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> = all
            .iter()
            .map(|(o, k, v)| (k.clone(), (*o, v.clone())))
            .collect();

        storage.set_faults(Faults {
            writes_until_error: Some(writes_before_crash),
            ..Faults::default()
        });
        let _ = log.clean(0, i64::MAX, &KeepAllBatches);
        drop(log);
        storage.crash();

        let mut log = open(&storage, &config);
        let survivors = read_all(&log);
        assert_eq!(
            log.log_end_offset(),
            all.len() as i64,
            "crash after {writes_before_crash} writes"
        );
        // Every survivor is an original record at its original offset…
        for (offset, key, value) in &survivors {
            assert_eq!(
                &all[*offset as usize],
                &(*offset, key.clone(), value.clone()),
                "crash after {writes_before_crash} writes"
            );
        }
        // …and no key lost its latest value.
        for (key, (offset, value)) in &latest {
            assert!(
                survivors.contains(&(*offset, key.clone(), value.clone())),
                "key {key:?} lost its latest value"
            );
        }
        // Cleaning again finishes the job.
        log.clean(0, i64::MAX, &KeepAllBatches).unwrap();
        let keys_seen: std::collections::BTreeSet<Vec<u8>> =
            read_all(&log).into_iter().map(|r| r.1).collect();
        assert_eq!(keys_seen.len(), latest.len());
    }
}
