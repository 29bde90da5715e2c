//! The invariants of replication, checked on the running nodes after every step, for
//! every partition:
//!
//! - at most one node leads the partition in any leader epoch;
//! - a node's high watermark never moves back while it runs;
//! - a follower counts toward acks=all only with the batches on its disk: when an ISR
//!   member crashes, what its disk kept holds every batch below the leader's high
//!   watermark;
//! - every acknowledged acks=all batch, and every batch a consumer read, is on every
//!   live member of the ISR (their logs reach past it at every step; its checksum is
//!   compared at its offset every [`DEEP_EVERY`] steps and at the end), and is never lost
//!   or moved;
//! - any two replicas hold the same batches below both their high watermarks;
//! - no log holds a record twice below its high watermark (the producer is idempotent
//!   and resends a batch after every failure);
//! - the clients saw nothing the cluster must not show them ([`Violations`]);
//! - committed metadata is never lost or changed: a node's applied metadata offset never
//!   moves back while it runs, every node that applied an offset saw the same partition
//!   state there, and in the end every node has applied everything any node applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use spool_broker::replica::Replica;
use spool_broker::state::BrokerState;
use spool_log::PartitionLog;
use spool_protocol::record_batch::RecordBatch;

use crate::consumer::Consumed;
use crate::producer::{Acked, Violations};
use crate::{Registry, TOPIC};

/// How often (in steps) the logs' contents are compared, besides at the end.
pub const DEEP_EVERY: u64 = 200;

/// The clients' view the checker compares the logs with.
pub struct Clients<'a> {
    pub acked: &'a Acked,
    pub consumed: &'a Consumed,
    pub violations: &'a Violations,
}

impl Clients<'_> {
    /// The batches of `partition` that must stay: acknowledged or read by a consumer.
    fn committed(&self, partition: i32) -> Vec<(i64, u32)> {
        let mut all: Vec<(i64, u32)> = self
            .acked
            .of(partition)
            .iter()
            .map(|a| (a.offset, a.crc))
            .chain(self.consumed.of(partition))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
    /// One past the last batch of `partition` that must stay.
    fn end(&self, partition: i32) -> i64 {
        self.acked
            .end(partition)
            .max(self.consumed.position(partition))
    }
}

pub struct Checker {
    partitions: i32,
    /// The node that led in each (partition, leader epoch).
    leaders: BTreeMap<(i32, i32), usize>,
    /// Per node and partition, since the node's last start: the replica last seen there
    /// (a partition moved off a node and back is a new replica) and its highest high
    /// watermark.
    high_watermarks: Vec<Vec<(Weak<Replica>, i64)>>,
    /// Per node, since its last start: the highest metadata offset applied.
    applied: Vec<i64>,
    /// The partitions' state at each metadata offset any node applied.
    metadata: BTreeMap<i64, String>,
    /// The newest metadata offset any node applied, and each partition's leader and ISR
    /// there: a node cut off may serve an older image, whose ISR is long gone.
    newest: (i64, Leaders),
    /// Sequence errors answered by a node that was not the rightful leader.
    pub stale_answers: usize,
}

/// A running node and its replica of each partition (`None` where it holds none).
struct Live {
    node: usize,
    state: Arc<BrokerState>,
    replicas: Vec<Option<Arc<Replica>>>,
}

fn live(registry: &[Option<std::sync::Weak<BrokerState>>], partitions: i32) -> Vec<Live> {
    registry
        .iter()
        .enumerate()
        .filter_map(|(node, weak)| {
            let state = weak.as_ref()?.upgrade()?;
            let replicas = (0..partitions).map(|p| state.replica(TOPIC, p)).collect();
            Some(Live {
                node,
                state,
                replicas,
            })
        })
        .collect()
}

/// Each partition's leader and ISR.
type Leaders = Vec<(i32, Vec<i32>)>;

