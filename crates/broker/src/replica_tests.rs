#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_log::{LogConfig, MemStorage, PartitionLog, SharedLog, Storage};
use spool_metadata::PartitionMeta;
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn records(values: &[&str]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for value in values {
        builder
            .append(1_000, None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap()
}

/// A fetch from `leader` at `epoch` that starts at `replica`'s log end.
fn from_end(replica: &Replica, leader: i32, epoch: i32) -> Fetched {
    Fetched {
        leader,
        epoch,
        offset: replica.log.with_log(|l| l.log_end_offset()),
    }
}

fn replica(storage: &MemStorage, me: i32, min_isr: i32) -> Replica {
    let config = LogConfig {
        min_insync_replicas: min_isr,
        ..LogConfig::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    let dir = format!("/broker-{me}/orders-0");
    let log = PartitionLog::open(storage, Path::new(&dir), config, 1_000)
        .unwrap()
        .0;
    Replica::new(me, Arc::new(SharedLog::new(log)))
}

fn meta(leader: i32, leader_epoch: i32, partition_epoch: i32, isr: &[i32]) -> PartitionMeta {
    PartitionMeta {
        index: 0,
        leader,
        leader_epoch,
        partition_epoch,
        replicas: vec![1, 2, 3],
        isr: isr.to_vec(),
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    }
}

/// `leader.wait_committed(epoch, end)` in a task of its own.
fn wait_committed(
    leader: &Arc<Replica>,
    epoch: i32,
    end: i64,
) -> tokio::task::JoinHandle<Result<(), ErrorCode>> {
    let leader = Arc::clone(leader);
    tokio::spawn(async move { leader.wait_committed(epoch, end, WAIT).await })
}

fn high_watermark(replica: &Replica) -> i64 {
    replica.log.with_log(|l| l.high_watermark())
}

/// A leader with a log from offset 0 and this high watermark.
fn at(high_watermark: i64) -> LeaderOffsets {
    LeaderOffsets {
        high_watermark,
        log_start_offset: 0,
    }
}

fn log_offsets(replica: &Replica) -> (i64, i64) {
    replica
        .log
        .with_log(|l| (l.log_start_offset(), l.log_end_offset()))
}

/// Everything `replica` holds from `from`, as a follower's fetch reads it.
fn fetched(replica: &Replica, from: i64) -> Bytes {
    replica.log.with_log(|l| {
        let read = l.read(from, 1 << 20, l.log_end_offset()).unwrap();
        read.range
            .map_or_else(Bytes::new, |r| r.to_bytes().unwrap())
    })
}

#[tokio::test]
async fn the_high_watermark_waits_for_every_in_sync_follower_and_acks_all_for_it() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 2);
    leader.apply(&meta(1, 1, 1, &[1, 2, 3]), 1_000).unwrap();
    let (info, epoch) = leader
        .append_as_leader(records(&["a", "b"]), -1, 1_000)
        .unwrap();
    assert_eq!((info.first_offset, info.last_offset, epoch), (0, 1, 1));
    assert_eq!(
        high_watermark(&leader),
        0,
        "no follower has the records yet"
    );

    let leader = Arc::new(leader);
    let waiting = {
        let leader = Arc::clone(&leader);
        tokio::spawn(async move { leader.wait_committed(1, 2, WAIT).await })
    };
    let note = leader.follower_fetched(2, 2, 0, 1_100).unwrap();
    assert!(
        !note.high_watermark_moved,
        "follower 3 is in sync and has nothing"
    );
    assert_eq!(high_watermark(&leader), 0);
    leader.follower_fetched(3, 1, 0, 1_100).unwrap();
    assert_eq!(high_watermark(&leader), 1);
    assert!(!waiting.is_finished());
    let note = leader.follower_fetched(3, 2, 0, 1_200).unwrap();
    assert!(note.high_watermark_moved);
    assert_eq!(high_watermark(&leader), 2);
    assert_eq!(waiting.await.unwrap(), Ok(()));

    // A broker that is no replica of the partition cannot move it.
    assert_eq!(
        leader.follower_fetched(9, 2, 0, 1_300).unwrap_err(),
        ErrorCode::NotLeaderOrFollower
    );
}

#[tokio::test]
async fn min_insync_replicas_refuses_before_the_append_and_after_a_shrink() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 2);
    leader.apply(&meta(1, 1, 1, &[1]), 1_000).unwrap();
    assert_eq!(
        leader
            .append_as_leader(records(&["a"]), -1, 1_000)
            .unwrap_err(),
        ErrorCode::NotEnoughReplicas
    );
    assert_eq!(leader.log.with_log(|l| l.log_end_offset()), 0);
    // acks=1 does not ask for the ISR; alone in it, the leader commits at once.
    leader.append_as_leader(records(&["a"]), 1, 1_000).unwrap();
    assert_eq!(high_watermark(&leader), 1);

    leader.apply(&meta(1, 1, 2, &[1, 2]), 1_000).unwrap();
    let (info, epoch) = leader.append_as_leader(records(&["b"]), -1, 1_000).unwrap();
    let leader = Arc::new(leader);
    let waiting = wait_committed(&leader, epoch, info.last_offset + 1);
    // The ISR shrinks to the leader before follower 2 gets the record: it is committed,
    // but not on min.insync.replicas replicas.
    leader.apply(&meta(1, 1, 3, &[1]), 1_000).unwrap();
    assert_eq!(high_watermark(&leader), 2);
    assert_eq!(
        waiting.await.unwrap(),
        Err(ErrorCode::NotEnoughReplicasAfterAppend)
    );
}

