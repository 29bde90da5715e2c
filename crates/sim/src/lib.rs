//! A deterministic simulation of a Spool cluster.
//!
//! Three nodes (each a metadata voter, controller and broker, the real code, each in its
//! own rack) run as turmoil hosts over a simulated network and in-memory disks. Client
//! hosts drive them: an idempotent producer writes with acks=all to every partition of a
//! topic replicated three times with `min.insync.replicas=2`; a consumer in one of the
//! racks reads every partition, from a follower in its rack when the leader says so
//! (KIP-392); an operator moves partitions between replica sets (AlterPartition-
//! Reassignments). A seeded schedule of faults plays against them: crashes that lose
//! every byte not yet fsynced (now and then of a second node while one is down, a
//! majority lost), restarts, network partitions that cut one node off, message delay,
//! and lost messages (as TCP shows them: connections that fail, see [`net::Breaks`]).
//! After every step of the simulation the invariants of replication are checked on the
//! nodes' state and the clients' view ([`invariants`]). The same seed, run alone in a
//! process, gives the same run: faults, messages and their timing, acknowledgements.

mod admin;
mod consumer;
pub mod disk;
pub mod invariants;
pub mod net;
mod producer;

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use spool_broker::config::{BrokerConfig, Listener};
use spool_broker::state::{BrokerState, Io};
use spool_log::{LogConfig, PartitionLog};
use tokio::sync::watch;

use crate::admin::Events;
use crate::consumer::Consumed;
use crate::disk::Disk;
use crate::invariants::{Checker, Clients};
use crate::net::{Breaks, SimListener, SimNet};
use crate::producer::{Acked, Run, Violations};

/// The topic the clients write and read.
pub const TOPIC: &str = "sim";
const KAFKA_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9093;
/// The client hosts: a cut-off node may be cut off from each of them too.
const CLIENTS: [&str; 3] = ["producer", "consumer", "operator"];
/// Simulated time per step: the invariants are checked after each.
const TICK: Duration = Duration::from_millis(5);
/// The client stops this long before the run ends, so that the last writes settle.
const CLIENT_STOPS_BEFORE_END: Duration = Duration::from_secs(2);
/// Once the faults stop, the cluster must acknowledge a write within this.
const RECOVERY: Duration = Duration::from_secs(10);
/// Where a node keeps a partition's log.
fn partition_dir(partition: i32) -> String {
    format!("/data/{TOPIC}-{partition}")
}

/// What one run simulates.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub nodes: usize,
    pub partitions: i32,
    /// How many records the producer writes to each partition (one per request).
    pub records: usize,
    /// Simulated time with faults, then time for the cluster to settle with none.
    pub faulty: Duration,
    pub settle: Duration,
    /// Whether faults are injected at all.
    pub faults: bool,
    /// While faults are injected, each write fails its connection with probability
    /// `1/break_one_in` (0: never).
    pub break_one_in: u64,
}

impl Settings {
    pub fn new(seed: u64) -> Settings {
        Settings {
            seed,
            nodes: 3,
            partitions: 3,
            records: 60,
            faulty: Duration::from_secs(20),
            settle: Duration::from_secs(20),
            faults: true,
            break_one_in: 200,
        }
    }
}

/// What a run saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub acked: usize,
    pub crashes: usize,
    /// Crashes while another node was down.
    pub majority_losses: usize,
    pub partitions: usize,
    pub reassignments: usize,
    /// Batches the consumer read, and of those, read from a follower.
    pub consumed: usize,
    pub read_from_followers: usize,
    /// Sequence errors answered by a node no longer the partition's leader.
    pub stale_answers: usize,
    pub broken_connections: u64,
    pub steps: u64,
    /// The faults, when they happened.
    pub timeline: Vec<String>,
    /// A digest of the run: the timeline, and each acknowledgement's partition, offset
    /// and time. A replayed seed gives the same.
    pub digest: u64,
}