/// The partitions' state in `state`'s image, each partition's leader and ISR, and the
/// image's metadata offset; `None` when the image changed while it was read or has no
/// topic.
fn partition_state(state: &BrokerState) -> Option<(i64, String, Leaders)> {
    let offset = state.applied_offset();
    let image = state.current_image();
    let topic = image.topic(TOPIC)?;
    let mut summary = Vec::new();
    let mut isrs = Vec::new();
    for p in &topic.partitions {
        summary.push(format!(
            "{}: leader {} epoch {} partition epoch {} replicas {:?} isr {:?} adding {:?} removing {:?}",
            p.index,
            p.leader,
            p.leader_epoch,
            p.partition_epoch,
            p.replicas,
            p.isr,
            p.adding_replicas,
            p.removing_replicas
        ));
        isrs.push((p.leader, p.isr.clone()));
    }
    (state.applied_offset() == offset).then(|| (offset, summary.join("; "), isrs))
}

/// What each live node holds, for a failure's message.
fn describe(nodes: &[Live]) -> String {
    let mut out = Vec::new();
    for live in nodes {
        for (partition, replica) in live.replicas.iter().enumerate() {
            let Some(r) = replica else { continue };
            let log = r.log.with_log(|l| {
                (
                    l.log_start_offset(),
                    l.log_end_offset(),
                    l.high_watermark(),
                    l.leader_epochs().latest_epoch(),
                )
            });
            out.push(format!(
                "  node {} partition {partition} (metadata {}): (start, end, hw, last epoch), leads at, follows, isr = {:?}",
                live.node,
                live.state.applied_offset(),
                (log, r.leader_epoch(), r.following(), r.isr())
            ));
        }
    }
    out.join("\n")
}

/// What each running node holds and its image says of the partitions, for a message.
pub fn describe_nodes(registry: &Registry, partitions: i32) -> String {
    let nodes = live(&registry.borrow(), partitions);
    let images: Vec<String> = nodes
        .iter()
        .map(|l| {
            let image = partition_state(&l.state).map(|(_, summary, _)| summary);
            let brokers: Vec<String> = l
                .state
                .current_image()
                .brokers()
                .map(|b| format!("{} epoch {} fenced {}", b.id, b.epoch, b.fenced))
                .collect();
            format!("  node {} image: {image:?}, brokers {brokers:?}", l.node)
        })
        .collect();
    format!("{}\n{}", describe(&nodes), images.join("\n"))
}

/// Every batch of `log` from its start below `below`: (base offset, checksum).
fn batches(log: &PartitionLog, below: i64) -> Result<Vec<(i64, u32)>, String> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < below {
        let read = log
            .read(offset, 1 << 20, below)
            .map_err(|e| format!("reading at {offset}: {e}"))?;
        let Some(range) = read.range else { break };
        let mut bytes = range.to_bytes().map_err(|e| e.to_string())?;
        while !bytes.is_empty() {
            let batch = RecordBatch::split_first(&mut bytes).map_err(|e| e.to_string())?;
            if batch.last_offset() < below {
                out.push((batch.base_offset(), batch.crc()));
            }
        }
        if read.next_offset <= offset {
            break;
        }
        offset = read.next_offset;
    }
    Ok(out)
}

/// What a partition's leader holds at a moment: its ISR and the batches below its high
/// watermark; and the nodes that hold a replica of it then.
pub struct Committed {
    partition: i32,
    leader: usize,
    isr: Vec<i32>,
    batches: Vec<(i64, u32)>,
    holders: Vec<usize>,
}

/// Each partition's current leader's view (the live node leading at the highest epoch),
/// where there is one.
pub fn committed(registry: &Registry, partitions: i32) -> Result<Vec<Committed>, String> {
    let nodes = live(&registry.borrow(), partitions);
    let mut out = Vec::new();
    for partition in 0..partitions {
        let leader = nodes
            .iter()
            .filter_map(|l| {
                let replica = l.replicas[partition as usize].as_ref()?;
                Some((replica.leader_epoch()?, l.node, replica))
            })
            .max_by_key(|(epoch, _, _)| *epoch);
        let Some((_, node, replica)) = leader else {
            continue;
        };
        let batches = replica
            .log
            .with_log(|l| batches(l, l.high_watermark()))
            .map_err(|e| format!("node {node} partition {partition}: {e}"))?;
        let holders = nodes
            .iter()
            .filter(|l| l.replicas[partition as usize].is_some())
            .map(|l| l.node)
            .collect();
        out.push(Committed {
            partition,
            leader: node,
            isr: replica.isr().unwrap_or_default(),
            batches,
            holders,
        });
    }
    Ok(out)
}