#[tokio::test]
async fn a_write_waiting_for_the_isr_fails_when_the_leadership_moves_or_time_runs_out() {
    let storage = MemStorage::new();
    let leader = Arc::new(replica(&storage, 1, 1));
    leader.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    leader.append_as_leader(records(&["a"]), -1, 1_000).unwrap();
    assert_eq!(
        leader.wait_committed(1, 1, Duration::from_millis(20)).await,
        Err(ErrorCode::RequestTimedOut)
    );
    let waiting = {
        let leader = Arc::clone(&leader);
        tokio::spawn(async move { leader.wait_committed(1, 1, WAIT).await })
    };
    leader.apply(&meta(2, 2, 2, &[2]), 1_000).unwrap();
    assert_eq!(waiting.await.unwrap(), Err(ErrorCode::NotLeaderOrFollower));
    assert_eq!(leader.leader_epoch(), None);
    assert_eq!(leader.following(), Some((2, 2)));
}

/// A reassignment that drops a replica bumps the leader epoch, the leader staying: a
/// write waiting under the older epoch still stands, while the followers' progress starts
/// afresh (a dropped replica's old fetches no longer count). A leader that followed in
/// between (and so may have truncated) answers the old write NOT_LEADER_OR_FOLLOWER.
#[tokio::test]
async fn a_bumped_epoch_under_the_same_leader_keeps_waiting_writes_and_forgets_progress() {
    let storage = MemStorage::new();
    let leader = Arc::new(replica(&storage, 1, 2));
    leader.apply(&meta(1, 1, 1, &[1, 2, 3]), 1_000).unwrap();
    let (info, epoch) = leader.append_as_leader(records(&["a"]), -1, 1_000).unwrap();
    leader.follower_fetched(3, 1, 0, 1_000).unwrap();
    let waiting = wait_committed(&leader, epoch, info.last_offset + 1);
    leader.apply(&meta(1, 2, 2, &[1, 2, 3]), 1_000).unwrap();
    assert_eq!(leader.leader_epoch(), Some(2));
    assert_eq!(
        high_watermark(&leader),
        0,
        "3's fetch under epoch 1 is forgotten"
    );
    leader.follower_fetched(2, 1, 0, 1_100).unwrap();
    leader.follower_fetched(3, 1, 0, 1_100).unwrap();
    assert_eq!(high_watermark(&leader), 1);
    assert_eq!(waiting.await.unwrap(), Ok(()));

    // Deposed, then leading again: the write of epoch 2 is not vouched for any more.
    let (info, epoch) = leader.append_as_leader(records(&["b"]), -1, 1_200).unwrap();
    leader.apply(&meta(2, 3, 3, &[1, 2, 3]), 1_300).unwrap();
    leader.apply(&meta(1, 4, 4, &[1, 2, 3]), 1_400).unwrap();
    leader.follower_fetched(2, 2, 0, 1_500).unwrap();
    leader.follower_fetched(3, 2, 0, 1_500).unwrap();
    assert_eq!(high_watermark(&leader), 2);
    assert_eq!(
        leader
            .wait_committed(epoch, info.last_offset + 1, WAIT)
            .await,
        Err(ErrorCode::NotLeaderOrFollower)
    );
}

