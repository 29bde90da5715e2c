//! The invariants of replication, checked on the running nodes after every step:
//!
//! - at most one node leads the partition in any leader epoch;
//! - a node's high watermark never moves back while it runs;
//! - a follower counts toward acks=all only with the batches on its disk: when an ISR
//!   member crashes, what its disk kept holds every batch below the leader's high
//!   watermark;
//! - every acknowledged acks=all batch is on every live member of the ISR (their logs
//!   reach past it at every step; its checksum is compared at its offset every
//!   [`DEEP_EVERY`] steps and at the end), and is never lost or moved;
//! - any two replicas hold the same batches below both their high watermarks;
//! - committed metadata is never lost or changed: a node's applied metadata offset never
//!   moves back while it runs, every node that applied an offset saw the same partition
//!   state there, and in the end every node has applied everything any node applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use spool_broker::replica::Replica;
use spool_broker::state::BrokerState;
use spool_log::PartitionLog;
use spool_protocol::record_batch::RecordBatch;

use crate::producer::{Ack, Acked};
use crate::{Registry, TOPIC};

/// How often (in steps) the logs' contents are compared, besides at the end.
pub const DEEP_EVERY: u64 = 200;

pub struct Checker {
    /// The node that led in each leader epoch.
    leaders: BTreeMap<i32, usize>,
    /// Per node, since its last start: the highest high watermark and metadata offset seen.
    high_watermarks: Vec<i64>,
    applied: Vec<i64>,
    /// The partition's state at each metadata offset any node applied.
    metadata: BTreeMap<i64, String>,
    /// The newest metadata offset any node applied, and the ISR there: a node cut off
    /// may serve an older image, whose ISR is long gone.
    newest: (i64, Vec<i32>),
}

/// A running node, its replica of the partition, and the metadata offset of its image.
struct Live {
    node: usize,
    state: Arc<BrokerState>,
    replica: Option<Arc<Replica>>,
}

fn live(registry: &[Option<std::sync::Weak<BrokerState>>]) -> Vec<Live> {
    registry
        .iter()
        .enumerate()
        .filter_map(|(node, weak)| {
            let state = weak.as_ref()?.upgrade()?;
            let replica = state.replica(TOPIC, 0);
            Some(Live {
                node,
                state,
                replica,
            })
        })
        .collect()
}

/// The partition's state in `state`'s image, and the image's metadata offset; `None`
/// when the image changed while it was read.
fn partition_state(state: &BrokerState) -> Option<(i64, String, Vec<i32>)> {
    let offset = state.applied_offset();
    let image = state.current_image();
    let p = image.topic(TOPIC)?.partitions.first()?.clone();
    (state.applied_offset() == offset).then(|| {
        let summary = format!(
            "leader {} epoch {} partition epoch {} replicas {:?} isr {:?}",
            p.leader, p.leader_epoch, p.partition_epoch, p.replicas, p.isr
        );
        (offset, summary, p.isr)
    })
}

/// What each live node holds, for a failure's message.
fn describe(nodes: &[Live]) -> String {
    let mut out = Vec::new();
    for live in nodes {
        let held = live.replica.as_ref().map(|r| {
            let log = r.log.with_log(|l| {
                (
                    l.log_start_offset(),
                    l.log_end_offset(),
                    l.high_watermark(),
                    l.leader_epochs().latest_epoch(),
                )
            });
            (log, r.leader_epoch(), r.following(), r.isr())
        });
        out.push(format!(
            "  node {} (metadata {}): (start, end, hw, last epoch), leads at, follows, isr = {held:?}",
            live.node,
            live.state.applied_offset()
        ));
    }
    out.join("\n")
}

