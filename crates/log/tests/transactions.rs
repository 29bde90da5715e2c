//! Transactions in the partition log: open transactions hold back the last stable offset,
//! markers end them, aborted ones are indexed per segment, and all of it survives clean
//! restarts, crashes and truncation. A model check drives interleaved transactions of
//! several producers, with compaction passes and crashes in them, and compares what a
//! read_committed reader sees with what committed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use spool_log::txn_index::AbortedTxn;
use spool_log::{Faults, KeepAllBatches, LogConfig, MemStorage, PartitionLog, Storage};
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::{
    ControlRecordType, RecordBatch, RecordBatchBuilder, RecordBatches,
};

const DIR: &str = "/data/orders-0";

fn batch(pid: i64, epoch: i16, seq: i32, values: &[&str], transactional: bool) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(pid, epoch, seq)
        .transactional(transactional);
    for value in values {
        // Every record its own key: compaction removes only what transactions decide.
        builder
            .append(1_000, Some(value.as_bytes()), Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap()
}

fn open(storage: &MemStorage) -> PartitionLog {
    let config = LogConfig {
        segment_bytes: 300,
        cleanup_compact: true,
        min_compaction_lag_ms: 0,
        delete_retention_ms: 0,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config, 0)
        .unwrap()
        .0;
    let end = log.log_end_offset();
    log.advance_high_watermark(end);
    log
}

fn append(log: &mut PartitionLog, records: Bytes) -> i64 {
    let info = log.append_as_leader(records, 0, 1_000).unwrap();
    log.advance_high_watermark(info.last_offset + 1);
    info.first_offset
}

fn marker(log: &mut PartitionLog, kind: ControlRecordType, pid: i64, epoch: i16) -> i64 {
    let info = log.append_marker(kind, pid, epoch, 0, 0, 1_000).unwrap();
    log.advance_high_watermark(info.last_offset + 1);
    info.first_offset
}

/// What a read_committed consumer keeps: the values below the last stable offset, minus
/// the records of aborted transactions, which it recognises as Kafka's clients do from
/// the aborted-transaction list and the abort markers.
fn read_committed(log: &PartitionLog) -> Vec<String> {
    let upper = log.last_stable_offset();
    let mut aborted: Vec<AbortedTxn> = log.aborted_transactions(0, upper);
    aborted.sort_by_key(|t| t.first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < upper {
        let read = log.read(offset, 1 << 20, upper).unwrap();
        let Some(range) = read.range else { break };
        for batch in RecordBatches::new(range.to_bytes().unwrap()) {
            let batch = batch.unwrap();
            while let Some(t) = aborted.next_if(|t| t.first_offset <= batch.last_offset()) {
                aborting.insert(t.producer_id);
            }
            if batch.is_control() {
                let key = batch.records(1 << 20).unwrap().next().unwrap().unwrap().key;
                if key.as_deref().map(|k| k[3]) == Some(ControlRecordType::Abort as u8) {
                    aborting.remove(&batch.producer_id());
                }
                continue;
            }
            if batch.is_transactional() && aborting.contains(&batch.producer_id()) {
                continue;
            }
            for record in batch.records(1 << 20).unwrap() {
                let record = record.unwrap();
                out.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
            }
        }
        offset = read.next_offset;
    }
    out
}

#[test]
fn open_transactions_hold_the_last_stable_offset_and_aborts_are_indexed() {
    let storage = MemStorage::new();
    let mut log = open(&storage);
    append(&mut log, batch(-1, -1, -1, &["plain"], false));
    assert_eq!(log.last_stable_offset(), 1);
    let first = append(&mut log, batch(7, 0, 0, &["a1", "a2"], true));
    append(&mut log, batch(8, 0, 0, &["b1"], true));
    append(&mut log, batch(-1, -1, -1, &["plain2"], false));
    assert_eq!(log.last_stable_offset(), first);
    assert_eq!(log.high_watermark(), 5);
    // A non-transactional write from a producer inside a transaction is refused.
    assert_eq!(
        log.append_as_leader(batch(7, 0, 2, &["x"], false), 0, 0)
            .unwrap_err()
            .error_code(),
        ErrorCode::InvalidTxnState
    );
    let abort_at = marker(&mut log, ControlRecordType::Abort, 7, 0);
    // Producer 8's transaction (from offset 3) still holds the LSO.
    assert_eq!(log.last_stable_offset(), 3);
    marker(&mut log, ControlRecordType::Commit, 8, 0);
    assert_eq!(log.last_stable_offset(), log.log_end_offset());
    assert_eq!(
        log.aborted_transactions(0, i64::MAX),
        vec![AbortedTxn {
            producer_id: 7,
            first_offset: first,
            last_offset: abort_at,
            last_stable_offset: 3,
        }]
    );
    // Only readers whose range overlaps the transaction are told.
    assert!(log.aborted_transactions(abort_at + 1, i64::MAX).is_empty());
    assert!(log.aborted_transactions(0, first).is_empty());
    assert_eq!(read_committed(&log), ["plain", "b1", "plain2"]);
    // A marker from an older producer epoch is refused.
    assert_eq!(
        log.append_marker(ControlRecordType::Commit, 7, -1, 0, 0, 0)
            .unwrap_err()
            .error_code(),
        ErrorCode::InvalidProducerEpoch
    );
}

#[test]
fn transaction_state_survives_restarts_crashes_and_truncation() {
    let storage = MemStorage::new();
    let mut log = open(&storage);
    // Aborted transactions spread over several segments, then one left open.
    let mut seq = 0;
    for round in 0..6 {
        append(
            &mut log,
            batch(1, 0, seq, &[&format!("t{round}"), "pad-pad-pad"], true),
        );
        seq += 2;
        let kind = if round % 2 == 0 {
            ControlRecordType::Abort
        } else {
            ControlRecordType::Commit
        };
        marker(&mut log, kind, 1, 0);
    }
    let open_at = append(&mut log, batch(1, 0, seq, &["open"], true));
    assert!(log.segment_count() > 3, "{}", log.segment_count());
    let aborted = log.aborted_transactions(0, i64::MAX);
    assert_eq!(aborted.len(), 3);
    let seen = read_committed(&log);
    log.close().unwrap();

    let mut log = open(&storage);
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
    assert_eq!(log.last_stable_offset(), open_at);
    assert_eq!(read_committed(&log), seen);

    // A crash: the state is rebuilt from the newest snapshot and the durable tail.
    log.flush().unwrap();
    drop(log);
    storage.crash();
    let mut log = open(&storage);
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
    assert_eq!(log.last_stable_offset(), open_at);
    let abort_at = marker(&mut log, ControlRecordType::Abort, 1, 0);
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 4);
    assert_eq!(log.last_stable_offset(), abort_at + 1);

    // Truncating below the last abort forgets it and reopens that transaction.
    log.truncate_to(abort_at).unwrap();
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
    assert_eq!(log.last_stable_offset(), open_at);
    log.truncate_to(open_at).unwrap();
    assert_eq!(log.last_stable_offset(), open_at);
}

fn keyed(pid: i64, seq: i32, key: &str, value: &str, transactional: bool) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .producer(pid, 0, seq)
        .transactional(transactional);
    builder
        .append(1_000, Some(key.as_bytes()), Some(value.as_bytes()), &[])
        .unwrap();
    builder.build().unwrap()
}

