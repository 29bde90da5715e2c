//! The simulation's client: produces one-record batches with acks=all to the leader of
//! [`TOPIC`] partition 0, finding it through Metadata and retrying on any error, and
//! notes where each acknowledged batch landed.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use spool_broker::peers::Peers;
use spool_protocol::compression::Compression;
use spool_protocol::messages::{
    MetadataRequest, ProduceRequest, RequestBody, ResponseBody, metadata_request, produce_request,
};
use spool_protocol::record_batch::{RecordBatch, RecordBatchBuilder};

use crate::net::{Breaks, SimNet};
use crate::{KAFKA_PORT, TOPIC, host};

/// An acknowledged batch: its offset and its checksum (which covers the record), and
/// when the acknowledgement came (simulated time since the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
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
    pub fn all(&self) -> Vec<Ack> {
        self.0.borrow().clone()
    }
    /// One past the largest acknowledged offset (0 before any).
    pub fn end(&self) -> i64 {
        self.0
            .borrow()
            .iter()
            .map(|a| a.offset + 1)
            .max()
            .unwrap_or(0)
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Produces `records` records, one at a time, until they are all acknowledged or
/// `give_up_after` (simulated time) has passed.
pub async fn produce(
    nodes: usize,
    records: usize,
    acked: Acked,
    breaks: Breaks,
    give_up_after: Duration,
) -> turmoil::Result {
    let peers = Peers::new("sim-producer".into(), TIMEOUT, Arc::new(SimNet(breaks)));
    let started = tokio::time::Instant::now();
    let mut leader: Option<i32> = None;
    let mut ask = 0usize;
    for n in 0..records {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        let value = format!("record-{n}");
        builder.append(0, None, Some(value.as_bytes()), &[])?;
        let batch = builder.build()?;
        let crc = RecordBatch::from_bytes(batch.clone())?.crc();
        loop {
            if started.elapsed() > give_up_after {
                return Ok(());
            }
            let Some(to) = leader else {
                ask = (ask + 1) % nodes;
                leader = find_leader(&peers, ask).await;
                if leader.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            };
            let request = ProduceRequest {
                acks: -1,
                timeout_ms: 5_000,
                topic_data: vec![produce_request::TopicProduceData {
                    name: TOPIC.into(),
                    partition_data: vec![produce_request::PartitionProduceData {
                        index: 0,
                        records: Some(batch.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let to_host = usize::try_from(to).map(host).unwrap_or_default();
            let answer = peers
                .send(&to_host, KAFKA_PORT, RequestBody::Produce(request), 9)
                .await;
            let outcome = match answer {
                Ok(ResponseBody::Produce(response)) => response
                    .responses
                    .first()
                    .and_then(|t| t.partition_responses.first())
                    .map(|p| (p.error_code, p.base_offset)),
                _ => None,
            };
            match outcome {
                Some((0, offset)) => {
                    acked.0.borrow_mut().push(Ack {
                        offset,
                        crc,
                        at: started.elapsed(),
                    });
                    break;
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

/// The leader of the partition as node `ask` sees it (creating the topic if needed).
async fn find_leader(peers: &Peers, ask: usize) -> Option<i32> {
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
    let partition = response.topics.first()?.partitions.first()?;
    (partition.error_code == 0 && partition.leader_id >= 0).then_some(partition.leader_id)
}