#[test]
fn a_follower_copies_the_leaders_log_and_takes_its_high_watermark() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 1);
    leader.apply(&meta(1, 4, 1, &[1, 2]), 1_000).unwrap();
    leader
        .append_as_leader(records(&["a", "b"]), 1, 1_000)
        .unwrap();
    leader.append_as_leader(records(&["c"]), 1, 1_000).unwrap();
    leader.follower_fetched(2, 2, 0, 1_000).unwrap();
    assert_eq!(high_watermark(&leader), 2);

    let follower = replica(&storage, 2, 1);
    follower.apply(&meta(1, 4, 1, &[1, 2]), 1_000).unwrap();
    assert_eq!(follower.following(), Some((1, 4)));
    let end = follower
        .append_from_leader(
            from_end(&follower, 1, 4),
            fetched(&leader, 0),
            at(high_watermark(&leader)),
            1_000,
        )
        .unwrap()
        .log_end_offset;
    assert_eq!(end, 3);
    assert_eq!(fetched(&follower, 0), fetched(&leader, 0));
    assert_eq!(high_watermark(&follower), 2);
    assert_eq!(
        follower.log.with_log(|l| l.leader_epochs().latest_epoch()),
        Some(4)
    );
    // What a stale fetcher brings for an older leader epoch is not appended.
    assert_eq!(
        follower
            .append_from_leader(from_end(&follower, 1, 3), fetched(&leader, 0), at(3), 1_000)
            .unwrap_err(),
        ErrorCode::NotLeaderOrFollower
    );
    assert_eq!(follower.log.with_log(|l| l.log_end_offset()), 3);
    // Nor is an answer to a fetch from an offset where the log no longer ends (the
    // replica changed while the fetch was out).
    let stale = Fetched {
        leader: 1,
        epoch: 4,
        offset: 0,
    };
    assert_eq!(
        follower
            .append_from_leader(stale, fetched(&leader, 0), at(3), 1_000)
            .unwrap_err(),
        ErrorCode::NotLeaderOrFollower
    );
    assert_eq!(
        follower.truncate_diverged(
            stale,
            Divergence {
                epoch: 1,
                end_offset: 0
            }
        ),
        Err(ErrorCode::NotLeaderOrFollower)
    );
    assert_eq!(follower.log.with_log(|l| l.log_end_offset()), 3);
}