/// Every batch in the log, markers included.
fn batches(log: &PartitionLog) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20, i64::MAX).unwrap();
        let Some(range) = read.range else { break };
        out.extend(RecordBatches::new(range.to_bytes().unwrap()).map(Result::unwrap));
        offset = read.next_offset;
    }
    out
}

/// Every value in the log, as read_uncommitted readers see it.
fn everything(log: &PartitionLog) -> Vec<String> {
    let data = batches(log).into_iter().filter(|b| !b.is_control());
    data.flat_map(|batch| {
        let records: Vec<_> = batch.records(1 << 20).unwrap().collect();
        records
            .into_iter()
            .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
    })
    .collect()
}

/// A compacted log of small segments (two batches each), cleanable at once.
fn compacted(delete_retention_ms: i64) -> LogConfig {
    LogConfig {
        segment_bytes: 200,
        cleanup_compact: true,
        cleanup_delete: false,
        min_compaction_lag_ms: 0,
        delete_retention_ms,
        ..LogConfig::default()
    }
}

#[test]
fn compaction_removes_aborted_records_and_waits_for_open_transactions() {
    let storage = MemStorage::new();
    let config = compacted(LogConfig::default().delete_retention_ms);
    let mut log = PartitionLog::open(Arc::new(storage), Path::new(DIR), config, 0)
        .unwrap()
        .0;
    // Committed, then aborted later for the same key: the committed value must survive.
    append(&mut log, keyed(1, 0, "k1", "committed", true));
    marker(&mut log, ControlRecordType::Commit, 1, 0);
    append(&mut log, keyed(2, 0, "k1", "aborted", true));
    marker(&mut log, ControlRecordType::Abort, 2, 0);
    append(&mut log, keyed(-1, -1, "k2", "plain", false));
    // An open transaction: its record stays until its outcome is known.
    append(&mut log, keyed(3, 0, "k1", "open", true));
    for i in 0..6 {
        append(&mut log, keyed(-1, -1, &format!("pad{i}"), "pad", false));
    }
    assert!(log.segment_count() > 3, "{}", log.segment_count());
    let hw = log.high_watermark();
    log.clean(10_000, hw, &KeepAllBatches).unwrap();
    let after = everything(&log);
    assert!(!after.contains(&"aborted".to_string()), "{after:?}");
    assert!(after.contains(&"committed".to_string()), "{after:?}");
    assert!(after.contains(&"open".to_string()), "{after:?}");
    assert_eq!(read_committed(&log), ["committed", "plain"]);

    // Once it commits (and rolls out of the active segment), it supersedes the others.
    marker(&mut log, ControlRecordType::Commit, 3, 0);
    for i in 0..6 {
        append(&mut log, keyed(-1, -1, &format!("pad{i}"), "pad", false));
    }
    let hw = log.high_watermark();
    log.clean(20_000, hw, &KeepAllBatches).unwrap();
    let after = everything(&log);
    assert!(!after.contains(&"committed".to_string()), "{after:?}");
    assert!(after.contains(&"open".to_string()), "{after:?}");
}

