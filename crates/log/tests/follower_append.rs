//! A follower's log built from what its leader's log serves: the same bytes at the same
//! offsets, the same leader epochs, the same transactions, and nothing written from a
//! fetch that does not line up with the follower's end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spool_log::{LogConfig, LogError, MemStorage, PartitionLog, Storage};
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::{ControlRecordType, RecordBatchBuilder};

fn batch(values: &[&str], producer: Option<(i64, i16, i32, bool)>) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    if let Some((pid, epoch, seq, transactional)) = producer {
        builder = builder
            .producer(pid, epoch, seq)
            .transactional(transactional);
    }
    for value in values {
        builder
            .append(1_000, Some(value.as_bytes()), Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap()
}

fn open(storage: &MemStorage, dir: &str) -> PartitionLog {
    let config = LogConfig {
        segment_bytes: 400,
        ..LogConfig::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    PartitionLog::open(storage, Path::new(dir), config, 1_000)
        .unwrap()
        .0
}

/// Everything `log` holds from `from`, as a fetch would return it.
fn fetched(log: &PartitionLog, from: i64) -> Bytes {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1 << 20, log.log_end_offset()).unwrap();
        let Some(range) = read.range else { break };
        out.extend_from_slice(&range.to_bytes().unwrap());
        offset = read.next_offset;
    }
    Bytes::from(out)
}

/// A leader log over two leader epochs, with a committed and an aborted transaction.
fn leader(storage: &MemStorage) -> PartitionLog {
    let mut log = open(storage, "/leader/orders-0");
    log.append_as_leader(batch(&["a", "b"], None), 0, 1_000)
        .unwrap();
    log.append_as_leader(batch(&["t1"], Some((7, 0, 0, true))), 0, 1_000)
        .unwrap();
    log.append_marker(ControlRecordType::Commit, 7, 0, 0, 0, 1_000)
        .unwrap();
    log.append_as_leader(batch(&["c", "d", "e"], None), 3, 1_000)
        .unwrap();
    log.append_as_leader(batch(&["t2", "t3"], Some((7, 0, 1, true))), 3, 1_000)
        .unwrap();
    log.append_marker(ControlRecordType::Abort, 7, 0, 0, 3, 1_000)
        .unwrap();
    log.append_as_leader(batch(&["f"], Some((9, 0, 0, false))), 5, 1_000)
        .unwrap();
    log
}

#[test]
fn a_follower_holds_what_its_leader_served_at_the_same_offsets_and_epochs() {
    let storage = MemStorage::new();
    let leader = leader(&storage);
    let mut follower = open(&storage, "/follower/orders-0");
    let served = fetched(&leader, 0);
    // Fed in two fetches, the first cut inside a batch: the cut batch waits for the next.
    let cut = served.len() / 2;
    let first = follower
        .append_as_follower(served.slice(..cut), 1_000)
        .unwrap()
        .unwrap();
    assert_eq!(first.first_offset, 0);
    assert!(follower.log_end_offset() < leader.log_end_offset());
    let resumed = fetched(&leader, follower.log_end_offset());
    let second = follower
        .append_as_follower(resumed, 1_000)
        .unwrap()
        .unwrap();
    assert_eq!(second.last_offset, leader.log_end_offset() - 1);

    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(fetched(&follower, 0), served);
    for epoch in 0..=6 {
        assert_eq!(
            follower.end_offset_for_epoch(epoch),
            leader.end_offset_for_epoch(epoch),
            "epoch {epoch}"
        );
    }
    assert_eq!(
        follower.aborted_transactions(0, follower.log_end_offset()),
        leader.aborted_transactions(0, leader.log_end_offset())
    );
    assert_eq!(follower.aborted_transactions(0, 100).len(), 1);
    assert_eq!(follower.producer_state().entry(9).map(|e| e.epoch), Some(0));
    // Reopened, the follower's log is the same.
    follower.close().unwrap();
    let reopened = open(&storage, "/follower/orders-0");
    assert_eq!(fetched(&reopened, 0), served);
    assert_eq!(
        reopened.end_offset_for_epoch(3),
        leader.end_offset_for_epoch(3)
    );
}

