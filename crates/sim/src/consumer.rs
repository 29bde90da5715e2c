//! The simulation's consumer: reads every partition of [`TOPIC`] from the start, as a
//! client in a rack does (Fetch v12 with its rack ID), so the leader may send it to a
//! follower in that rack (KIP-392) and it reads from there until an error sends it back.
//! It notes every batch it read. What a consumer reads is committed: the checker holds
//! it to the same rules as an acknowledged batch. A batch at or past the high watermark
//! the answer carries, or a gap in the offsets, is a violation.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use spool_broker::peers::Peers;
use spool_protocol::ErrorCode;
use spool_protocol::messages::{FetchRequest, RequestBody, ResponseBody, fetch_request};
use spool_protocol::record_batch::RecordBatch;

use crate::net::Breaks;
use crate::producer::{Run, find_leader, peers};
use crate::{KAFKA_PORT, TOPIC, host};

/// The batches read so far (partition, base offset, checksum), and how many of them
/// came from a follower.
#[derive(Debug, Clone, Default)]
pub struct Consumed(Rc<RefCell<Vec<(i32, i64, u32)>>>, Rc<Cell<usize>>);

impl Consumed {
    /// The batches read from `partition`: (offset, checksum).
    pub fn of(&self, partition: i32) -> Vec<(i64, u32)> {
        self.0
            .borrow()
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|&(_, offset, crc)| (offset, crc))
            .collect()
    }
    /// The offset the consumer reads next in `partition`.
    pub fn position(&self, partition: i32) -> i64 {
        self.0
            .borrow()
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|&(_, offset, _)| offset + 1)
            .max()
            .unwrap_or(0)
    }
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
    pub fn read_from_followers(&self) -> usize {
        self.1.get()
    }
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

/// Reads every partition until the run is over.
pub async fn consume(
    run: Run,
    rack: String,
    consumed: Consumed,
    breaks: Breaks,
) -> turmoil::Result {
    let peers = peers("sim-consumer", breaks);
    let tasks: Vec<_> = (0..run.partitions)
        .map(|partition| {
            let reader = Reader {
                run: run.clone(),
                peers: Rc::clone(&peers),
                rack: rack.clone(),
                partition,
                consumed: consumed.clone(),
            };
            tokio::task::spawn_local(reader.read())
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

struct Reader {
    run: Run,
    peers: Rc<Peers>,
    rack: String,
    partition: i32,
    consumed: Consumed,
}

/// What one fetch brought.
enum Fetched {
    /// Batches (base offset, last offset, checksum) and the high watermark.
    Records(Vec<(i64, i64, u32)>, i64),
    /// Read from this replica instead.
    ReadFrom(i32),
    Failed,
}

impl Reader {
    async fn read(self) -> turmoil::Result {
        let mut leader: Option<i32> = None;
        let mut replica: Option<i32> = None;
        let mut ask = self.partition as usize;
        let mut position = 0;
        while !self.run.over() {
            let Some(leading) = leader else {
                ask = (ask + 1) % self.run.nodes;
                leader = find_leader(&self.peers, ask, self.partition).await;
                if leader.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            };
            let from = replica.unwrap_or(leading);
            match self.fetch(from, position).await {
                Fetched::Records(batches, high_watermark) => {
                    for (base, last, crc) in batches {
                        if last < position {
                            continue;
                        }
                        if base != position || last >= high_watermark {
                            self.run.violations.push(format!(
                                "partition {}: node {from} answered a fetch at {position} with batch {base}..={last} (high watermark {high_watermark})",
                                self.partition
                            ));
                            return Ok(());
                        }
                        self.consumed
                            .0
                            .borrow_mut()
                            .push((self.partition, base, crc));
                        if from != leading {
                            self.consumed.1.set(self.consumed.1.get() + 1);
                        }
                        position = last + 1;
                    }
                }
                Fetched::ReadFrom(node) => replica = Some(node),
                Fetched::Failed => {
                    leader = None;
                    replica = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(())
    }

    async fn fetch(&self, from: i32, position: i64) -> Fetched {
        let request = FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            rack_id: self.rack.clone(),
            topics: vec![fetch_request::FetchTopic {
                topic: TOPIC.into(),
                partitions: vec![fetch_request::FetchPartition {
                    partition: self.partition,
                    fetch_offset: position,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let to_host = usize::try_from(from).map(host).unwrap_or_default();
        let answer = self
            .peers
            .send(&to_host, KAFKA_PORT, RequestBody::Fetch(request), 12)
            .await;
        let Ok(ResponseBody::Fetch(response)) = answer else {
            return Fetched::Failed;
        };
        let Some(p) = response.responses.first().and_then(|t| {
            t.partitions
                .iter()
                .find(|p| p.partition_index == self.partition)
        }) else {
            return Fetched::Failed;
        };
        if ErrorCode::from_wire(p.error_code) != ErrorCode::None {
            return Fetched::Failed;
        }
        if p.preferred_read_replica >= 0 && p.preferred_read_replica != from {
            return Fetched::ReadFrom(p.preferred_read_replica);
        }
        let mut bytes = p.records.clone().unwrap_or_default();
        let mut batches = Vec::new();
        while !bytes.is_empty() {
            // A batch cut short at the end of the answer is read again next time.
            let Ok(batch) = RecordBatch::split_first(&mut bytes) else {
                break;
            };
            batches.push((batch.base_offset(), batch.last_offset(), batch.crc()));
        }
        Fetched::Records(batches, p.high_watermark)
    }
}