/// The markers in the log: (producer ID, offset).
fn markers(log: &PartitionLog) -> Vec<(i64, i64)> {
    batches(log)
        .iter()
        .filter(|b| b.is_control())
        .map(|b| (b.producer_id(), b.base_offset()))
        .collect()
}

#[test]
fn compaction_removes_markers_once_their_records_are_gone_and_the_horizon_passed() {
    let storage = MemStorage::new();
    let config = compacted(5_000);
    let dir = Path::new(DIR);
    let open = |storage: &MemStorage| {
        PartitionLog::open(Arc::new(storage.clone()), dir, config.clone(), 0)
            .unwrap()
            .0
    };
    let mut log = open(&storage);
    // Producer 1 commits a value that it supersedes later; producer 2 aborts, then
    // commits; producer 3's committed value stays the latest for its key.
    // Two batches fit a segment: the abort marker shares one with a marker that stays.
    append(&mut log, keyed(1, 0, "k1", "superseded", true));
    let superseded_commit = marker(&mut log, ControlRecordType::Commit, 1, 0);
    append(&mut log, keyed(2, 0, "k1", "aborted", true));
    append(&mut log, keyed(3, 0, "k2", "kept", true));
    let abort = marker(&mut log, ControlRecordType::Abort, 2, 0);
    let kept_commit = marker(&mut log, ControlRecordType::Commit, 3, 0);
    append(&mut log, keyed(1, 1, "k1", "newer", true));
    let newer_commit = marker(&mut log, ControlRecordType::Commit, 1, 0);
    append(&mut log, keyed(2, 1, "k3", "after-abort", true));
    let after_abort_commit = marker(&mut log, ControlRecordType::Commit, 2, 0);
    for i in 0..6 {
        append(&mut log, keyed(-1, -1, &format!("pad{i}"), "pad", false));
    }
    assert!(log.segment_count() > 4, "{}", log.segment_count());
    let committed = ["kept", "newer", "after-abort"];

    // Within delete.retention.ms of the markers: records go, every marker stays.
    log.clean(3_000, log.high_watermark(), &KeepAllBatches)
        .unwrap();
    let all_markers = vec![
        (1, superseded_commit),
        (2, abort),
        (3, kept_commit),
        (1, newer_commit),
        (2, after_abort_commit),
    ];
    assert_eq!(markers(&log), all_markers);
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 1);
    let mut seen = read_committed(&log);
    seen.retain(|v| v != "pad");
    assert_eq!(seen, committed);

    // Past it: the markers with nothing left of their transaction go, and the abort
    // takes its index entry along (or producer 2's later commit would read as aborted).
    let before_clean: Vec<(String, Vec<u8>)> = storage
        .list(dir)
        .unwrap()
        .into_iter()
        .map(|name| {
            let contents = storage.contents(&dir.join(&name)).unwrap();
            (name, contents)
        })
        .collect();
    log.clean(10_000, log.high_watermark(), &KeepAllBatches)
        .unwrap();
    let remaining = vec![(3, kept_commit), (1, newer_commit), (2, after_abort_commit)];
    assert_eq!(markers(&log), remaining);
    assert!(log.aborted_transactions(0, i64::MAX).is_empty());
    let mut seen = read_committed(&log);
    seen.retain(|v| v != "pad");
    assert_eq!(seen, committed);
    log.close().unwrap();
    let log = open(&storage);
    assert_eq!(markers(&log), remaining);
    assert!(log.aborted_transactions(0, i64::MAX).is_empty());
    drop(log);

    // A crash right after the pass committed a segment (its log and transaction index
    // renamed to `.swap`, the originals still there): opening finishes the swap.
    let abort_segment = before_clean
        .iter()
        .filter(|(name, _)| name.ends_with(".txnindex"))
        .map(|(name, _)| name.trim_end_matches(".txnindex").to_string())
        .next()
        .unwrap();
    for suffix in ["log", "txnindex"] {
        let name = format!("{abort_segment}.{suffix}");
        let cleaned = storage.contents(&dir.join(&name)).unwrap();
        storage.set_contents(&dir.join(format!("{name}.swap")), cleaned);
        let old = &before_clean.iter().find(|(n, _)| *n == name).unwrap().1;
        storage.set_contents(&dir.join(&name), old.clone());
    }
    let log = open(&storage);
    assert_eq!(markers(&log), remaining);
    assert!(log.aborted_transactions(0, i64::MAX).is_empty());
    drop(log);

    // A transaction index that reached `.swap` without its log: that pass never
    // committed, and the old index stays with the old log.
    for suffix in ["log", "txnindex"] {
        let name = format!("{abort_segment}.{suffix}");
        let old = &before_clean.iter().find(|(n, _)| *n == name).unwrap().1;
        storage.set_contents(&dir.join(&name), old.clone());
    }
    storage.set_contents(
        &dir.join(format!("{abort_segment}.txnindex.swap")),
        Vec::new(),
    );
    let log = open(&storage);
    assert!(!storage.exists(&dir.join(format!("{abort_segment}.txnindex.swap"))));
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), 1);
    assert!(markers(&log).contains(&(2, abort)));
    let mut seen = read_committed(&log);
    seen.retain(|v| v != "pad");
    assert_eq!(seen, committed);
}