/// The old leader wrote a tail no follower got; the new leader wrote other records at
/// those offsets. Rejoining as a follower, the old leader is told where its epoch ends in
/// the new leader's log, truncates there, and ends up with the new leader's log.
#[test]
fn a_deposed_leader_truncates_its_diverged_tail_and_copies_the_new_leaders_log() {
    let storage = MemStorage::new();
    let old = replica(&storage, 1, 1);
    old.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    old.append_as_leader(records(&["a", "b"]), 1, 1_000)
        .unwrap();
    let new = replica(&storage, 2, 1);
    new.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    new.append_from_leader(from_end(&new, 1, 1), fetched(&old, 0), at(0), 1_000)
        .unwrap();
    old.follower_fetched(2, 2, 0, 1_000).unwrap();
    assert_eq!(high_watermark(&old), 2);
    // Only the old leader gets this tail.
    old.append_as_leader(records(&["lost-1", "lost-2"]), 1, 1_000)
        .unwrap();

    // Broker 2 takes over at epoch 2 and writes.
    new.apply(&meta(2, 2, 2, &[2]), 1_000).unwrap();
    new.append_as_leader(records(&["c"]), 1, 1_000).unwrap();
    old.apply(&meta(2, 2, 2, &[2]), 1_000).unwrap();

    let (fetch_offset, last_epoch) = old.log.with_log(|l| {
        (
            l.log_end_offset(),
            l.leader_epochs().latest_epoch().unwrap(),
        )
    });
    assert_eq!((fetch_offset, last_epoch), (4, 1));
    let diverging = new
        .log
        .with_log(|l| diverging_epoch(l, last_epoch, fetch_offset));
    assert_eq!(
        diverging,
        Some((1, 2)),
        "epoch 1 ends at offset 2 on the new leader"
    );
    let (epoch, end_offset) = diverging.unwrap();
    let cut = old
        .truncate_diverged(from_end(&old, 2, 2), Divergence { epoch, end_offset })
        .unwrap();
    assert_eq!(cut, 2);

    // Now the logs agree up to the follower's end, and the rest comes by fetching.
    let (fetch_offset, last_epoch) = old.log.with_log(|l| {
        (
            l.log_end_offset(),
            l.leader_epochs().latest_epoch().unwrap(),
        )
    });
    assert_eq!(
        new.log
            .with_log(|l| diverging_epoch(l, last_epoch, fetch_offset)),
        None
    );
    old.append_from_leader(
        from_end(&old, 2, 2),
        fetched(&new, fetch_offset),
        at(0),
        1_000,
    )
    .unwrap();
    assert_eq!(fetched(&old, 0), fetched(&new, 0));
}

#[test]
fn a_caught_up_follower_joins_the_isr_and_a_lagging_one_leaves_it() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 1);
    leader.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    leader
        .append_as_leader(records(&["a", "b"]), 1, 1_000)
        .unwrap();
    leader.follower_fetched(2, 2, 0, 1_000).unwrap();

    // Follower 3 is behind: no change; caught up, it is asked for (once).
    let note = leader.follower_fetched(3, 1, 0, 1_000).unwrap();
    assert_eq!(note.expand, None);
    let note = leader.follower_fetched(3, 2, 0, 1_000).unwrap();
    let change = note.expand.unwrap();
    assert_eq!(change.isr, vec![1, 2, 3]);
    assert_eq!(
        (change.leader_epoch, change.partition_epoch),
        (1, 1),
        "the epochs the controller checks"
    );
    assert_eq!(
        leader.follower_fetched(3, 2, 0, 1_000).unwrap().expand,
        None
    );
    // While the change is pending, the high watermark already waits for broker 3.
    leader.append_as_leader(records(&["c"]), 1, 1_000).unwrap();
    leader.follower_fetched(2, 3, 0, 1_000).unwrap();
    assert_eq!(high_watermark(&leader), 2);
    leader.isr_change_failed(&change, 1_000);
    assert_eq!(high_watermark(&leader), 3);
    // Asked again only after a pause.
    assert_eq!(
        leader.follower_fetched(3, 3, 0, 1_050).unwrap().expand,
        None
    );
    let change = leader
        .follower_fetched(3, 3, 0, 1_100)
        .unwrap()
        .expand
        .unwrap();
    assert_eq!(change.isr, vec![1, 2, 3]);

    // The controller records it; then broker 3 stops fetching.
    leader.apply(&meta(1, 1, 2, &[1, 2, 3]), 1_000).unwrap();
    leader.follower_fetched(3, 3, 0, 1_000).unwrap();
    leader.append_as_leader(records(&["d"]), 1, 2_000).unwrap();
    leader.follower_fetched(2, 4, 0, 2_000).unwrap();
    assert_eq!(leader.shrink_lagging(2_000, 30_000), None);
    let change = leader.shrink_lagging(32_000, 30_000).unwrap();
    assert_eq!(change.isr, vec![1, 2]);
    assert_eq!(
        leader.shrink_lagging(40_000, 30_000),
        None,
        "already pending"
    );
}

