//! The transaction state machine with a fake clock: lifecycles under both transaction
//! versions, fencing, timeouts, epoch overflow, retries, and replay from the records.

use spool_protocol::ErrorCode;

use super::TxnConfig;
use super::shard::{EndOutcome, InitOutcome, MarkerJob, Producer, TxnShard, TxnState};

struct Ids(i64);

impl Ids {
    fn next(&mut self) -> Result<i64, ErrorCode> {
        self.0 += 1;
        Ok(self.0)
    }
}

fn tp(topic: &str, partition: i32) -> (String, i32) {
    (topic.to_string(), partition)
}

fn init(shard: &mut TxnShard, ids: &mut Ids, id: &str, now: i64) -> Producer {
    match shard
        .init_producer_id(id, 60_000, None, now, &mut || ids.next())
        .unwrap()
    {
        InitOutcome::Ready {
            producer_id,
            producer_epoch,
        } => Producer {
            id: producer_id,
            epoch: producer_epoch,
        },
        other => panic!("not ready: {other:?}"),
    }
}

fn end(
    shard: &mut TxnShard,
    ids: &mut Ids,
    id: &str,
    producer: Producer,
    commit: bool,
    bump: bool,
    now: i64,
) -> Result<EndOutcome, ErrorCode> {
    shard.end_txn(id, producer, commit, bump, now, &mut || ids.next())
}

fn markers(outcome: Result<EndOutcome, ErrorCode>) -> MarkerJob {
    match outcome {
        Ok(EndOutcome::Markers(job)) => job,
        other => panic!("no markers: {other:?}"),
    }
}

fn state(shard: &TxnShard, id: &str) -> TxnState {
    shard.get(id).unwrap().state
}

#[test]
fn a_transaction_commits_through_prepare_and_complete_with_one_record_per_step() {
    let mut shard = TxnShard::new(TxnConfig::default());
    let mut ids = Ids(999);
    let p = init(&mut shard, &mut ids, "t", 0);
    assert_eq!((p.id, p.epoch), (1000, 0));
    assert_eq!(shard.take_records().len(), 1);
    shard
        .add_partitions("t", p, &[tp("a", 0), tp("b", 1)], false, 0, 10)
        .unwrap();
    // Adding what is already there writes nothing.
    shard
        .add_partitions("t", p, &[tp("a", 0)], false, 0, 11)
        .unwrap();
    assert_eq!(shard.take_records().len(), 1);
    assert_eq!(state(&shard, "t"), TxnState::Ongoing);
    let job = markers(end(&mut shard, &mut ids, "t", p, true, false, 20));
    assert_eq!(job.partitions, vec![tp("a", 0), tp("b", 1)]);
    assert_eq!((job.producer_epoch, job.commit), (0, true));
    assert_eq!(state(&shard, "t"), TxnState::PrepareCommit);
    // While the markers are written, the producer must wait.
    assert_eq!(
        shard.add_partitions("t", p, &[tp("a", 0)], false, 0, 21),
        Err(ErrorCode::ConcurrentTransactions)
    );
    assert_eq!(
        end(&mut shard, &mut ids, "t", p, false, false, 21),
        Err(ErrorCode::InvalidTxnState)
    );
    assert_eq!(shard.complete(&job, 30), Some(p));
    assert_eq!(state(&shard, "t"), TxnState::CompleteCommit);
    assert!(shard.get("t").unwrap().partitions.is_empty());
    let records = shard.take_records();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[1].value.as_ref().map(|v| v.transaction_status),
        Some(TxnState::CompleteCommit as i8)
    );
    // A retried commit succeeds without writing; an abort of it is refused.
    assert_eq!(
        end(&mut shard, &mut ids, "t", p, true, false, 31),
        Ok(EndOutcome::Done {
            producer_id: p.id,
            producer_epoch: 0
        })
    );
    assert_eq!(
        end(&mut shard, &mut ids, "t", p, false, false, 31),
        Err(ErrorCode::InvalidTxnState)
    );
}