/// What each running node holds and its image says of the partition, for a message.
pub fn describe_nodes(registry: &Registry) -> String {
    let nodes = live(&registry.borrow());
    let images: Vec<String> = nodes
        .iter()
        .map(|l| {
            let image = partition_state(&l.state).map(|(_, summary, _)| summary);
            format!("  node {} image: {image:?}", l.node)
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

/// What the leader holds at a moment: its ISR and the batches below its high watermark.
pub struct Committed {
    leader: usize,
    isr: Vec<i32>,
    batches: Vec<(i64, u32)>,
}

/// The current leader's view (the live node leading at the highest epoch), if any.
pub fn committed(registry: &Registry) -> Result<Option<Committed>, String> {
    let nodes = live(&registry.borrow());
    let leader = nodes
        .iter()
        .filter_map(|l| {
            let replica = l.replica.as_ref()?;
            Some((replica.leader_epoch()?, l.node, replica))
        })
        .max_by_key(|(epoch, _, _)| *epoch);
    let Some((_, node, replica)) = leader else {
        return Ok(None);
    };
    let isr = replica.isr().unwrap_or_default();
    let batches = replica
        .log
        .with_log(|l| batches(l, l.high_watermark()))
        .map_err(|e| format!("node {node}: {e}"))?;
    Ok(Some(Committed {
        leader: node,
        isr,
        batches,
    }))
}

/// After node `node` crashed: if the leader counted it in the ISR, `survived` (its log as
/// its disk kept it) holds every batch below the leader's high watermark then.
pub fn check_survivor(
    node: usize,
    before: Option<&Committed>,
    survived: &PartitionLog,
) -> Result<(), String> {
    let Some(before) = before.filter(|c| c.leader != node && c.isr.contains(&(node as i32))) else {
        return Ok(());
    };
    let kept = batches(survived, survived.log_end_offset())?;
    match before.batches.iter().find(|b| !kept.contains(b)) {
        None => Ok(()),
        Some(lost) => Err(format!(
            "node {node} crashed in the ISR {:?} of leader {} and lost batch {lost:?} below the high watermark (its disk kept {} batches, the leader had {})",
            before.isr,
            before.leader,
            kept.len(),
            before.batches.len()
        )),
    }
}

impl Checker {
    pub fn new(nodes: usize) -> Checker {
        Checker {
            leaders: BTreeMap::new(),
            high_watermarks: vec![-1; nodes],
            applied: vec![-1; nodes],
            metadata: BTreeMap::new(),
            newest: (-1, Vec::new()),
        }
    }

    /// Node `node` crashed: what it showed before says nothing about its next run.
    pub fn restarted(&mut self, node: usize) {
        self.high_watermarks[node] = -1;
        self.applied[node] = -1;
    }

    /// The checks of one step; `deep` adds the comparison of the logs' contents.
    pub fn step(&mut self, registry: &Registry, acked: &Acked, deep: bool) -> Result<(), String> {
        let nodes = live(&registry.borrow());
        for live in &nodes {
            let node = live.node;
            if let Some((offset, summary, isr)) = partition_state(&live.state) {
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
                    self.newest = (offset, isr);
                }
            }
            let Some(replica) = &live.replica else {
                continue;
            };
            if let Some(epoch) = replica.leader_epoch() {
                let first = *self.leaders.entry(epoch).or_insert(node);
                if first != node {
                    return Err(format!(
                        "nodes {first} and {node} both led in leader epoch {epoch}"
                    ));
                }
            }
            let high_watermark = replica.log.with_log(|l| l.high_watermark());
            if high_watermark < self.high_watermarks[node] {
                return Err(format!(
                    "node {node}'s high watermark went back from {} to {high_watermark}",
                    self.high_watermarks[node]
                ));
            }
            self.high_watermarks[node] = high_watermark;
        }
        let acked_end = acked.end();
        let isr = self.newest.1.clone();
        for live in nodes.iter().filter(|l| isr.contains(&(l.node as i32))) {
            // A replica whose log is still being opened is checked once it is open.
            let Some(replica) = &live.replica else {
                continue;
            };
            let end = replica.log.with_log(|l| l.log_end_offset());
            if end < acked_end {
                return Err(format!(
                    "node {} is in the ISR {isr:?} but its log ends at {end}, below acknowledged offset {}\n{}",
                    live.node,
                    acked_end - 1,
                    describe(&nodes)
                ));
            }
        }
        if deep {
            self.deep(&nodes, &isr, &acked.all())?;
        }
        Ok(())
    }

    /// Compares the logs' contents: acknowledged batches on the ISR's live members, and
    /// every pair of replicas below both their high watermarks.
    fn deep(&self, nodes: &[Live], isr: &[i32], acks: &[Ack]) -> Result<(), String> {
        let mut below_hw = Vec::new();
        for live in nodes {
            let Some(replica) = &live.replica else {
                continue;
            };
            let (held, high_watermark) = replica.log.with_log(|l| {
                let end = l.log_end_offset();
                (batches(l, end), l.high_watermark())
            });
            let held = held.map_err(|e| format!("node {}: {e}", live.node))?;
            if isr.contains(&(live.node as i32)) {
                for ack in acks {
                    if !held.contains(&(ack.offset, ack.crc)) {
                        return Err(format!(
                            "node {} is in the ISR but lacks acknowledged batch {ack:?}",
                            live.node
                        ));
                    }
                }
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
                        "nodes {a} and {b} disagree below their high watermarks ({below})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The end: every node runs again and has settled; besides the checks of a step, every
    /// node has applied all committed metadata and every acknowledged batch is on every
    /// node of the ISR.
    pub fn finish(&mut self, registry: &Registry, acked: &Acked) -> Result<(), String> {
        self.step(registry, acked, true)?;
        let nodes = live(&registry.borrow());
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
        Ok(())
    }
}