/// An ISR change the controller may have recorded after all (no answer, or a newer
/// partition epoch) stays in the high watermark's floor and is asked again; a refusal
/// drops it.
#[test]
fn an_isr_change_of_unknown_fate_keeps_holding_the_high_watermark_and_is_asked_again() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 1);
    leader.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    leader
        .append_as_leader(records(&["a", "b"]), 1, 1_000)
        .unwrap();
    leader.follower_fetched(2, 2, 0, 1_000).unwrap();
    let change = leader
        .follower_fetched(3, 2, 0, 1_000)
        .unwrap()
        .expand
        .unwrap();
    assert_eq!(change.isr, vec![1, 2, 3]);
    leader.append_as_leader(records(&["c"]), 1, 1_000).unwrap();
    leader.follower_fetched(2, 3, 0, 1_000).unwrap();
    assert_eq!(high_watermark(&leader), 2, "broker 3 may be in the ISR");

    leader.isr_change_unresolved(&change, 1_000);
    leader.follower_fetched(2, 3, 0, 1_050).unwrap();
    assert_eq!(
        high_watermark(&leader),
        2,
        "still: it may have been recorded"
    );
    let again = leader.follower_fetched(2, 3, 0, 1_100).unwrap().expand;
    assert_eq!(
        again,
        Some(change.clone()),
        "asked again after the back-off"
    );
    assert_eq!(
        leader.follower_fetched(2, 3, 0, 1_200).unwrap().expand,
        None
    );

    leader.isr_change_failed(&change, 1_200);
    assert_eq!(high_watermark(&leader), 3, "refused: broker 3 is out");
}

/// Compaction left gaps between the leader's batches: the follower keeps them as gaps,
/// at the leader's offsets.
#[test]
fn a_follower_copies_a_log_with_offset_gaps() {
    let storage = MemStorage::new();
    let follower = replica(&storage, 2, 1);
    follower.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    let batch = |base: i64, values: &[&str]| {
        let mut builder = RecordBatchBuilder::new(Compression::None)
            .base_offset(base)
            .partition_leader_epoch(1);
        for value in values {
            builder
                .append(1_000, None, Some(value.as_bytes()), &[])
                .unwrap();
        }
        builder.build().unwrap()
    };
    let fetched_bytes: Bytes = [batch(3, &["d"]), batch(7, &["h", "i"])].concat().into();
    let appended = follower
        .append_from_leader(
            from_end(&follower, 1, 1),
            fetched_bytes.clone(),
            at(9),
            1_000,
        )
        .unwrap();
    assert_eq!(appended.log_end_offset, 9);
    assert!(appended.high_watermark_moved);
    assert_eq!(fetched(&follower, 0), fetched_bytes);
    assert_eq!(fetched(&follower, 5), batch(7, &["h", "i"]));
    // Offsets never go back.
    assert_eq!(
        follower
            .append_from_leader(from_end(&follower, 1, 1), batch(8, &["x"]), at(9), 1_000)
            .unwrap_err(),
        ErrorCode::OffsetOutOfRange
    );
    assert_eq!(log_offsets(&follower), (0, 9));
}

