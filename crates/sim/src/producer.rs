//! The simulation's clients. An idempotent producer writes one-record batches with
//! acks=all to every partition of [`TOPIC`] side by side, one batch in flight per
//! partition, resending the same batch (same producer ID, epoch and sequence) after any
//! error until it is acknowledged; it notes where each acknowledged batch landed. A
//! sequence or producer ID error is suspect: a leader cut off from the cluster may still
//! believe it leads and lack the batches the new leader took since (Kafka answers the
//! same), but the rightful leader must never answer one ([`Violations`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use spool_broker::peers::Peers;
use spool_protocol::ErrorCode;
use spool_protocol::compression::Compression;
use spool_protocol::messages::{
    InitProducerIdRequest, MetadataRequest, ProduceRequest, RequestBody, ResponseBody,
    metadata_request, produce_request,
};
use spool_protocol::record_batch::{RecordBatch, RecordBatchBuilder};

use crate::net::{Breaks, SimNet};
use crate::{KAFKA_PORT, TOPIC, host};

/// An acknowledged batch: its partition, offset and checksum (which covers the record),
/// and when the acknowledgement came (simulated time since the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
    pub crc: u32,
    pub at: Duration,
}

/// The acknowledgements so far, shared with the checker.
#[derive(Debug, Clone, Default)]
pub struct Acked(Rc<RefCell<Vec<Ack>>>);

impl Acked {
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
    /// The acknowledgements of one partition.
    pub fn of(&self, partition: i32) -> Vec<Ack> {
        self.0
            .borrow()
            .iter()
            .filter(|a| a.partition == partition)
            .copied()
            .collect()
    }
    /// One past the largest acknowledged offset of `partition` (0 before any).
    pub fn end(&self, partition: i32) -> i64 {
        self.0
            .borrow()
            .iter()
            .filter(|a| a.partition == partition)
            .map(|a| a.offset + 1)
            .max()
            .unwrap_or(0)
    }
}

/// An answer only a stale leader may give: from `node`, for `partition`.
#[derive(Debug, Clone)]
pub struct Suspect {
    pub partition: i32,
    pub node: i32,
    pub what: String,
}

/// What a client saw that the cluster must never show it, and answers the checker
/// judges by who led the partition then; shared with the checker.
#[derive(Debug, Clone, Default)]
pub struct Violations {
    seen: Rc<RefCell<Vec<String>>>,
    suspects: Rc<RefCell<Vec<Suspect>>>,
}

