//! The cluster simulation over many seeds: 200 by default, split over four tests so they
//! run side by side. `SPOOL_SIM_SEEDS=N` runs seeds 1..=N instead (the long mode, e.g.
//! `SPOOL_SIM_SEEDS=5000 cargo test --release -p spool-sim`); `SPOOL_SIM_SEED=S` runs seed
//! S alone, to replay a failure, and prints its faults; `SPOOL_LOG` (a tracing filter)
//! prints the nodes' logs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use spool_sim::{Settings, run};

const SHARDS: u64 = 4;

/// The seeds shard `shard` of [`SHARDS`] runs.
fn seeds(shard: u64) -> Vec<u64> {
    let one = std::env::var("SPOOL_SIM_SEED").ok();
    if let Some(seed) = one.and_then(|s| s.parse().ok()) {
        return if shard == 0 { vec![seed] } else { Vec::new() };
    }
    let count: u64 = std::env::var("SPOOL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    (1..=count).filter(|s| s % SHARDS == shard).collect()
}

fn run_shard(shard: u64) {
    // `SPOOL_LOG` (a tracing filter, e.g. `spool_broker=info`) shows the nodes' logs.
    if let Ok(filter) = std::env::var("SPOOL_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .without_time()
            .try_init();
    }
    for seed in seeds(shard) {
        let started = std::time::Instant::now();
        match run(&Settings::new(seed)) {
            Ok(mut report) => {
                let spent = started.elapsed();
                let timeline = std::mem::take(&mut report.timeline);
                eprintln!("seed {seed}: {report:?} in {spent:?}");
                if std::env::var("SPOOL_SIM_SEED").is_ok() {
                    eprintln!("faults:\n  {}", timeline.join("\n  "));
                }
            }
            Err(e) => panic!("{e}\nreplay: SPOOL_SIM_SEED={seed} cargo test -p spool-sim"),
        }
    }
}

#[test]
fn a_cluster_without_faults_acknowledges_every_record() {
    let settings = Settings {
        faults: false,
        ..Settings::new(0)
    };
    let report = run(&settings).unwrap_or_else(|e| panic!("{e}"));
    let all = settings.records * settings.partitions as usize;
    assert_eq!(report.acked, all, "{report:?}");
    assert_eq!(report.consumed, all, "{report:?}");
    // The consumer's rack holds a leader of at most one of the three partitions.
    assert!(report.read_from_followers > 0, "{report:?}");
}

#[test]
fn the_invariants_hold_under_seeded_faults_0() {
    run_shard(0);
}

#[test]
fn the_invariants_hold_under_seeded_faults_1() {
    run_shard(1);
}

#[test]
fn the_invariants_hold_under_seeded_faults_2() {
    run_shard(2);
}

#[test]
fn the_invariants_hold_under_seeded_faults_3() {
    run_shard(3);
}