/// Records deleted on the leader (DeleteRecords, retention) go on the follower too; a
/// follower whose log ends below the leader's log start starts over there.
#[test]
fn a_follower_follows_the_leaders_log_start_offset() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 1);
    leader.apply(&meta(1, 1, 1, &[1]), 1_000).unwrap();
    for value in ["a", "b", "c", "d"] {
        leader
            .append_as_leader(records(&[value]), 1, 1_000)
            .unwrap();
    }
    let follower = replica(&storage, 2, 1);
    follower.apply(&meta(1, 1, 1, &[1]), 1_000).unwrap();
    follower
        .append_from_leader(from_end(&follower, 1, 1), fetched(&leader, 0), at(4), 1_000)
        .unwrap();
    leader
        .log
        .with_log(|l| l.advance_log_start_offset(2))
        .unwrap();
    let leader_at = LeaderOffsets {
        high_watermark: 4,
        log_start_offset: 2,
    };
    follower
        .append_from_leader(from_end(&follower, 1, 1), Bytes::new(), leader_at, 1_000)
        .unwrap();
    assert_eq!(log_offsets(&follower), (2, 4));

    let behind = replica(&storage, 3, 1);
    behind.apply(&meta(1, 1, 1, &[1]), 1_000).unwrap();
    behind
        .append_from_leader(from_end(&behind, 1, 1), Bytes::new(), at(4), 1_000)
        .unwrap();
    let read_below_start = leader.log.with_log(|l| l.read(0, 1 << 20, 4).map(|_| ()));
    assert_eq!(
        read_below_start.unwrap_err().error_code(),
        ErrorCode::OffsetOutOfRange
    );
    assert!(
        behind
            .reset_out_of_range(from_end(&behind, 1, 1), leader_at)
            .unwrap()
    );
    assert_eq!(log_offsets(&behind), (2, 2));
    assert!(
        !behind
            .reset_out_of_range(from_end(&behind, 1, 1), leader_at)
            .unwrap(),
        "nothing more to reset"
    );
    behind
        .append_from_leader(
            from_end(&behind, 1, 1),
            fetched(&leader, 2),
            leader_at,
            1_000,
        )
        .unwrap();
    assert_eq!(log_offsets(&behind), (2, 4));
    assert_eq!(fetched(&behind, 2), fetched(&leader, 2));
    assert_eq!(high_watermark(&behind), 4);
}

/// The broker's own writes (coordinator records, markers) go in only while it leads,
/// stamped with its epoch.
#[test]
fn only_a_leader_writes_its_own_records() {
    let storage = MemStorage::new();
    let replica = replica(&storage, 1, 1);
    replica.apply(&meta(2, 3, 1, &[1, 2]), 1_000).unwrap();
    let write = |l: &mut PartitionLog, epoch: i32| {
        let info = l.append_as_leader(records(&["x"]), epoch, 1_000)?;
        Ok((info.last_offset, info.last_offset + 1))
    };
    assert!(matches!(
        replica.write_as_leader(write),
        Err(WriteError::NotLeader)
    ));
    assert_eq!(log_offsets(&replica), (0, 0));
    replica.apply(&meta(1, 4, 2, &[1]), 1_000).unwrap();
    let (last, epoch) = replica.write_as_leader(write).unwrap();
    assert_eq!((last, epoch), (0, 4));
    assert_eq!(high_watermark(&replica), 1);
    assert_eq!(replica.log.with_log(|l| l.end_offset_for_epoch(4)), (4, 1));
}

#[test]
fn consumers_may_read_from_in_sync_followers_that_hold_their_offset() {
    let storage = MemStorage::new();
    let leader = replica(&storage, 1, 1);
    leader.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    leader
        .append_as_leader(records(&["a", "b", "c", "d"]), 1, 1_000)
        .unwrap();
    assert_eq!(
        leader.read_candidates(0, 1_000),
        Some(Vec::new()),
        "no follower has fetched yet"
    );
    leader.follower_fetched(2, 3, 1, 1_100).unwrap();
    // Follower 3 holds everything but is not in the ISR.
    leader.follower_fetched(3, 4, 0, 1_100).unwrap();
    let candidate = |since_caught_up_ms| ReadCandidate {
        id: 2,
        log_end_offset: 3,
        since_caught_up_ms,
    };
    assert_eq!(leader.read_candidates(1, 1_150), Some(vec![candidate(150)]));
    assert_eq!(leader.read_candidates(3, 1_150), Some(vec![candidate(150)]));
    // Past its log end, or before its log start: not there.
    assert_eq!(leader.read_candidates(4, 1_150), Some(Vec::new()));
    assert_eq!(leader.read_candidates(0, 1_150), Some(Vec::new()));

    let follower = replica(&storage, 2, 1);
    follower.apply(&meta(1, 1, 1, &[1, 2]), 1_000).unwrap();
    assert_eq!(
        follower.read_candidates(0, 1_000),
        None,
        "only leaders choose"
    );
}