impl Violations {
    pub fn push(&self, what: String) {
        self.seen.borrow_mut().push(what);
    }
    pub fn first(&self) -> Option<String> {
        self.seen.borrow().first().cloned()
    }
    pub fn suspect(&self, suspect: Suspect) {
        self.suspects.borrow_mut().push(suspect);
    }
    /// The suspect answers since the last call.
    pub fn take_suspects(&self) -> Vec<Suspect> {
        self.suspects.take()
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// The clients' connections to the nodes.
pub fn peers(name: &str, breaks: Breaks) -> Rc<Peers> {
    Rc::new(Peers::new(name.into(), TIMEOUT, Arc::new(SimNet(breaks))))
}

/// What every client task shares: the cluster's size and when to stop.
#[derive(Clone)]
pub struct Run {
    pub nodes: usize,
    pub partitions: i32,
    /// Simulated time since the start after which the client stops.
    pub give_up_after: Duration,
    pub started: tokio::time::Instant,
    pub violations: Violations,
}

impl Run {
    /// The run as a client host sees it: its time starts now, on the host's clock.
    pub fn start(mut self) -> Run {
        self.started = tokio::time::Instant::now();
        self
    }
    pub fn over(&self) -> bool {
        self.started.elapsed() > self.give_up_after
    }
}

/// Produces `records` records to each partition until they are all acknowledged or the
/// run is over.
pub async fn produce(run: Run, records: usize, acked: Acked, breaks: Breaks) -> turmoil::Result {
    let peers = peers("sim-producer", breaks);
    let mut ask = 0usize;
    let (producer_id, producer_epoch) = loop {
        if run.over() {
            return Ok(());
        }
        ask = (ask + 1) % run.nodes;
        if let Some(id) = init_producer_id(&peers, ask).await {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tasks: Vec<_> = (0..run.partitions)
        .map(|partition| {
            let writer = Writer {
                run: run.clone(),
                peers: Rc::clone(&peers),
                partition,
                producer_id,
                producer_epoch,
            };
            tokio::task::spawn_local(writer.write(records, acked.clone()))
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn init_producer_id(peers: &Peers, ask: usize) -> Option<(i64, i16)> {
    let request = InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 60_000,
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    };
    let answer = peers
        .send(
            &host(ask),
            KAFKA_PORT,
            RequestBody::InitProducerId(request),
            4,
        )
        .await;
    match answer {
        Ok(ResponseBody::InitProducerId(r)) if r.error_code == 0 => {
            Some((r.producer_id, r.producer_epoch))
        }
        _ => None,
    }
}

/// The idempotent producer's writes to one partition.
struct Writer {
    run: Run,
    peers: Rc<Peers>,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
}

impl Writer {
    async fn write(self, records: usize, acked: Acked) -> turmoil::Result {
        let mut leader: Option<i32> = None;
        let mut ask = self.partition as usize;
        for n in 0..records {
            let sequence = i32::try_from(n)?;
            let value = format!("p{}-record-{n}", self.partition);
            let mut builder = RecordBatchBuilder::new(Compression::None).producer(
                self.producer_id,
                self.producer_epoch,
                sequence,
            );
            builder.append(0, None, Some(value.as_bytes()), &[])?;
            let batch = builder.build()?;
            let crc = RecordBatch::from_bytes(batch.clone())?.crc();
            loop {
                if self.run.over() {
                    return Ok(());
                }
                let Some(to) = leader else {
                    ask = (ask + 1) % self.run.nodes;
                    leader = find_leader(&self.peers, ask, self.partition).await;
                    if leader.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                };
                match self.send(to, batch.clone()).await {
                    Some((ErrorCode::None, offset)) => {
                        acked.0.borrow_mut().push(Ack {
                            partition: self.partition,
                            offset,
                            crc,
                            at: self.run.started.elapsed(),
                        });
                        break;
                    }
                    Some((
                        error @ (ErrorCode::OutOfOrderSequenceNumber
                        | ErrorCode::UnknownProducerId
                        | ErrorCode::InvalidProducerEpoch
                        | ErrorCode::DuplicateSequenceNumber
                        | ErrorCode::CorruptMessage
                        | ErrorCode::InvalidRecord),
                        _,
                    )) => {
                        self.run.violations.suspect(Suspect {
                            partition: self.partition,
                            node: to,
                            what: format!(
                                "partition {}: node {to} answered {error:?} to sequence {sequence} \
                                 (producer {} epoch {})",
                                self.partition, self.producer_id, self.producer_epoch
                            ),
                        });
                        leader = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        leader = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends one batch to node `to`: the partition's error and base offset, or `None`
    /// when no answer came.
    async fn send(&self, to: i32, batch: bytes::Bytes) -> Option<(ErrorCode, i64)> {
        let request = ProduceRequest {
            acks: -1,
            timeout_ms: 5_000,
            topic_data: vec![produce_request::TopicProduceData {
                name: TOPIC.into(),
                partition_data: vec![produce_request::PartitionProduceData {
                    index: self.partition,
                    records: Some(batch),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let to_host = usize::try_from(to).map(host).unwrap_or_default();
        let answer = self
            .peers
            .send(&to_host, KAFKA_PORT, RequestBody::Produce(request), 9)
            .await;
        match answer {
            Ok(ResponseBody::Produce(response)) => response
                .responses
                .first()
                .and_then(|t| t.partition_responses.first())
                .map(|p| (ErrorCode::from_wire(p.error_code), p.base_offset)),
            _ => None,
        }
    }
}

/// The leader of `partition` as node `ask` sees it (creating the topic if needed).
pub async fn find_leader(peers: &Peers, ask: usize, partition: i32) -> Option<i32> {
    let request = MetadataRequest {
        topics: Some(vec![metadata_request::MetadataRequestTopic {
            name: Some(TOPIC.into()),
            ..Default::default()
        }]),
        allow_auto_topic_creation: true,
        ..Default::default()
    };
    let answer = peers
        .send(&host(ask), KAFKA_PORT, RequestBody::Metadata(request), 12)
        .await;
    let Ok(ResponseBody::Metadata(response)) = answer else {
        return None;
    };
    let p = response
        .topics
        .first()?
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)?;
    (p.error_code == 0 && p.leader_id >= 0).then_some(p.leader_id)
}