#[test]
fn a_new_instance_fences_the_old_one_and_aborts_its_transaction() {
    let mut shard = TxnShard::new(TxnConfig::default());
    let mut ids = Ids(0);
    let old = init(&mut shard, &mut ids, "t", 0);
    shard
        .add_partitions("t", old, &[tp("a", 0)], false, 0, 1)
        .unwrap();
    let outcome = shard
        .init_producer_id("t", 60_000, None, 2, &mut || ids.next())
        .unwrap();
    let InitOutcome::AbortFirst(job) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(!job.commit);
    assert_eq!(job.producer_epoch, 1, "markers carry the fencing epoch");
    // The old instance can no longer add or end anything.
    assert_eq!(
        shard.add_partitions("t", old, &[tp("b", 0)], false, 0, 3),
        Err(ErrorCode::ProducerFenced)
    );
    assert_eq!(
        end(&mut shard, &mut ids, "t", old, true, false, 3),
        Err(ErrorCode::ProducerFenced)
    );
    shard.complete(&job, 4);
    let new = init(&mut shard, &mut ids, "t", 5);
    assert_eq!((new.id, new.epoch), (old.id, 2));
    assert_eq!(state(&shard, "t"), TxnState::Empty);
    // Bad requests get Kafka's errors and change nothing.
    assert_eq!(
        shard.add_partitions("nobody", new, &[tp("a", 0)], false, 0, 6),
        Err(ErrorCode::InvalidProducerIdMapping)
    );
    assert_eq!(
        shard.add_partitions(
            "t",
            Producer {
                id: new.id + 1,
                epoch: 2
            },
            &[tp("a", 0)],
            false,
            0,
            6
        ),
        Err(ErrorCode::InvalidProducerIdMapping)
    );
    assert_eq!(
        end(&mut shard, &mut ids, "t", new, true, false, 6),
        Err(ErrorCode::InvalidTxnState)
    );
    assert_eq!(
        shard.init_producer_id("t", 900_001, None, 7, &mut || ids.next()),
        Err(ErrorCode::InvalidTransactionTimeout)
    );
}

#[test]
fn verification_checks_membership_without_changing_anything() {
    let mut shard = TxnShard::new(TxnConfig::default());
    let mut ids = Ids(0);
    let p = init(&mut shard, &mut ids, "t", 0);
    shard.take_records();
    assert_eq!(
        shard.add_partitions("t", p, &[tp("a", 0)], true, 0, 1),
        Err(ErrorCode::InvalidTxnState)
    );
    shard
        .add_partitions("t", p, &[tp("a", 0)], false, 0, 1)
        .unwrap();
    shard.take_records();
    assert_eq!(
        shard.add_partitions("t", p, &[tp("a", 0)], true, 0, 2),
        Ok(())
    );
    assert_eq!(
        shard.add_partitions("t", p, &[tp("a", 1)], true, 0, 2),
        Err(ErrorCode::InvalidTxnState)
    );
    assert!(shard.take_records().is_empty());
}

/// KAFKA-17754: under transaction version 2 every transaction ends with a new epoch, so an
/// EndTxn (or produce) delayed from transaction N cannot end transaction N+1.
#[test]
fn version_2_bumps_the_epoch_per_transaction_so_a_late_end_cannot_touch_the_next() {
    let mut shard = TxnShard::new(TxnConfig::default());
    let mut ids = Ids(0);
    let p0 = init(&mut shard, &mut ids, "t", 0);
    shard
        .add_partitions("t", p0, &[tp("a", 0)], false, 2, 1)
        .unwrap();
    let job = markers(end(&mut shard, &mut ids, "t", p0, true, true, 2));
    assert_eq!(job.producer_epoch, 1, "markers carry the bumped epoch");
    let p1 = shard.complete(&job, 3).unwrap();
    assert_eq!((p1.id, p1.epoch), (p0.id, 1));
    // A retry of transaction N's EndTxn before N+1 starts: answered with the new epoch.
    assert_eq!(
        end(&mut shard, &mut ids, "t", p0, true, true, 4),
        Ok(EndOutcome::Done {
            producer_id: p1.id,
            producer_epoch: 1
        })
    );
    // Transaction N+1 starts (an implicit add); the late EndTxn of N is fenced.
    shard
        .add_partitions("t", p1, &[tp("b", 0)], false, 2, 5)
        .unwrap();
    assert_eq!(
        end(&mut shard, &mut ids, "t", p0, true, true, 6),
        Err(ErrorCode::ProducerFenced)
    );
    assert_eq!(
        shard.add_partitions("t", p0, &[tp("a", 0)], false, 2, 6),
        Err(ErrorCode::ProducerFenced)
    );
    assert_eq!(state(&shard, "t"), TxnState::Ongoing);
    assert_eq!(
        shard
            .get("t")
            .unwrap()
            .partitions
            .iter()
            .collect::<Vec<_>>(),
        vec![&tp("b", 0)]
    );
    // An abort with nothing open still moves the epoch on.
    let job = markers(end(&mut shard, &mut ids, "t", p1, false, true, 7));
    let p2 = shard.complete(&job, 8).unwrap();
    assert_eq!(
        end(&mut shard, &mut ids, "t", p2, false, true, 9),
        Ok(EndOutcome::Done {
            producer_id: p2.id,
            producer_epoch: p2.epoch + 1
        })
    );
}

