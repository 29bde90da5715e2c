//! The broker's metadata — topics, their IDs, partitions and configs — as an image rebuilt
//! from a log of metadata records.
//!
//! Changes are appended as records (`TopicRecord`, `PartitionRecord`, `ConfigRecord`,
//! `RemoveTopicRecord`, Kafka's KRaft layouts) to the partition log `__cluster_metadata-0`
//! in the data directory, made durable, then applied to the in-memory image. At start the
//! log is replayed. This is the shape the cluster work puts on a Raft quorum: the log
//! becomes replicated, the image stays the same.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use spool_log::{LogError, PartitionLog};
use spool_protocol::compression::Compression;
use spool_protocol::internal::{
    ConfigRecord, PartitionRecord, ProducerIdsRecord, RemoveTopicRecord, TopicRecord,
};
use spool_protocol::record_batch::{RecordBatchBuilder, RecordBatches};
use spool_protocol::{DecodeError, EncodeError, Message, Uuid};
use thiserror::Error;

/// The partition log that holds the metadata records.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// `ConfigRecord.resource_type` of a topic, as in Kafka.
pub const TOPIC_RESOURCE_TYPE: i8 = 2;
/// `ConfigRecord.resource_type` of a broker, as in Kafka: the resource name is a node ID,
/// or empty for the cluster-wide default.
pub const BROKER_RESOURCE_TYPE: i8 = 4;

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("metadata log: {0}")]
    Log(#[from] LogError),
    #[error("metadata record does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("metadata record does not encode: {0}")]
    Encode(#[from] EncodeError),
}

/// One metadata change.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataRecord {
    Topic(TopicRecord),
    Partition(PartitionRecord),
    Config(ConfigRecord),
    RemoveTopic(RemoveTopicRecord),
    /// A block of producer IDs was handed out; the next block starts at
    /// `next_producer_id`.
    ProducerIds(ProducerIdsRecord),
}

