//! Concurrent appenders that each wait for durability share fsyncs, and every append that
//! returned survives a power cut.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use spool_log::{Faults, LogConfig, MemStorage, PartitionLog, SharedLog};
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;

const THREADS: usize = 8;
const APPENDS_PER_THREAD: usize = 40;

#[test]
fn concurrent_durable_appends_share_fsyncs_and_survive_a_power_cut() {
    let storage = MemStorage::new();
    let dir = Path::new("/data/payments-0");
    let (log, _) =
        PartitionLog::open(Arc::new(storage.clone()), dir, LogConfig::default(), 0).unwrap();
    // A slow disk: while one fsync runs, the other appenders queue up behind it.
    storage.set_faults(Faults {
        sync_delay: Some(Duration::from_millis(2)),
        ..Faults::default()
    });
    let shared = Arc::new(SharedLog::new(log));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..APPENDS_PER_THREAD {
                    let mut builder = RecordBatchBuilder::new(Compression::None);
                    builder
                        .append(
                            0,
                            Some(format!("t{t}").as_bytes()),
                            Some(format!("{t}-{i}").as_bytes()),
                            &[],
                        )
                        .unwrap();
                    let info = shared
                        .append_durably(builder.build().unwrap(), 0, 0)
                        .unwrap();
                    acknowledged.push((info.first_offset, format!("{t}-{i}")));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged: Vec<(i64, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acknowledged.sort();

    let appends = (THREADS * APPENDS_PER_THREAD) as u64;
    let rounds = shared.sync_rounds();
    assert!(
        rounds * 2 <= appends,
        "{rounds} sync rounds for {appends} appends: no grouping"
    );
    let offsets: Vec<i64> = acknowledged.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..appends as i64).collect::<Vec<_>>(),
        "each append got its own offset"
    );

    drop(
        Arc::into_inner(shared)
            .expect("all threads are done")
            .into_inner(),
    );
    storage.crash();
    let (log, _) =
        PartitionLog::open(Arc::new(storage.clone()), dir, LogConfig::default(), 0).unwrap();
    assert_eq!(
        log.log_end_offset(),
        appends as i64,
        "every acknowledged append survived"
    );
}

fn one_record() -> bytes::Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    builder.append(0, None, Some(b"v"), &[]).unwrap();
    builder.build().unwrap()
}

#[test]
fn a_flush_that_finishes_early_does_not_vouch_for_one_still_syncing() {
    let storage = MemStorage::new();
    let (mut log, _) = PartitionLog::open(
        Arc::new(storage.clone()),
        Path::new("/data/ledger-0"),
        LogConfig::default(),
        0,
    )
    .unwrap();
    let start = log.recovery_point();
    log.append_as_leader(one_record(), 0, 0).unwrap();
    // The first flush takes the dirty segment; a second one, prepared while the first
    // syncs, finds nothing left to sync and finishes first.
    let first = log.prepare_flush().unwrap();
    log.append_as_leader(one_record(), 0, 0).unwrap();
    let second = log.prepare_flush().unwrap();
    assert_eq!(log.complete_flush(second, Ok(())).unwrap(), start);
    first.sync().unwrap();
    assert_eq!(log.complete_flush(first, Ok(())).unwrap(), 2);
    // And through the shared log's external flush the same holds.
    let shared = SharedLog::new(log);
    shared.append(one_record(), 0, 0).unwrap();
    let ticket = shared.prepare_external_flush().unwrap();
    ticket.sync().unwrap();
    assert_eq!(shared.complete_external_flush(ticket, Ok(())).unwrap(), 3);
    assert_eq!(shared.durable_offset(), 3);
}