/// After node `node` crashed: if the leader of a partition counted it in the ISR, its log
/// as its disk kept it (`survived(partition)`) holds every batch below the leader's high
/// watermark then. A node that had already given its replica up (the partition moved
/// off it, and the leader has not yet seen that committed) is not held to it.
pub fn check_survivor(
    node: usize,
    before: &[Committed],
    survived: impl Fn(i32) -> Option<PartitionLog>,
) -> Result<(), String> {
    for before in before
        .iter()
        .filter(|c| c.leader != node && c.isr.contains(&(node as i32)) && c.holders.contains(&node))
    {
        let kept = match survived(before.partition) {
            Some(log) => batches(&log, log.log_end_offset())?,
            None => Vec::new(),
        };
        if let Some(lost) = before.batches.iter().find(|b| !kept.contains(b)) {
            return Err(format!(
                "node {node} crashed in the ISR {:?} of partition {}'s leader {} and lost batch {lost:?} below the high watermark (its disk kept {} batches, the leader had {})",
                before.isr,
                before.partition,
                before.leader,
                kept.len(),
                before.batches.len()
            ));
        }
    }
    Ok(())
}

impl Checker {
    pub fn new(nodes: usize, partitions: i32) -> Checker {
        Checker {
            partitions,
            leaders: BTreeMap::new(),
            high_watermarks: vec![vec![(Weak::new(), -1); partitions as usize]; nodes],
            applied: vec![-1; nodes],
            metadata: BTreeMap::new(),
            newest: (-1, Vec::new()),
            stale_answers: 0,
        }
    }

    /// Node `node` crashed: what it showed before says nothing about its next run.
    pub fn restarted(&mut self, node: usize) {
        self.high_watermarks[node].fill((Weak::new(), -1));
        self.applied[node] = -1;
    }

    /// The checks of one step; `deep` adds the comparison of the logs' contents.
    pub fn step(
        &mut self,
        registry: &Registry,
        clients: &Clients,
        deep: bool,
    ) -> Result<(), String> {
        if let Some(violation) = clients.violations.first() {
            return Err(violation);
        }
        let nodes = live(&registry.borrow(), self.partitions);
        // A sequence error from the leader of the newest image, which the node itself
        // serves, breaks the idempotent producer's contract; from anyone else it is stale.
        for suspect in clients.violations.take_suspects() {
            let rightful = self
                .newest
                .1
                .get(suspect.partition as usize)
                .is_some_and(|(leader, _)| *leader == suspect.node)
                && nodes.iter().any(|l| {
                    l.node as i32 == suspect.node && l.state.applied_offset() >= self.newest.0
                });
            if rightful {
                return Err(format!(
                    "{}, leading at the newest metadata {}",
                    suspect.what, self.newest.0
                ));
            }
            self.stale_answers += 1;
        }
        for live in &nodes {
            let node = live.node;
            if let Some((offset, summary, isrs)) = partition_state(&live.state) {
                if offset < self.applied[node] {
                    return Err(format!(
                        "node {node}'s applied metadata went back from {} to {offset}",
                        self.applied[node]
                    ));
                }
                self.applied[node] = offset;
                let seen = self
                    .metadata
                    .entry(offset)
                    .or_insert_with(|| summary.clone());
                if *seen != summary {
                    return Err(format!(
                        "at metadata offset {offset} node {node} has `{summary}`, another node had `{seen}`"
                    ));
                }
                if offset > self.newest.0 {
                    self.newest = (offset, isrs);
                }
            }
            for (partition, replica) in live.replicas.iter().enumerate() {
                let Some(replica) = replica else { continue };
                if let Some(epoch) = replica.leader_epoch() {
                    let first = *self
                        .leaders
                        .entry((partition as i32, epoch))
                        .or_insert(node);
                    if first != node {
                        return Err(format!(
                            "nodes {first} and {node} both led partition {partition} in leader epoch {epoch}"
                        ));
                    }
                }
                let high_watermark = replica.log.with_log(|l| l.high_watermark());
                let (seen, highest) = &mut self.high_watermarks[node][partition];
                if !std::ptr::eq(seen.as_ptr(), Arc::as_ptr(replica)) {
                    *seen = Arc::downgrade(replica);
                    *highest = -1;
                }
                if high_watermark < *highest {
                    return Err(format!(
                        "node {node}'s high watermark of partition {partition} went back from {highest} to {high_watermark}"
                    ));
                }
                *highest = high_watermark;
            }
        }
        for (partition, (_, isr)) in self.newest.1.iter().enumerate() {
            let must_hold = clients.end(partition as i32);
            for live in nodes.iter().filter(|l| isr.contains(&(l.node as i32))) {
                // A replica whose log is still being opened is checked once it is open.
                let Some(replica) = &live.replicas[partition] else {
                    continue;
                };
                let end = replica.log.with_log(|l| l.log_end_offset());
                if end < must_hold {
                    return Err(format!(
                        "node {} is in partition {partition}'s ISR {isr:?} but its log ends at {end}, below committed offset {}\n{}",
                        live.node,
                        must_hold - 1,
                        describe(&nodes)
                    ));
                }
            }
        }
        if deep {
            self.deep(&nodes, clients)?;
        }
        Ok(())
    }