impl MetadataRecord {
    /// The stored form: record type (i16), record version (i16), then the record.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        let (record_type, body) = match self {
            MetadataRecord::Topic(r) => (TopicRecord::RECORD_TYPE, r.to_bytes(0)?),
            MetadataRecord::Partition(r) => (PartitionRecord::RECORD_TYPE, r.to_bytes(0)?),
            MetadataRecord::Config(r) => (ConfigRecord::RECORD_TYPE, r.to_bytes(0)?),
            MetadataRecord::RemoveTopic(r) => (RemoveTopicRecord::RECORD_TYPE, r.to_bytes(0)?),
            MetadataRecord::ProducerIds(r) => (ProducerIdsRecord::RECORD_TYPE, r.to_bytes(0)?),
        };
        buf.put_i16(record_type);
        buf.put_i16(0);
        buf.put_slice(&body);
        Ok(buf.freeze())
    }

    pub fn decode(mut bytes: Bytes) -> Result<MetadataRecord, DecodeError> {
        if bytes.len() < 4 {
            return Err(DecodeError::Truncated {
                needed: 4,
                remaining: bytes.len(),
            });
        }
        let record_type = bytes.get_i16();
        let version = bytes.get_i16();
        Ok(match record_type {
            TopicRecord::RECORD_TYPE => {
                MetadataRecord::Topic(TopicRecord::decode(&mut bytes, version)?)
            }
            PartitionRecord::RECORD_TYPE => {
                MetadataRecord::Partition(PartitionRecord::decode(&mut bytes, version)?)
            }
            ConfigRecord::RECORD_TYPE => {
                MetadataRecord::Config(ConfigRecord::decode(&mut bytes, version)?)
            }
            RemoveTopicRecord::RECORD_TYPE => {
                MetadataRecord::RemoveTopic(RemoveTopicRecord::decode(&mut bytes, version)?)
            }
            ProducerIdsRecord::RECORD_TYPE => {
                MetadataRecord::ProducerIds(ProducerIdsRecord::decode(&mut bytes, version)?)
            }
            other => return Err(DecodeError::UnknownApiKey(other)),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMeta {
    pub index: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<PartitionMeta>,
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    /// Kafka's internal topics (`__consumer_offsets`, `__transaction_state`, …).
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }
}

/// Every topic the broker knows, by name, and the dynamic broker settings.
#[derive(Debug, Clone, Default)]
pub struct MetadataImage {
    topics: BTreeMap<String, TopicMeta>,
    names_by_id: HashMap<Uuid, String>,
    /// Dynamic broker settings by resource name: a node ID, or "" for the cluster default.
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    next_producer_id: i64,
}

impl crate::group::consumer::TopicSource for MetadataImage {
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        self.topics
            .get(name)
            .map(|t| (t.id, t.partitions.len() as i32))
    }

    fn topic_name(&self, id: &Uuid) -> Option<String> {
        self.names_by_id.get(id).cloned()
    }

    fn topic_names(&self) -> Vec<String> {
        self.topics
            .values()
            .filter(|t| !t.is_internal())
            .map(|t| t.name.clone())
            .collect()
    }
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicMeta> {
        self.names_by_id
            .get(id)
            .and_then(|name| self.topics.get(name))
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicMeta> {
        self.topics.values()
    }

    /// The dynamic broker settings of `resource_name` (a node ID, or "" for the cluster
    /// default).
    pub fn broker_configs(&self, resource_name: &str) -> Option<&BTreeMap<String, String>> {
        self.broker_configs.get(resource_name)
    }

    /// The configs stored for a resource: a topic's overrides or a broker's dynamic
    /// settings; `None` for a topic that does not exist.
    pub fn resource_configs(
        &self,
        resource_type: i8,
        resource_name: &str,
    ) -> Option<BTreeMap<String, String>> {
        match resource_type {
            TOPIC_RESOURCE_TYPE => self.topic(resource_name).map(|t| t.configs.clone()),
            _ => Some(
                self.broker_configs(resource_name)
                    .cloned()
                    .unwrap_or_default(),
            ),
        }
    }

    /// The first producer ID no block has handed out yet.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    pub fn apply(&mut self, record: &MetadataRecord) {
        match record {
            MetadataRecord::Topic(r) => {
                self.names_by_id.insert(r.topic_id, r.name.clone());
                self.topics.insert(
                    r.name.clone(),
                    TopicMeta {
                        name: r.name.clone(),
                        id: r.topic_id,
                        partitions: Vec::new(),
                        configs: BTreeMap::new(),
                    },
                );
            }
            MetadataRecord::Partition(r) => {
                let Some(topic) = self
                    .names_by_id
                    .get(&r.topic_id)
                    .and_then(|n| self.topics.get_mut(n))
                else {
                    return;
                };
                let meta = PartitionMeta {
                    index: r.partition_id,
                    leader: r.leader,
                    leader_epoch: r.leader_epoch,
                    replicas: r.replicas.clone(),
                    isr: r.isr.clone(),
                };
                match topic
                    .partitions
                    .iter_mut()
                    .find(|p| p.index == r.partition_id)
                {
                    Some(existing) => *existing = meta,
                    None => {
                        topic.partitions.push(meta);
                        topic.partitions.sort_by_key(|p| p.index);
                    }
                }
            }
            MetadataRecord::Config(r) if r.resource_type == TOPIC_RESOURCE_TYPE => {
                let Some(topic) = self.topics.get_mut(&r.resource_name) else {
                    return;
                };
                match &r.value {
                    Some(value) => topic.configs.insert(r.name.clone(), value.clone()),
                    None => topic.configs.remove(&r.name),
                };
            }
            MetadataRecord::Config(r) if r.resource_type == BROKER_RESOURCE_TYPE => {
                let configs = self
                    .broker_configs
                    .entry(r.resource_name.clone())
                    .or_default();
                match &r.value {
                    Some(value) => configs.insert(r.name.clone(), value.clone()),
                    None => configs.remove(&r.name),
                };
            }
            MetadataRecord::Config(_) => {}
            MetadataRecord::RemoveTopic(r) => {
                if let Some(name) = self.names_by_id.remove(&r.topic_id) {
                    self.topics.remove(&name);
                }
            }
            MetadataRecord::ProducerIds(r) => {
                self.next_producer_id = self.next_producer_id.max(r.next_producer_id);
            }
        }
    }
}

/// The metadata log and the image it builds.
pub struct MetadataStore {
    log: PartitionLog,
    image: MetadataImage,
}

impl MetadataStore {
    /// Replays `log` into a fresh image.
    pub fn replay(log: PartitionLog) -> Result<MetadataStore, MetadataError> {
        let mut image = MetadataImage::default();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let read = log.read(offset, 1 << 20, i64::MAX)?;
            let Some(range) = read.range else { break };
            for batch in RecordBatches::new(range.to_bytes().map_err(LogError::from)?) {
                for record in batch?.records(64 << 20)? {
                    let record = record?;
                    if record.offset < offset {
                        continue;
                    }
                    if let Some(value) = record.value {
                        image.apply(&MetadataRecord::decode(value)?);
                    }
                }
            }
            offset = read.next_offset;
        }
        Ok(MetadataStore { log, image })
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Appends `records` as one batch, makes it durable, then applies it.
    pub fn commit(&mut self, records: &[MetadataRecord], now_ms: i64) -> Result<(), MetadataError> {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        for record in records {
            builder.append(now_ms, None, Some(&record.encode()?), &[])?;
        }
        self.log.append_as_leader(builder.build()?, 0, now_ms)?;
        self.log.flush()?;
        for record in records {
            self.image.apply(record);
        }
        Ok(())
    }

    pub fn close(self) -> Result<(), LogError> {
        self.log.close()
    }
}

/// The records that create a topic with `partitions` partitions on `node_id`.
pub fn create_topic_records(
    name: &str,
    partitions: i32,
    node_id: i32,
    configs: &BTreeMap<String, String>,
) -> Vec<MetadataRecord> {
    let topic_id = random_uuid();
    let mut records = vec![MetadataRecord::Topic(TopicRecord {
        name: name.to_string(),
        topic_id,
        ..TopicRecord::default()
    })];
    for (key, value) in configs {
        records.push(MetadataRecord::Config(ConfigRecord {
            resource_type: TOPIC_RESOURCE_TYPE,
            resource_name: name.to_string(),
            name: key.clone(),
            value: Some(value.clone()),
            ..ConfigRecord::default()
        }));
    }
    for partition_id in 0..partitions {
        records.push(MetadataRecord::Partition(PartitionRecord {
            partition_id,
            topic_id,
            replicas: vec![node_id],
            isr: vec![node_id],
            leader: node_id,
            leader_epoch: 0,
            partition_epoch: 0,
            ..PartitionRecord::default()
        }));
    }
    records
}

/// A random (version 4) UUID for topic IDs, from the standard library's per-process random
/// hasher keys; never the all-zero "no ID".
pub fn random_uuid() -> Uuid {
    let half = || {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x005f_001d);
        hasher.finish()
    };
    let mut bytes = ((u128::from(half()) << 64) | u128::from(half())).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_log::{LogConfig, MemStorage};
    use std::path::Path;
    use std::sync::Arc;

    #[test]
    fn records_round_trip_through_their_stored_form() {
        for record in create_topic_records(
            "orders",
            3,
            0,
            &BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
        ) {
            assert_eq!(
                MetadataRecord::decode(record.encode().unwrap()).unwrap(),
                record
            );
        }
    }

    #[test]
    fn a_committed_topic_survives_a_restart_and_removal_is_replayed_too() {
        let storage = MemStorage::new();
        let dir = Path::new("/data/__cluster_metadata-0");
        let open = || {
            MetadataStore::replay(
                PartitionLog::open(Arc::new(storage.clone()), dir, LogConfig::default(), 0)
                    .unwrap()
                    .0,
            )
            .unwrap()
        };
        let mut store = open();
        store
            .commit(&create_topic_records("orders", 3, 0, &BTreeMap::new()), 0)
            .unwrap();
        store
            .commit(&create_topic_records("clicks", 1, 0, &BTreeMap::new()), 0)
            .unwrap();
        let clicks_id = store.image().topic("clicks").unwrap().id;
        store
            .commit(
                &[MetadataRecord::RemoveTopic(RemoveTopicRecord {
                    topic_id: clicks_id,
                    ..Default::default()
                })],
                0,
            )
            .unwrap();
        drop(store);
        storage.crash();
        let store = open();
        let orders = store.image().topic("orders").unwrap();
        assert_eq!(
            orders
                .partitions
                .iter()
                .map(|p| p.index)
                .collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(store.image().topic("clicks").is_none());
        assert_eq!(
            store
                .image()
                .topic_by_id(&orders.id)
                .map(|t| t.name.as_str()),
            Some("orders")
        );
    }

    #[test]
    fn topic_ids_are_random_version_4_uuids() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        assert_ne!(a, Uuid::ZERO);
        assert_eq!(a.0[6] >> 4, 4);
    }
}
