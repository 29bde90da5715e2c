//! The log against a model: random sequences of appends, reads, flushes, truncations,
//! log-start moves, timestamp lookups, clean restarts and power cuts. After every step the
//! log must hold exactly the model's records at the model's offsets; after a power cut,
//! exactly the records that were flushed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use spool_log::{LogConfig, MemStorage, PartitionLog};
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;

mod common;

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: usize,
        value_bytes: usize,
        codec: usize,
        timestamp_step: i64,
    },
    Read {
        at: u16,
    },
    Flush,
    Checkpoint,
    Crash,
    CleanRestart,
    Truncate {
        back: i64,
    },
    AdvanceStart {
        by: i64,
    },
    FindTimestamp {
        at: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 0usize..300, 0usize..5, 0i64..3).prop_map(|(count, value_bytes, codec, timestamp_step)| Op::Append { count, value_bytes, codec, timestamp_step }),
        2 => any::<u16>().prop_map(|at| Op::Read { at }),
        2 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Crash),
        1 => Just(Op::CleanRestart),
        1 => (0i64..12).prop_map(|back| Op::Truncate { back }),
        1 => (0i64..6).prop_map(|by| Op::AdvanceStart { by }),
        1 => any::<u16>().prop_map(|at| Op::FindTimestamp { at }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    offset: i64,
    timestamp: i64,
    value: Bytes,
}

struct Harness {
    storage: MemStorage,
    config: LogConfig,
    log: Option<PartitionLog>,
    /// Every record in the log, in offset order.
    records: Vec<Rec>,
    log_start_offset: i64,
    /// The offset below which records survive a power cut.
    durable_offset: i64,
    /// The log start offset a power cut would come back with.
    durable_log_start_offset: i64,
    next_id: u64,
    clock: i64,
}

impl Harness {
    fn new(segment_bytes: u64, index_interval_bytes: u64) -> Self {
        let storage = MemStorage::new();
        let config = LogConfig {
            segment_bytes,
            index_interval_bytes,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(
            Arc::new(storage.clone()),
            Path::new("/data/t-0"),
            config.clone(),
            0,
        )
        .unwrap();
        Harness {
            storage,
            config,
            log: Some(log),
            records: Vec::new(),
            log_start_offset: 0,
            durable_offset: 0,
            durable_log_start_offset: 0,
            next_id: 0,
            clock: 1_000,
        }
    }

    fn log(&mut self) -> &mut PartitionLog {
        self.log.as_mut().expect("log is open")
    }

    fn reopen(&mut self) {
        let (log, _) = PartitionLog::open(
            Arc::new(self.storage.clone()),
            Path::new("/data/t-0"),
            self.config.clone(),
            self.clock,
        )
        .unwrap();
        self.log = Some(log);
    }

    fn end_offset(&self) -> i64 {
        self.records
            .last()
            .map_or(self.log_start_offset, |r| r.offset + 1)
            .max(self.log_start_offset)
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append {
                count,
                value_bytes,
                codec,
                timestamp_step,
            } => {
                let mut builder = RecordBatchBuilder::new(Compression::ALL[codec]);
                let first_offset = self.end_offset();
                let mut appended = Vec::new();
                for i in 0..count {
                    self.clock += timestamp_step;
                    let value =
                        Bytes::from(format!("{}:{}", self.next_id, "v".repeat(value_bytes)));
                    self.next_id += 1;
                    builder.append(self.clock, None, Some(&value), &[]).unwrap();
                    appended.push(Rec {
                        offset: first_offset + i as i64,
                        timestamp: self.clock,
                        value,
                    });
                }
                let info = self
                    .log()
                    .append_as_leader(builder.build().unwrap(), 0, 0)
                    .unwrap();
                assert_eq!(
                    (info.first_offset, info.last_offset),
                    (first_offset, first_offset + count as i64 - 1)
                );
                self.records.extend(appended);
            }
            Op::Read { at } => {
                let span = (self.end_offset() - self.log_start_offset).max(1);
                let from = self.log_start_offset + i64::from(at) % span;
                self.check_read_from(from);
            }
            Op::Flush => {
                let point = self.log().flush().unwrap();
                assert_eq!(point, self.end_offset());
                self.durable_offset = point;
            }
            Op::Checkpoint => self.log().write_checkpoint().unwrap(),
            Op::Crash => {
                self.log = None;
                self.storage.crash();
                self.reopen();
                // Every flushed record comes back. Unflushed ones may too (a segment roll
                // makes the outgoing segment durable), as a prefix: the reads below check
                // that what survived is exactly the model's records up to the new end.
                let end = self.end_offset_of_records();
                assert!(
                    end >= self.durable_offset,
                    "flushed records were lost: end {end}, durable {}",
                    self.durable_offset
                );
                assert!(end <= self.end_offset(), "records appeared from nowhere");
                self.records.retain(|r| r.offset < end);
                self.durable_offset = end;
                // A log start offset beyond what survived comes back clamped, and opening
                // checkpoints the clamped value.
                self.log_start_offset = self
                    .durable_log_start_offset
                    .min(self.end_offset_of_records());
                self.durable_log_start_offset = self.log_start_offset;
            }
            Op::CleanRestart => {
                self.log.take().expect("log is open").close().unwrap();
                self.durable_offset = self.end_offset();
                self.durable_log_start_offset = self.log_start_offset;
                self.reopen();
            }
            Op::Truncate { back } => {
                let to = (self.end_offset() - back).max(self.log_start_offset);
                if to >= self.end_offset() {
                    // Nothing to remove: the log does nothing, durability included.
                    self.log().truncate_to(to).unwrap();
                    return self.check_invariants();
                }
                self.log().truncate_to(to).unwrap();
                // Truncation removes whole batches: the log says where it ended up.
                let end = self.log().log_end_offset();
                assert!(end <= to, "truncated to {to} but the log ends at {end}");
                self.records.retain(|r| r.offset < end);
                self.durable_offset = end;
                self.durable_log_start_offset = self.log_start_offset.min(end);
                self.log_start_offset = self.log_start_offset.min(end);
            }
            Op::AdvanceStart { by } => {
                let to = (self.log_start_offset + by).min(self.end_offset());
                self.log().advance_log_start_offset(to).unwrap();
                self.log_start_offset = to;
                self.durable_log_start_offset = to;
                self.records.retain(|r| r.offset >= to);
            }
            Op::FindTimestamp { at } => {
                let wanted = 1_000 + i64::from(at) % (self.clock - 1_000 + 2);
                let expected = self
                    .records
                    .iter()
                    .find(|r| r.timestamp >= wanted)
                    .map(|r| (r.offset, r.timestamp));
                assert_eq!(
                    self.log().offset_for_timestamp(wanted).unwrap(),
                    expected,
                    "timestamp {wanted}"
                );
            }
        }
        self.check_invariants();
    }