#[derive(Debug, Clone)]
enum Op {
    /// Producer `p` writes a record (opening a transaction if none is open).
    Write(usize),
    /// Producer `p` ends its transaction.
    End(usize, bool),
    /// A record outside any transaction.
    Plain,
    /// Flush, lose power, reopen.
    Crash,
    /// A compaction pass, past every marker's horizon.
    Clean,
    /// A compaction pass that stops after this many writes, then power is lost.
    CrashInClean(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0..3usize).prop_map(Op::Write),
            3 => (0..3usize, any::<bool>()).prop_map(|(p, c)| Op::End(p, c)),
            2 => Just(Op::Plain),
            1 => Just(Op::Crash),
            1 => Just(Op::Clean),
            1 => (0..12u64).prop_map(Op::CrashInClean),
        ],
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn read_committed_sees_exactly_the_committed_records_in_order(ops in ops()) {
        let storage = MemStorage::new();
        let mut log = open(&storage);
        let mut seqs = [0i32; 3];
        // Per producer: the records of its open transaction.
        let mut pending: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut committed: Vec<(i64, String)> = Vec::new();
        let mut n = 0;
        for op in ops {
            match op {
                Op::Write(p) => {
                    let value = format!("p{p}-{n}");
                    n += 1;
                    let at = append(&mut log, batch(p as i64 + 10, 0, seqs[p], &[&value], true));
                    seqs[p] += 1;
                    pending.entry(p).or_default().push(format!("{at}:{value}"));
                }
                Op::End(p, commit) => {
                    let Some(records) = pending.remove(&p) else { continue };
                    let kind = if commit { ControlRecordType::Commit } else { ControlRecordType::Abort };
                    marker(&mut log, kind, p as i64 + 10, 0);
                    if commit {
                        for r in records {
                            let (at, value) = r.split_once(':').unwrap();
                            committed.push((at.parse().unwrap(), value.to_string()));
                        }
                    }
                }
                Op::Plain => {
                    let value = format!("plain-{n}");
                    n += 1;
                    let at = append(&mut log, batch(-1, -1, -1, &[&value], false));
                    committed.push((at, value));
                }
                Op::Crash => {
                    log.flush().unwrap();
                    drop(log);
                    storage.crash();
                    log = open(&storage);
                }
                Op::Clean => {
                    log.clean(10_000, log.high_watermark(), &KeepAllBatches).unwrap();
                }
                Op::CrashInClean(writes) => {
                    log.flush().unwrap();
                    storage.set_faults(Faults { writes_until_error: Some(writes), ..Faults::default() });
                    let _ = log.clean(10_000, log.high_watermark(), &KeepAllBatches);
                    drop(log);
                    storage.crash();
                    storage.set_faults(Faults::default());
                    log = open(&storage);
                }
            }
            let lso = log.last_stable_offset();
            let first_open = pending
                .values()
                .filter_map(|r| r.first())
                .map(|r| r.split_once(':').unwrap().0.parse::<i64>().unwrap())
                .min();
            prop_assert_eq!(lso, first_open.unwrap_or(log.high_watermark()));
            let mut expected: Vec<_> = committed.iter().filter(|(at, _)| *at < lso).cloned().collect();
            expected.sort();
            let expected: Vec<String> = expected.into_iter().map(|(_, v)| v).collect();
            prop_assert_eq!(read_committed(&log), expected);
        }
    }
}
