//! The group coordinator's figures: commit throughput from concurrent committers, and how
//! long a restart takes to load the committed offsets back.
//!
//!     cargo bench -p spool-broker --bench group_coordinator [-- --offsets N --committers C --seconds S]
//!
//! Commits go through the coordinator's runtime as OffsetCommit requests would (shard step,
//! append to `__consumer_offsets`, group-commit fsync), without the network. The data
//! directory is a temporary folder on the machine's disk.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure is a crash

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spool_broker::group::runtime::ensure_offsets_topic;
use spool_broker::{BrokerConfig, BrokerState};
use spool_protocol::messages::OffsetCommitRequest;
use spool_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A commit of `partitions` partitions (10 topics, `partitions / 10` each) at `offset`.
fn commit_request(group: &str, partitions: u64, offset: i64) -> OffsetCommitRequest {
    let per_topic = (partitions / 10).max(1);
    OffsetCommitRequest {
        group_id: group.to_string(),
        generation_id_or_member_epoch: -1,
        topics: (0..partitions.div_ceil(per_topic))
            .map(|t| OffsetCommitRequestTopic {
                name: format!("topic-{t}"),
                partitions: (0..per_topic)
                    .map(|p| OffsetCommitRequestPartition {
                        partition_index: p as i32,
                        committed_offset: offset,
                        committed_metadata: Some(String::new()),
                        ..OffsetCommitRequestPartition::default()
                    })
                    .collect(),
                ..OffsetCommitRequestTopic::default()
            })
            .collect(),
        ..OffsetCommitRequest::default()
    }
}

async fn commit(state: &BrokerState, request: &OffsetCommitRequest) {
    let response = state
        .groups
        .run(state, &request.group_id, |shard, now| {
            shard.commit_offsets(now, request, 8, &|_, _| true)
        })
        .await
        .unwrap();
    assert!(response.topics[0].partitions[0].error_code == 0);
}

fn open(dir: &std::path::Path) -> Arc<BrokerState> {
    let config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    BrokerState::open(config, Vec::new()).unwrap()
}

fn main() {
    let offsets = arg("--offsets", 1_000_000);
    let committers = arg("--committers", 100);
    let seconds = arg("--seconds", 5);
    let dir = std::env::temp_dir().join(format!("spool-group-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let state = open(&dir);
    ensure_offsets_topic(&state).unwrap();

    // 1. Commit throughput: `committers` consumers, each committing one partition's offset
    //    and waiting for the answer before its next commit, for `seconds`.
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..committers {
            let state = Arc::clone(&state);
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                let group = format!("committer-{c}");
                let mut offset = 0;
                while Instant::now() < deadline {
                    offset += 1;
                    commit(&state, &commit_request(&group, 1, offset)).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let commits = done.load(Ordering::Relaxed);
    println!(
        "commit throughput: {committers} committers, {commits} commits in {seconds} s = {:.0} commits/s (each answered after its fsync)",
        commits as f64 / seconds as f64
    );

    // 2. Load time: `offsets` committed offsets (1000 per group), then a restart.
    let started = Instant::now();
    runtime.block_on(async {
        let groups = offsets.div_ceil(1000);
        for g in 0..groups {
            commit(
                &state,
                &commit_request(&format!("loaded-{g}"), 1000, g as i64),
            )
            .await;
        }
    });
    println!(
        "wrote {offsets} committed offsets in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    state.groups.detach();
    state.close().unwrap();

    let started = Instant::now();
    let state = open(&dir);
    while !state.groups.is_loaded() {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "coordinator load time: {} committed offsets (+ {} from the throughput run) loaded in {:.2} s after open",
        offsets,
        commits,
        started.elapsed().as_secs_f64()
    );
    state.groups.detach();
    state.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