/// A small seeded generator (xorshift64*) for the fault schedule.
pub(crate) struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `1/n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

fn host(i: usize) -> String {
    format!("n{i}")
}

fn rack(i: usize) -> String {
    format!("rack-{i}")
}

fn node_config(id: usize, nodes: usize, partitions: i32) -> Result<BrokerConfig, String> {
    let voters: Vec<String> = (0..nodes)
        .map(|i| format!("{i}@{}:{CONTROLLER_PORT}", host(i)))
        .collect();
    let mut config = BrokerConfig::default();
    let settings = [
        ("node.id", id.to_string()),
        ("log.dirs", "/data".to_string()),
        (
            "listeners",
            format!("PLAINTEXT://0.0.0.0:{KAFKA_PORT},CONTROLLER://0.0.0.0:{CONTROLLER_PORT}"),
        ),
        (
            "advertised.listeners",
            format!("PLAINTEXT://{}:{KAFKA_PORT}", host(id)),
        ),
        ("controller.quorum.voters", voters.join(",")),
        ("default.replication.factor", nodes.min(3).to_string()),
        ("min.insync.replicas", "2".to_string()),
        ("num.partitions", partitions.to_string()),
        ("broker.rack", rack(id)),
        (
            "replica.selector.class",
            "org.apache.kafka.common.replica.RackAwareReplicaSelector".to_string(),
        ),
        ("offsets.topic.replication.factor", nodes.min(3).to_string()),
        // Metadata snapshots and purges often, so crashed and cut-off voters come back
        // through snapshots too.
        (
            "metadata.log.max.record.bytes.between.snapshots",
            "256".to_string(),
        ),
        ("metadata.log.segment.bytes", "1024".to_string()),
        ("metadata.max.retention.bytes", "0".to_string()),
    ];
    for (key, value) in settings {
        config
            .set(key, &value)
            .map_err(|e| format!("{key}={value}: {e}"))?;
    }
    config.check().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The nodes' states as the checker reaches them: a weak handle per node while it runs.
pub type Registry = Rc<RefCell<Vec<Option<Weak<BrokerState>>>>>;

/// Runs one simulation. `Err` names the first invariant broken (with the seed).
pub fn run(settings: &Settings) -> Result<Report, String> {
    let events: Events = Rc::default();
    let fail = |what: String| {
        format!(
            "seed {}: {what}\nfaults:\n  {}",
            settings.seed,
            events.borrow().join("\n  ")
        )
    };
    let mut rng = Rng::new(settings.seed);
    // Every node runs on this thread: Raft's timeouts and the IDs follow the seed.
    spool_metadata::random::seed_this_thread(settings.seed);
    spool_broker::state::keep_blocking_work_on_this_thread();
    let mut sim = turmoil::Builder::new()
        .rng_seed(settings.seed)
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(if settings.faults { 30 } else { 2 }))
        // Connection attempts held by a cut arrive together when it heals.
        .tcp_capacity(4096)
        .simulation_duration(settings.faulty + settings.settle + Duration::from_secs(120))
        .build();
    let breaks = Breaks::new(
        settings.seed,
        if settings.faults {
            settings.break_one_in
        } else {
            0
        },
    );
    let disks: Vec<Disk> = (0..settings.nodes).map(|_| Disk::default()).collect();
    let registry: Registry = Rc::new(RefCell::new(vec![None; settings.nodes]));
    for (i, disk) in disks.iter().enumerate() {
        let config = node_config(i, settings.nodes, settings.partitions).map_err(&fail)?;
        let disk = disk.clone();
        let registry = Rc::clone(&registry);
        let breaks = breaks.clone();
        sim.host(host(i), move || {
            let config = config.clone();
            let breaks = breaks.clone();
            let storage = disk.incarnation();
            let registry = Rc::clone(&registry);
            async move {
                let controller =
                    turmoil::net::TcpListener::bind(("0.0.0.0", CONTROLLER_PORT)).await?;
                let kafka = turmoil::net::TcpListener::bind(("0.0.0.0", KAFKA_PORT)).await?;
                let endpoints = config.endpoints(&[Listener {
                    name: "PLAINTEXT".into(),
                    address: kafka.local_addr()?,
                }]);
                let io = Io {
                    storage,
                    net: Arc::new(SimNet(breaks.clone())),
                };
                let listener = Box::new(SimListener(controller, breaks.clone()));
                let state = BrokerState::start_with(config, endpoints, Some(listener), io)
                    .await
                    .map_err(|e| e.to_string())?;
                registry.borrow_mut()[i] = Some(Arc::downgrade(&state));
                let (_stop, stopped) = watch::channel(false);
                let kafka = Box::new(SimListener(kafka, breaks));
                spool_broker::server::serve(
                    state,
                    kafka,
                    "PLAINTEXT".into(),
                    Default::default(),
                    stopped,
                )
                .await;
                Ok(())
            }
        });
    }
    let acked = Acked::default();
    let consumed = Consumed::default();
    let violations = Violations::default();
    let end = settings.faulty + settings.settle;
    let clients_run = Run {
        nodes: settings.nodes,
        partitions: settings.partitions,
        give_up_after: end.saturating_sub(CLIENT_STOPS_BEFORE_END),
        started: tokio::time::Instant::now(),
        violations: violations.clone(),
    };
    {
        let (run, records, acked, breaks) = (
            clients_run.clone(),
            settings.records,
            acked.clone(),
            breaks.clone(),
        );
        sim.client("producer", async move {
            producer::produce(run.start(), records, acked, breaks).await
        });
    }
    {
        let rack = rack(rng.below(settings.nodes as u64) as usize);
        let (run, consumed, breaks) = (clients_run.clone(), consumed.clone(), breaks.clone());
        sim.client("consumer", async move {
            consumer::consume(run.start(), rack, consumed, breaks).await
        });
    }
    if settings.faults {
        let (run, seed, until, events, breaks) = (
            clients_run.clone(),
            settings.seed,
            settings.faulty,
            Rc::clone(&events),
            breaks.clone(),
        );
        sim.client("operator", async move {
            admin::reassign(run.start(), seed, until, events, breaks).await
        });
    }
    let clients = Clients {
        acked: &acked,
        consumed: &consumed,
        violations: &violations,
    };

    let mut checker = Checker::new(settings.nodes, settings.partitions);
    let mut report = Report::default();
    let mut down: Vec<Option<Duration>> = vec![None; settings.nodes];
    let mut cut: Option<(usize, Duration)> = None;
    loop {
        let finished = sim
            .step()
            .map_err(|e| fail(format!("a host failed: {e}")))?;
        let now = sim.elapsed();
        report.steps += 1;
        // Crashed nodes come back when their time is up.
        for (i, until) in down.iter_mut().enumerate() {
            if until.is_some_and(|t| now >= t || now >= settings.faulty) {
                *until = None;
                sim.bounce(host(i));
                events
                    .borrow_mut()
                    .push(format!("{now:?}: node {i} restarts"));
            }
        }
        if let Some((i, until)) = cut
            && (now >= until || now >= settings.faulty)
        {
            for j in (0..settings.nodes).filter(|&j| j != i) {
                sim.release(host(i), host(j));
            }
            for client in CLIENTS {
                sim.release(host(i), client);
            }
            cut = None;
            events
                .borrow_mut()
                .push(format!("{now:?}: node {i} reconnected"));
        }
        if settings.faults && now >= settings.faulty {
            breaks.disable();
        }
        if settings.faults && now < settings.faulty {
            // Mostly one node down or cut off at a time (the rest is a majority); now and
            // then a second crash while one node is down loses the majority for a while.
            let crashed = down.iter().filter(|d| d.is_some()).count();
            let quiet = crashed == 0 && cut.is_none();
            let second = crashed == 1 && cut.is_none() && rng.one_in(1_500);
            if (quiet && rng.one_in(400)) || second {
                let i = loop {
                    let i = rng.below(settings.nodes as u64) as usize;
                    if down[i].is_none() {
                        break i;
                    }
                };
                let before =
                    invariants::committed(&registry, settings.partitions).map_err(&fail)?;
                registry.borrow_mut()[i] = None;
                sim.crash(host(i));
                disks[i].power_cut();
                let survived = |partition: i32| {
                    let storage = disks[i].incarnation();
                    let dir = partition_dir(partition);
                    if !storage.exists(Path::new(&dir)) {
                        return None;
                    }
                    PartitionLog::open(storage, Path::new(&dir), LogConfig::default(), 0)
                        .ok()
                        .map(|(log, _)| log)
                };
                invariants::check_survivor(i, &before, survived).map_err(&fail)?;
                checker.restarted(i);
                down[i] = Some(now + Duration::from_millis(200 + rng.below(4000)));
                events.borrow_mut().push(format!(
                    "{now:?}: node {i} crashes (acked so far: {}){}",
                    acked.len(),
                    if second { ", a second node down" } else { "" }
                ));
                report.crashes += 1;
                report.majority_losses += usize::from(second);
            } else if quiet && rng.one_in(400) {
                let i = rng.below(settings.nodes as u64) as usize;
                // Held, as TCP holds what it cannot deliver: it arrives after the cut.
                for j in (0..settings.nodes).filter(|&j| j != i) {
                    sim.hold(host(i), host(j));
                }
                for client in CLIENTS {
                    if rng.one_in(2) {
                        sim.hold(host(i), client);
                    }
                }
                cut = Some((i, now + Duration::from_millis(500 + rng.below(5000))));
                events
                    .borrow_mut()
                    .push(format!("{now:?}: node {i} cut off"));
                report.partitions += 1;
            }
        }
        checker
            .step(
                &registry,
                &clients,
                report.steps.is_multiple_of(invariants::DEEP_EVERY),
            )
            .map_err(&fail)?;
        if finished && now >= end {
            break;
        }
    }
    checker.finish(&registry, &clients).map_err(&fail)?;
    // Liveness: once the faults stop, every partition takes writes again within a bound.
    for partition in (0..settings.partitions).filter(|_| settings.faults) {
        let acks = acked.of(partition);
        if acks.len() >= settings.records {
            continue;
        }
        let resumed = acks
            .iter()
            .map(|a| a.at)
            .filter(|&at| at >= settings.faulty)
            .min();
        if resumed.is_none_or(|at| at > settings.faulty + RECOVERY) {
            return Err(fail(format!(
                "no write to partition {partition} acknowledged within {RECOVERY:?} after the \
                 faults stopped (first: {resumed:?}; {} of {} acknowledged)\n{}",
                acks.len(),
                settings.records,
                invariants::describe_nodes(&registry, settings.partitions)
            )));
        }
    }
    report.acked = acked.len();
    report.consumed = consumed.len();
    report.stale_answers = checker.stale_answers;
    report.read_from_followers = consumed.read_from_followers();
    report.reassignments = events
        .borrow()
        .iter()
        .filter(|e| e.contains("reassigned"))
        .count();
    report.broken_connections = breaks.count();
    report.timeline = events.take();
    let mut digest = std::hash::DefaultHasher::new();
    report.timeline.hash(&mut digest);
    for partition in 0..settings.partitions {
        for a in acked.of(partition) {
            (a.partition, a.offset, a.at).hash(&mut digest);
        }
    }
    report.digest = digest.finish();
    Ok(report)
}
