//! The group coordinator's figures: commit throughput from concurrent committers, how long a
//! restart takes to load the committed offsets back, and the coordinator's own work when an
//! eleventh member joins a KIP-848 group of ten on 900 partitions.
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

use spool_broker::group::consumer::TopicSource;
use spool_broker::group::runtime::ensure_offsets_topic;
use spool_broker::group::shard::Client;
use spool_broker::group::{GroupConfig, Shard};
use spool_broker::{BrokerConfig, BrokerState};
use spool_protocol::Uuid;
use spool_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use spool_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use spool_protocol::messages::{ConsumerGroupHeartbeatRequest, OffsetCommitRequest};

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

fn open(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> Arc<BrokerState> {
    let config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    runtime
        .block_on(BrokerState::start(config, Vec::new(), None))
        .unwrap()
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

    let state = open(&runtime, &dir);
    runtime.block_on(ensure_offsets_topic(&state)).unwrap();

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
    runtime.block_on(state.close()).unwrap();

    let started = Instant::now();
    let state = open(&runtime, &dir);
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
    runtime.block_on(state.close()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // 3. A KIP-848 rebalance as the coordinator sees it: the join that computes the new
    //    target, then every heartbeat until the eleven members are stable.
    let (join, rest, steps) = kip848_rebalance();
    println!(
        "KIP-848 rebalance, coordinator work: 11th member joins 10 on 900 partitions: join (new target assignment) {:.0} µs, reconciliation {:.0} µs over {steps} heartbeats",
        join.as_secs_f64() * 1e6,
        rest.as_secs_f64() * 1e6
    );
}

struct OneTopic;

const TOPIC_ID: Uuid = Uuid([1; 16]);

impl TopicSource for OneTopic {
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        (name == "t").then_some((TOPIC_ID, 900))
    }

    fn topic_name(&self, _: &Uuid) -> Option<String> {
        Some("t".into())
    }

    fn topic_names(&self) -> Vec<String> {
        vec!["t".into()]
    }
}

/// Ten stable members, then an eleventh: the time of its join and of the heartbeats that
/// follow (each member reporting what it owns) until every member is stable.
fn kip848_rebalance() -> (Duration, Duration, usize) {
    let mut shard = Shard::new(GroupConfig::default(), Box::new(|| Uuid([2; 16])));
    let client = Client::default();
    let mut owned: Vec<(String, i32, Vec<i32>)> = Vec::new();
    let beat = |shard: &mut Shard, member: &str, epoch: i32, owns: Option<&[i32]>| {
        let request = ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: if epoch == 0 { 60_000 } else { -1 },
            subscribed_topic_names: (epoch == 0).then(|| vec!["t".into()]),
            topic_partitions: owns.map(|ps| {
                if epoch == 0 {
                    return Vec::new();
                }
                vec![TopicPartitions {
                    topic_id: TOPIC_ID,
                    partitions: ps.to_vec(),
                    ..TopicPartitions::default()
                }]
            }),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        let answer = shard.consumer_heartbeat(0, &client, &request, 1, &OneTopic);
        shard.take_effects();
        assert_eq!(answer.error_code, 0);
        let assigned = answer.assignment.map(|a| {
            a.topic_partitions
                .into_iter()
                .flat_map(|t| t.partitions)
                .collect()
        });
        (answer.member_epoch, assigned)
    };
    // Ten members, each heartbeating until it holds its share.
    let settle = |shard: &mut Shard, owned: &mut Vec<(String, i32, Vec<i32>)>| {
        let mut steps = 0;
        for _round in 0..10 {
            let mut changed = false;
            for (member, epoch, partitions) in owned.iter_mut() {
                let (e, assigned) = beat(shard, member, *epoch, Some(partitions));
                steps += 1;
                changed |= e != *epoch || assigned.is_some();
                *epoch = e;
                if let Some(assigned) = assigned {
                    *partitions = assigned;
                }
            }
            if !changed {
                break;
            }
        }
        steps
    };
    for m in 0..10 {
        let id = format!("member-{m}");
        let (epoch, assigned) = beat(&mut shard, &id, 0, Some(&[]));
        owned.push((id, epoch, assigned.unwrap_or_default()));
    }
    settle(&mut shard, &mut owned);
    assert!(owned.iter().all(|(_, _, p)| p.len() == 90));
    let started = Instant::now();
    let (epoch, assigned) = beat(&mut shard, "member-10", 0, Some(&[]));
    let join = started.elapsed();
    owned.push(("member-10".into(), epoch, assigned.unwrap_or_default()));
    let started = Instant::now();
    let steps = settle(&mut shard, &mut owned);
    let rest = started.elapsed();
    let mut all: Vec<i32> = owned.iter().flat_map(|(_, _, p)| p.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..900).collect::<Vec<i32>>());
    (join, rest, steps)
}
