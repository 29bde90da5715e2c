//! A deterministic simulation of a Spool cluster.
//!
//! Three nodes (each a metadata voter, controller and broker, the real code) run as turmoil
//! hosts over a simulated network and in-memory disks; a client host produces with
//! acks=all to a partition replicated three times with `min.insync.replicas=2`. A
//! seeded schedule of faults plays against them: crashes that lose every byte not yet
//! fsynced (now and then of a second node while one is down, a majority lost), restarts,
//! network partitions that cut one node off, message delay, and lost messages (as TCP
//! shows them: connections that fail, see [`net::Breaks`]). After
//! every step of the simulation the invariants of replication are checked on the nodes'
//! state ([`invariants`]). The same seed gives the same schedule of faults.

pub mod disk;
pub mod invariants;
pub mod net;
mod producer;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use spool_broker::config::{BrokerConfig, Listener};
use spool_broker::state::{BrokerState, Io};
use spool_log::{LogConfig, PartitionLog};
use tokio::sync::watch;

use crate::disk::Disk;
use crate::invariants::Checker;
use crate::net::{Breaks, SimListener, SimNet};

/// The topic the client produces to (one partition).
pub const TOPIC: &str = "sim";
const KAFKA_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9093;
/// Simulated time per step: the invariants are checked after each.
const TICK: Duration = Duration::from_millis(5);
/// The client stops this long before the run ends, so that the last writes settle.
const CLIENT_STOPS_BEFORE_END: Duration = Duration::from_secs(2);
/// Once the faults stop, the cluster must acknowledge a write within this.
const RECOVERY: Duration = Duration::from_secs(10);
/// Where a node keeps the partition's log.
const PARTITION_DIR: &str = "/data/sim-0";

/// What one run simulates.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub nodes: usize,
    /// How many records the client produces (one per request, acks=all).
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
            records: 150,
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
    pub broken_connections: u64,
    pub steps: u64,
    /// The faults, when they happened.
    pub timeline: Vec<String>,
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

fn node_config(id: usize, nodes: usize) -> Result<BrokerConfig, String> {
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
        ("num.partitions", "1".to_string()),
        ("offsets.topic.replication.factor", nodes.min(3).to_string()),
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
    let events: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let fail = |what: String| {
        format!(
            "seed {}: {what}\nfaults:\n  {}",
            settings.seed,
            events.borrow().join("\n  ")
        )
    };
    let mut rng = Rng::new(settings.seed);
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
        let config = node_config(i, settings.nodes).map_err(&fail)?;
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
                spool_broker::server::serve(state, kafka, "PLAINTEXT".into(), stopped).await;
                Ok(())
            }
        });
    }
    let acked = producer::Acked::default();
    let end = settings.faulty + settings.settle;
    sim.client(
        "client",
        producer::produce(
            settings.nodes,
            settings.records,
            acked.clone(),
            breaks.clone(),
            end.saturating_sub(CLIENT_STOPS_BEFORE_END),
        ),
    );

    let mut checker = Checker::new(settings.nodes);
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
            sim.release(host(i), "client");
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
                let before = invariants::committed(&registry).map_err(&fail)?;
                registry.borrow_mut()[i] = None;
                sim.crash(host(i));
                disks[i].power_cut();
                let survived = PartitionLog::open(
                    disks[i].incarnation(),
                    Path::new(PARTITION_DIR),
                    LogConfig::default(),
                    0,
                );
                if let Ok((survived, _)) = survived {
                    invariants::check_survivor(i, before.as_ref(), &survived).map_err(&fail)?;
                }
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
                if rng.one_in(2) {
                    sim.hold(host(i), "client");
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
                &acked,
                report.steps.is_multiple_of(invariants::DEEP_EVERY),
            )
            .map_err(&fail)?;
        if finished && now >= end {
            break;
        }
    }
    checker.finish(&registry, &acked).map_err(&fail)?;
    // Liveness: once the faults stop, the cluster takes writes again within a bound.
    if settings.faults && acked.len() < settings.records {
        let resumed = acked
            .all()
            .iter()
            .map(|a| a.at)
            .filter(|&at| at >= settings.faulty)
            .min();
        if resumed.is_none_or(|at| at > settings.faulty + RECOVERY) {
            return Err(fail(format!(
                "no write acknowledged within {RECOVERY:?} after the faults stopped \
                 (first: {resumed:?}; {} of {} acknowledged)\n{}",
                acked.len(),
                settings.records,
                invariants::describe_nodes(&registry)
            )));
        }
    }
    report.acked = acked.len();
    report.broken_connections = breaks.count();
    report.timeline = events.take();
    Ok(report)
}