#[test]
fn a_fetch_that_does_not_line_up_or_is_damaged_writes_nothing() {
    let storage = MemStorage::new();
    let leader = leader(&storage);
    let mut follower = open(&storage, "/follower/orders-0");
    // Starting before the follower's end: offsets would go back.
    let first = fetched(&leader, 0);
    let first_len = {
        let len = i32::from_be_bytes([first[8], first[9], first[10], first[11]]);
        12 + len as usize
    };
    follower
        .append_as_follower(first.slice(..first_len), 1_000)
        .unwrap();
    assert_eq!(follower.log_end_offset(), 2);
    assert!(matches!(
        follower.append_as_follower(first.clone(), 1_000),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(follower.log_end_offset(), 2);
    let mut follower = open(&storage, "/follower/orders-1");
    // A flipped byte in the second batch: its checksum fails, and not even the first
    // batch is written.
    let served = fetched(&leader, 0);
    let second_start = {
        let len = i32::from_be_bytes([served[8], served[9], served[10], served[11]]);
        12 + len as usize
    };
    let mut damaged = served.to_vec();
    // Inside the second batch's first timestamp, which its checksum covers.
    damaged[second_start + 30] ^= 0xff;
    assert!(matches!(
        follower.append_as_follower(Bytes::from(damaged), 1_000),
        Err(LogError::InvalidBatch(_))
    ));
    assert_eq!(follower.log_end_offset(), 0);
    // Less than one whole batch: nothing to write yet.
    assert!(
        follower
            .append_as_follower(served.slice(..20), 1_000)
            .unwrap()
            .is_none()
    );
    assert_eq!(follower.log_end_offset(), 0);
}

fn at(base: i64, values: &[&str]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None)
        .base_offset(base)
        .partition_leader_epoch(2);
    for value in values {
        builder
            .append(1_000, None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap()
}

/// Compaction on the leader leaves gaps between batches, however wide: the follower keeps
/// each batch at its offset, starting a segment where a gap is too wide for the indexes'
/// relative offsets, and reads the same after a restart.
#[test]
fn a_follower_keeps_the_leaders_offset_gaps() {
    let storage = MemStorage::new();
    let mut follower = open(&storage, "/follower/orders-0");
    let far = 5_000_000_000;
    let fetched_bytes: Bytes = [at(3, &["d"]), at(10, &["k"]), at(far, &["z"])]
        .concat()
        .into();
    follower
        .append_as_follower(fetched_bytes.clone(), 1_000)
        .unwrap();
    assert_eq!(follower.log_end_offset(), far + 1);
    // The first two batches share the first segment; the far one starts the second.
    assert_eq!(follower.segment_count(), 2);
    assert_eq!(fetched(&follower, 0), fetched_bytes);
    assert_eq!(fetched(&follower, 11), at(far, &["z"]));
    follower.close().unwrap();
    let follower = open(&storage, "/follower/orders-0");
    assert_eq!(follower.log_end_offset(), far + 1);
    assert_eq!(
        fetched(&follower, 4),
        fetched_bytes.slice(at(3, &["d"]).len()..)
    );
}

/// The base offset is outside a batch's checksum: one whose offsets would run past
/// `i64::MAX` is refused, and nothing of the fetch is written.
#[test]
fn a_follower_refuses_offsets_past_the_largest() {
    let storage = MemStorage::new();
    let mut follower = open(&storage, "/follower/orders-0");
    let fetched_bytes: Bytes = [at(3, &["d"]), at(i64::MAX - 1, &["y", "z"])]
        .concat()
        .into();
    assert!(matches!(
        follower.append_as_follower(fetched_bytes, 1_000),
        Err(LogError::InvalidBatch(_))
    ));
    assert_eq!(follower.log_end_offset(), 0);
}

/// A follower whose log ends below the leader's log start empties its log and starts
/// there, and stays so after a restart.
#[test]
fn a_follower_starts_over_at_the_leaders_log_start() {
    let storage = MemStorage::new();
    let leader = leader(&storage);
    let mut follower = open(&storage, "/follower/orders-0");
    follower
        .append_as_follower(at(0, &["old-1", "old-2"]), 1_000)
        .unwrap();
    follower.truncate_fully_and_start_at(7).unwrap();
    assert_eq!(
        (follower.log_start_offset(), follower.log_end_offset()),
        (7, 7)
    );
    assert_eq!(follower.high_watermark(), 7);
    assert_eq!(follower.leader_epochs().latest_epoch(), None);
    follower
        .append_as_follower(fetched(&leader, 7), 1_000)
        .unwrap();
    assert_eq!(fetched(&follower, 7), fetched(&leader, 7));
    let end = follower.log_end_offset();
    follower.close().unwrap();
    let follower = open(&storage, "/follower/orders-0");
    assert_eq!(
        (follower.log_start_offset(), follower.log_end_offset()),
        (7, end)
    );
    assert_eq!(fetched(&follower, 7), fetched(&leader, 7));
}