    fn end_offset_of_records(&self) -> i64 {
        self.log.as_ref().expect("log is open").log_end_offset()
    }

    fn check_read_from(&mut self, from: i64) {
        let expected: Vec<Rec> = self
            .records
            .iter()
            .filter(|r| r.offset >= from)
            .cloned()
            .collect();
        let log = self.log.as_ref().expect("log is open");
        // Small reads, so that reads stop inside segments and resume.
        let got: Vec<Rec> = common::records_from(log, from, 700)
            .into_iter()
            .map(|r| Rec {
                offset: r.offset,
                timestamp: r.timestamp,
                value: r.value.expect("a value"),
            })
            .collect();
        assert_eq!(got, expected, "reading from {from}");
    }

    fn check_invariants(&mut self) {
        let end = self.end_offset();
        let start = self.log_start_offset;
        let log = self.log.as_ref().expect("log is open");
        assert_eq!(log.log_end_offset(), end, "log end offset");
        assert_eq!(log.log_start_offset(), start, "log start offset");
        // Offsets are contiguous from the log start offset.
        for (i, r) in self.records.iter().enumerate() {
            assert_eq!(r.offset, start + i as i64, "offsets are contiguous");
        }
        self.check_read_from(start);
    }
}

/// A fixed seed and case count keep the suite deterministic; set `PROPTEST_RNG_SEED` and
/// `PROPTEST_CASES` to explore further.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5_1001);
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 128;
    }
    config.failure_persistence = None;
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_log_matches_its_model_through_crashes_and_restarts(
        ops in proptest::collection::vec(op(), 1..60),
        segment_bytes in prop_oneof![Just(300u64), Just(1200), Just(1 << 20)],
        index_interval_bytes in prop_oneof![Just(1u64), Just(200), Just(4096)],
    ) {
        let mut harness = Harness::new(segment_bytes, index_interval_bytes);
        for op in &ops {
            harness.apply(op);
        }
    }
}
