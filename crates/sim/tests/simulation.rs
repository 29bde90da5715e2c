//! The cluster simulation over many seeds: 200 by default; `SPOOL_SIM_SEEDS=N` runs seeds
//! 1..=N instead (the long mode, e.g. `SPOOL_SIM_SEEDS=5000 cargo test --release -p
//! spool-sim`). Each seed runs in a process of its own, as many side by side as there are
//! cores: a run shares nothing with another (tokio numbers tasks process-wide, and a
//! crashed node's tasks are dropped in an order those numbers set), so a seed replays as
//! it ran. `SPOOL_SIM_SEED=S` runs seed S alone, in this process, and prints its faults;
//! `SPOOL_LOG` (a tracing filter) prints the nodes' logs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use spool_sim::{Settings, run};

/// The test that runs one seed, in this process: the worker of [`seeded_faults`].
const ONE_SEED: &str = "one_seed_given_by_spool_sim_seed";

/// The command that replays `seed`.
fn replay(seed: u64) -> String {
    format!(
        "SPOOL_SIM_SEED={seed} cargo test -p spool-sim --test simulation -- --ignored --exact \
         {ONE_SEED} --nocapture"
    )
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

/// Runs the seed `SPOOL_SIM_SEED` names, and prints its report and faults.
#[test]
#[ignore = "a worker: the seeded tests run it once per seed, in a process of its own"]
fn one_seed_given_by_spool_sim_seed() {
    // `SPOOL_LOG` (a tracing filter, e.g. `spool_broker=info`) shows the nodes' logs.
    if let Ok(filter) = std::env::var("SPOOL_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .without_time()
            .try_init();
    }
    let seed: u64 = std::env::var("SPOOL_SIM_SEED")
        .expect("SPOOL_SIM_SEED names the seed")
        .parse()
        .expect("SPOOL_SIM_SEED is a number");
    let started = std::time::Instant::now();
    match run(&Settings::new(seed)) {
        Ok(mut report) => {
            let timeline = std::mem::take(&mut report.timeline);
            println!("seed {seed}: {report:?} in {:?}", started.elapsed());
            println!("faults:\n  {}", timeline.join("\n  "));
        }
        Err(e) => panic!("{e}\nreplay: {}", replay(seed)),
    }
}

fn spawn(seed: u64) -> Child {
    let exe = std::env::current_exe().expect("the test binary");
    Command::new(exe)
        .args(["--ignored", "--exact", ONE_SEED, "--nocapture", "--quiet"])
        .env("SPOOL_SIM_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a seed's process")
}

/// The report line of `seed` run in a process of its own, without its duration.
fn report_of(seed: u64) -> String {
    let output = spawn(seed).wait_with_output().expect("a seed's process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "seed {seed} failed:\n{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("seed "))
        .unwrap_or("");
    line.rsplit_once(" in ")
        .map_or(line, |(report, _)| report)
        .to_string()
}

/// A seed replays as it ran: the same faults, acknowledgements at the same offsets and
/// times (the report's digest), the same number of steps.
#[test]
fn a_seed_replays_the_same_run() {
    let seed = 7;
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| report_of(seed));
        (first.join().unwrap(), report_of(seed))
    });
    assert!(first.contains("digest"), "{first}");
    assert_eq!(first, second);
}

/// Every seed, each in a process of its own; the failures are reported whole.
#[test]
fn the_invariants_hold_under_seeded_faults() {
    let one = std::env::var("SPOOL_SIM_SEED").ok();
    let seeds: Vec<u64> = match one.and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let count = std::env::var("SPOOL_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (1..=count).collect()
        }
    };
    // As many seeds at a time as there are cores, each in its own process.
    let side_by_side = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = Mutex::new(seeds.iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..side_by_side {
            scope.spawn(|| {
                loop {
                    let Some(&seed) = next.lock().unwrap().next() else {
                        return;
                    };
                    let output = spawn(seed).wait_with_output().expect("a seed's process");
                    let stdout = String::from_utf8_lossy(&output.stdout);
                    if output.status.success() {
                        if let Some(line) = stdout.lines().find(|l| l.starts_with("seed ")) {
                            eprintln!("{line}");
                        }
                    } else {
                        let stderr = String::from_utf8_lossy(&output.stderr);
                        failures.lock().unwrap().push(format!("{stdout}{stderr}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