    /// Compares the logs' contents: committed batches on the ISR's live members, every
    /// pair of replicas below both their high watermarks, and no record twice.
    fn deep(&self, nodes: &[Live], clients: &Clients) -> Result<(), String> {
        for partition in 0..self.partitions {
            let index = partition as usize;
            let isr = self
                .newest
                .1
                .get(index)
                .map(|(_, isr)| isr.clone())
                .unwrap_or_default();
            let committed = clients.committed(partition);
            let mut below_hw = Vec::new();
            for live in nodes {
                let Some(replica) = &live.replicas[index] else {
                    continue;
                };
                let (held, high_watermark) = replica.log.with_log(|l| {
                    let end = l.log_end_offset();
                    (batches(l, end), l.high_watermark())
                });
                let held =
                    held.map_err(|e| format!("node {} partition {partition}: {e}", live.node))?;
                if isr.contains(&(live.node as i32))
                    && let Some(missing) = committed.iter().find(|b| !held.contains(b))
                {
                    return Err(format!(
                        "node {} is in partition {partition}'s ISR but lacks committed batch {missing:?}",
                        live.node
                    ));
                }
                let mut records: Vec<u32> = held
                    .iter()
                    .filter(|(o, _)| *o < high_watermark)
                    .map(|(_, crc)| *crc)
                    .collect();
                records.sort_unstable();
                if let Some(twice) = records.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!(
                        "node {} holds the batch with checksum {} twice in partition {partition} below its high watermark {high_watermark}",
                        live.node, twice[0]
                    ));
                }
                below_hw.push((live.node, high_watermark, held));
            }
            for (i, (a, hw_a, held_a)) in below_hw.iter().enumerate() {
                for (b, hw_b, held_b) in &below_hw[i + 1..] {
                    let below = (*hw_a).min(*hw_b);
                    let cut = |held: &Vec<(i64, u32)>| -> Vec<(i64, u32)> {
                        held.iter().copied().filter(|(o, _)| *o < below).collect()
                    };
                    if cut(held_a) != cut(held_b) {
                        return Err(format!(
                            "nodes {a} and {b} disagree in partition {partition} below their high watermarks ({below})"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The end: every node runs again and has settled; besides the checks of a step, every
    /// node has applied all committed metadata, every committed batch is on every node of
    /// the ISR, and the consumer has read everything acknowledged.
    pub fn finish(&mut self, registry: &Registry, clients: &Clients) -> Result<(), String> {
        self.step(registry, clients, true)?;
        let nodes = live(&registry.borrow(), self.partitions);
        let committed = self.metadata.keys().next_back().copied().unwrap_or(-1);
        for live in &nodes {
            let applied = live.state.applied_offset();
            if applied < committed {
                return Err(format!(
                    "node {} applied metadata up to {applied} only, {committed} was committed",
                    live.node
                ));
            }
        }
        if nodes.len() < self.applied.len() {
            return Err(format!("only {} nodes run at the end", nodes.len()));
        }
        for partition in 0..self.partitions {
            let (read, acked) = (
                clients.consumed.position(partition),
                clients.acked.end(partition),
            );
            if read < acked {
                return Err(format!(
                    "the consumer read partition {partition} up to {read} only, {acked} was acknowledged\n{}",
                    describe_nodes(registry, self.partitions)
                ));
            }
        }
        Ok(())
    }
}