#[test]
fn epoch_overflow_moves_to_a_new_producer_id() {
    let mut shard = TxnShard::new(TxnConfig::default());
    let mut ids = Ids(0);
    let p = init(&mut shard, &mut ids, "t", 0);
    let mut last = shard.take_records().pop().unwrap();
    // Start from an epoch about to overflow, as a reload would.
    if let Some(value) = last.value.as_mut() {
        value.producer_epoch = i16::MAX - 2;
    }
    shard.replay(last);
    let p = Producer {
        id: p.id,
        epoch: i16::MAX - 2,
    };
    shard
        .add_partitions("t", p, &[tp("a", 0)], false, 2, 1)
        .unwrap();
    let job = markers(end(&mut shard, &mut ids, "t", p, true, true, 2));
    assert_eq!(job.producer_epoch, i16::MAX - 1);
    let next = shard.complete(&job, 3).unwrap();
    assert_eq!((next.id, next.epoch), (p.id, i16::MAX - 1));
    shard
        .add_partitions("t", next, &[tp("a", 0)], false, 2, 4)
        .unwrap();
    let job = markers(end(&mut shard, &mut ids, "t", next, true, true, 5));
    assert_eq!((job.producer_id, job.producer_epoch), (p.id, i16::MAX));
    let fresh = shard.complete(&job, 6).unwrap();
    assert_eq!((fresh.id, fresh.epoch), (p.id + 1, 0));
    // The retry from before the switch is recognised.
    assert!(matches!(
        end(&mut shard, &mut ids, "t", next, true, true, 7),
        Ok(EndOutcome::Done {
            producer_epoch: 0,
            ..
        })
    ));
}

#[test]
fn timeouts_abort_and_fence_and_idle_ids_expire() {
    let config = TxnConfig {
        id_expiration_ms: 1_000_000,
        ..TxnConfig::default()
    };
    let mut shard = TxnShard::new(config);
    let mut ids = Ids(0);
    let p = init(&mut shard, &mut ids, "slow", 0);
    shard
        .add_partitions("slow", p, &[tp("a", 0)], false, 0, 100)
        .unwrap();
    assert!(shard.tick(60_100, &mut || ids.next()).is_empty());
    let jobs = shard.tick(60_101, &mut || ids.next());
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].commit, jobs[0].producer_epoch), (false, 1));
    assert_eq!(state(&shard, "slow"), TxnState::PrepareAbort);
    // The producer that timed out is fenced.
    assert_eq!(
        end(&mut shard, &mut ids, "slow", p, true, false, 60_200),
        Err(ErrorCode::ProducerFenced)
    );
    // A job in flight is not handed out twice; a failed one is.
    assert!(shard.tick(60_300, &mut || ids.next()).is_empty());
    shard.retry_later(&jobs[0]);
    assert_eq!(shard.tick(60_400, &mut || ids.next()), jobs);
    shard.complete(&jobs[0], 60_500);
    assert_eq!(state(&shard, "slow"), TxnState::CompleteAbort);
    shard.take_records();
    // Idle past transactional.id.expiration.ms: removed with a tombstone.
    assert!(shard.tick(1_060_500, &mut || ids.next()).is_empty());
    assert!(shard.get("slow").is_some());
    shard.tick(1_060_501, &mut || ids.next());
    assert!(shard.get("slow").is_none());
    let records = shard.take_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, None);
}

#[test]
fn replaying_the_records_rebuilds_the_state_and_resumes_half_ended_transactions() {
    let mut shard = TxnShard::new(TxnConfig::default());
    let mut ids = Ids(0);
    let p = init(&mut shard, &mut ids, "t", 0);
    let q = init(&mut shard, &mut ids, "u", 0);
    shard
        .add_partitions("t", p, &[tp("a", 0), tp("a", 1)], false, 2, 1)
        .unwrap();
    shard
        .add_partitions("u", q, &[tp("b", 0)], false, 0, 1)
        .unwrap();
    let job = markers(end(&mut shard, &mut ids, "t", p, true, true, 2));
    let records = shard.take_records();

    let mut reloaded = TxnShard::new(TxnConfig::default());
    for record in records {
        reloaded.replay(record);
    }
    assert_eq!(
        reloaded.get("t"),
        shard
            .get("t")
            .map(|m| {
                let mut m = m.clone();
                m.last_producer_epoch = 0;
                m
            })
            .as_ref()
    );
    assert_eq!(reloaded.get("u"), shard.get("u"));
    // The commit whose markers were never confirmed is handed out again at once.
    let jobs = reloaded.tick(3, &mut || ids.next());
    assert_eq!(jobs, vec![job]);
}
