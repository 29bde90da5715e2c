//! The cluster's metadata — topics, their IDs, partitions and configs, the registered
//! brokers — as an image rebuilt from a log of metadata records, and the [`controller`]
//! that decides which records to write.
//!
//! Changes are appended as records (`TopicRecord`, `PartitionRecord`, `PartitionChangeRecord`,
//! `ConfigRecord`, `RemoveTopicRecord`, the broker registration records; Kafka's KRaft
//! layouts) to the partition log `__cluster_metadata-0`
//! in the data directory, made durable, then applied to the in-memory image. At start the
//! log is replayed. This is the shape the cluster work puts on a Raft quorum: the log
//! becomes replicated, the image stays the same.

use std::collections::{BTreeMap, HashMap};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use spool_log::{LogError, PartitionLog};
use spool_protocol::compression::Compression;
use spool_protocol::internal::client_quota_record::EntityData;
use spool_protocol::internal::register_broker_record::BrokerEndpoint;
use spool_protocol::internal::{
    AccessControlEntryRecord, BrokerRegistrationChangeRecord, ClientQuotaRecord, ConfigRecord,
    PartitionChangeRecord, PartitionRecord, ProducerIdsRecord, RegisterBrokerRecord,
    RemoveAccessControlEntryRecord, RemoveTopicRecord, RemoveUserScramCredentialRecord,
    TopicRecord, UnregisterBrokerRecord, UserScramCredentialRecord,
};
use spool_protocol::record_batch::RecordBatchBuilder;
use spool_protocol::{DecodeError, EncodeError, Message, Uuid};
use thiserror::Error;

pub mod controller;
pub mod net;
pub mod quorum;
pub mod random;
pub use random::random_uuid;
mod reassignment;
pub mod remote;
pub mod service;

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
    /// A partition's leader, ISR or replicas changed.
    PartitionChange(PartitionChangeRecord),
    /// A broker registered (again: a new incarnation replaces the old one).
    RegisterBroker(RegisterBrokerRecord),
    /// A broker was fenced or unfenced, or entered controlled shutdown.
    BrokerRegistrationChange(BrokerRegistrationChangeRecord),
    UnregisterBroker(UnregisterBrokerRecord),
    /// A user's SCRAM credential for one mechanism was set (salt, iterations, stored and
    /// server keys: never the password).
    UserScramCredential(UserScramCredentialRecord),
    RemoveUserScramCredential(RemoveUserScramCredentialRecord),
    /// An ACL binding was added, under an ID of its own.
    AccessControlEntry(AccessControlEntryRecord),
    RemoveAccessControlEntry(RemoveAccessControlEntryRecord),
    /// A client quota of an entity (user, client ID, both, or an IP) was set or, with
    /// `remove`, removed.
    ClientQuota(ClientQuotaRecord),
}

/// `PartitionChangeRecord.leader` when the leader does not change.
pub const NO_LEADER_CHANGE: i32 = -2;
/// A partition's leader when it has none.
pub const NO_LEADER: i32 = -1;

impl MetadataRecord {
    /// The stored form: record type (i16), record version (i16), then the record. Each
    /// type is written at the version that carries all of its fields here.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        let (record_type, version, body) = match self {
            MetadataRecord::Topic(r) => (TopicRecord::RECORD_TYPE, 0, r.to_bytes(0)?),
            MetadataRecord::Partition(r) => (PartitionRecord::RECORD_TYPE, 0, r.to_bytes(0)?),
            MetadataRecord::Config(r) => (ConfigRecord::RECORD_TYPE, 0, r.to_bytes(0)?),
            MetadataRecord::RemoveTopic(r) => (RemoveTopicRecord::RECORD_TYPE, 0, r.to_bytes(0)?),
            MetadataRecord::ProducerIds(r) => (ProducerIdsRecord::RECORD_TYPE, 0, r.to_bytes(0)?),
            MetadataRecord::PartitionChange(r) => {
                (PartitionChangeRecord::RECORD_TYPE, 0, r.to_bytes(0)?)
            }
            MetadataRecord::RegisterBroker(r) => {
                (RegisterBrokerRecord::RECORD_TYPE, 3, r.to_bytes(3)?)
            }
            MetadataRecord::BrokerRegistrationChange(r) => (
                BrokerRegistrationChangeRecord::RECORD_TYPE,
                1,
                r.to_bytes(1)?,
            ),
            MetadataRecord::UnregisterBroker(r) => {
                (UnregisterBrokerRecord::RECORD_TYPE, 0, r.to_bytes(0)?)
            }
            MetadataRecord::UserScramCredential(r) => {
                (UserScramCredentialRecord::RECORD_TYPE, 0, r.to_bytes(0)?)
            }
            MetadataRecord::RemoveUserScramCredential(r) => (
                RemoveUserScramCredentialRecord::RECORD_TYPE,
                0,
                r.to_bytes(0)?,
            ),
            MetadataRecord::AccessControlEntry(r) => {
                (AccessControlEntryRecord::RECORD_TYPE, 0, r.to_bytes(0)?)
            }
            MetadataRecord::RemoveAccessControlEntry(r) => (
                RemoveAccessControlEntryRecord::RECORD_TYPE,
                0,
                r.to_bytes(0)?,
            ),
            MetadataRecord::ClientQuota(r) => (ClientQuotaRecord::RECORD_TYPE, 0, r.to_bytes(0)?),
        };
        buf.put_i16(record_type);
        buf.put_i16(version);
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
            PartitionChangeRecord::RECORD_TYPE => {
                MetadataRecord::PartitionChange(PartitionChangeRecord::decode(&mut bytes, version)?)
            }
            RegisterBrokerRecord::RECORD_TYPE => {
                MetadataRecord::RegisterBroker(RegisterBrokerRecord::decode(&mut bytes, version)?)
            }
            BrokerRegistrationChangeRecord::RECORD_TYPE => {
                MetadataRecord::BrokerRegistrationChange(BrokerRegistrationChangeRecord::decode(
                    &mut bytes, version,
                )?)
            }
            UnregisterBrokerRecord::RECORD_TYPE => MetadataRecord::UnregisterBroker(
                UnregisterBrokerRecord::decode(&mut bytes, version)?,
            ),
            UserScramCredentialRecord::RECORD_TYPE => MetadataRecord::UserScramCredential(
                UserScramCredentialRecord::decode(&mut bytes, version)?,
            ),
            RemoveUserScramCredentialRecord::RECORD_TYPE => {
                MetadataRecord::RemoveUserScramCredential(RemoveUserScramCredentialRecord::decode(
                    &mut bytes, version,
                )?)
            }
            AccessControlEntryRecord::RECORD_TYPE => MetadataRecord::AccessControlEntry(
                AccessControlEntryRecord::decode(&mut bytes, version)?,
            ),
            RemoveAccessControlEntryRecord::RECORD_TYPE => {
                MetadataRecord::RemoveAccessControlEntry(RemoveAccessControlEntryRecord::decode(
                    &mut bytes, version,
                )?)
            }
            ClientQuotaRecord::RECORD_TYPE => {
                MetadataRecord::ClientQuota(ClientQuotaRecord::decode(&mut bytes, version)?)
            }
            other => return Err(DecodeError::UnknownApiKey(other)),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMeta {
    pub index: i32,
    /// A node ID, or [`NO_LEADER`].
    pub leader: i32,
    /// Bumped at every change of leader.
    pub leader_epoch: i32,
    /// Bumped at every change.
    pub partition_epoch: i32,
    /// During a reassignment: every current and target replica, the targets first.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// During a reassignment: the target replicas not yet in the ISR at its start.
    pub adding_replicas: Vec<i32>,
    /// During a reassignment: the replicas that go once it completes.
    pub removing_replicas: Vec<i32>,
}

impl PartitionMeta {
    /// Whether a reassignment is under way.
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// The replicas once the reassignment (if any) completes.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }

    /// The replicas before the reassignment (if any) began.
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.adding_replicas.contains(r))
            .collect()
    }

    /// Applies a change: what the record sets, with the epochs bumped.
    fn apply(&mut self, change: &PartitionChangeRecord) {
        if let Some(isr) = &change.isr {
            self.isr = isr.clone();
        }
        if let Some(replicas) = &change.replicas {
            self.replicas = replicas.clone();
        }
        if let Some(adding) = &change.adding_replicas {
            self.adding_replicas = adding.clone();
        }
        if let Some(removing) = &change.removing_replicas {
            self.removing_replicas = removing.clone();
        }
        if change.leader != NO_LEADER_CHANGE {
            self.leader = change.leader;
            self.leader_epoch += 1;
        }
        self.partition_epoch += 1;
    }
}

/// A registered broker, as the controller knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerMeta {
    pub id: i32,
    /// Given by the controller at each registration; a request carrying an older one is
    /// from a previous incarnation.
    pub epoch: i64,
    pub incarnation_id: Uuid,
    pub endpoints: Vec<BrokerEndpoint>,
    pub rack: Option<String>,
    /// A fenced broker leads nothing and is not in any ISR.
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
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
    brokers: BTreeMap<i32, BrokerMeta>,
    /// The highest broker epoch any registration has had.
    last_broker_epoch: i64,
    /// SCRAM credentials by user, then mechanism (1 SCRAM-SHA-256, 2 SCRAM-SHA-512).
    scram_credentials: BTreeMap<String, BTreeMap<i8, UserScramCredentialRecord>>,
    /// ACL bindings by ID.
    acls: BTreeMap<Uuid, AccessControlEntryRecord>,
    /// Client quotas (`producer_byte_rate`, …) by entity.
    client_quotas: BTreeMap<QuotaEntity, BTreeMap<String, f64>>,
}

/// Whom a client quota applies to: (entity type, name) pairs in type order, `user`,
/// `client-id` or both, or `ip`; a `None` name is the type's default entity.
pub type QuotaEntity = Vec<(String, Option<String>)>;

/// The entity a [`ClientQuotaRecord`] names, in [`QuotaEntity`]'s order.
pub fn quota_entity(record: &ClientQuotaRecord) -> QuotaEntity {
    let mut entity: QuotaEntity = record
        .entity
        .iter()
        .map(|e| (e.entity_type.clone(), e.entity_name.clone()))
        .collect();
    entity.sort();
    entity
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

    pub fn broker(&self, id: i32) -> Option<&BrokerMeta> {
        self.brokers.get(&id)
    }

    /// The registered brokers, by ID.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerMeta> {
        self.brokers.values()
    }

    /// The epoch the next broker registration gets: above every epoch given before, so a
    /// request from an earlier incarnation is always recognised as stale.
    pub fn next_broker_epoch(&self) -> i64 {
        self.last_broker_epoch + 1
    }

    /// A user's SCRAM credential for a mechanism.
    pub fn scram_credential(
        &self,
        user: &str,
        mechanism: i8,
    ) -> Option<&UserScramCredentialRecord> {
        self.scram_user(user)?.get(&mechanism)
    }

    /// A user's SCRAM credentials by mechanism.
    pub fn scram_user(&self, user: &str) -> Option<&BTreeMap<i8, UserScramCredentialRecord>> {
        self.scram_credentials.get(user)
    }

    /// Every user with a SCRAM credential, with their credentials by mechanism.
    pub fn scram_users(
        &self,
    ) -> impl Iterator<Item = (&String, &BTreeMap<i8, UserScramCredentialRecord>)> {
        self.scram_credentials.iter()
    }

    /// Every ACL binding.
    pub fn acls(&self) -> impl Iterator<Item = &AccessControlEntryRecord> {
        self.acls.values()
    }

    /// The quotas set for exactly this entity.
    pub fn client_quota(&self, entity: &QuotaEntity) -> Option<&BTreeMap<String, f64>> {
        self.client_quotas.get(entity)
    }

    /// Every entity with quotas, and its quotas by key.
    pub fn client_quotas(&self) -> &BTreeMap<QuotaEntity, BTreeMap<String, f64>> {
        &self.client_quotas
    }

    /// Records that rebuild this image from nothing (a snapshot's contents).
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for (entity, quotas) in &self.client_quotas {
            for (key, value) in quotas {
                records.push(MetadataRecord::ClientQuota(ClientQuotaRecord {
                    entity: entity
                        .iter()
                        .map(|(entity_type, entity_name)| EntityData {
                            entity_type: entity_type.clone(),
                            entity_name: entity_name.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    key: key.clone(),
                    value: *value,
                    remove: false,
                    ..Default::default()
                }));
            }
        }
        records.extend(
            self.acls
                .values()
                .cloned()
                .map(MetadataRecord::AccessControlEntry),
        );
        for credentials in self.scram_credentials.values() {
            records.extend(
                credentials
                    .values()
                    .cloned()
                    .map(MetadataRecord::UserScramCredential),
            );
        }
        if self.next_producer_id > 0 {
            records.push(MetadataRecord::ProducerIds(ProducerIdsRecord {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id: self.next_producer_id,
                ..Default::default()
            }));
        }
        for broker in self.brokers.values() {
            records.push(MetadataRecord::RegisterBroker(RegisterBrokerRecord {
                broker_id: broker.id,
                incarnation_id: broker.incarnation_id,
                broker_epoch: broker.epoch,
                end_points: broker.endpoints.clone(),
                rack: broker.rack.clone(),
                fenced: broker.fenced,
                in_controlled_shutdown: broker.in_controlled_shutdown,
                ..Default::default()
            }));
        }
        for (resource_name, configs) in &self.broker_configs {
            for (name, value) in configs {
                records.push(MetadataRecord::Config(ConfigRecord {
                    resource_type: BROKER_RESOURCE_TYPE,
                    resource_name: resource_name.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..Default::default()
                }));
            }
        }
        for topic in self.topics.values() {
            records.push(MetadataRecord::Topic(TopicRecord {
                name: topic.name.clone(),
                topic_id: topic.id,
                ..Default::default()
            }));
            for (name, value) in &topic.configs {
                records.push(MetadataRecord::Config(ConfigRecord {
                    resource_type: TOPIC_RESOURCE_TYPE,
                    resource_name: topic.name.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..Default::default()
                }));
            }
            for p in &topic.partitions {
                records.push(MetadataRecord::Partition(PartitionRecord {
                    partition_id: p.index,
                    topic_id: topic.id,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    adding_replicas: p.adding_replicas.clone(),
                    removing_replicas: p.removing_replicas.clone(),
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    ..Default::default()
                }));
            }
        }
        records
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
                    partition_epoch: r.partition_epoch,
                    replicas: r.replicas.clone(),
                    isr: r.isr.clone(),
                    adding_replicas: r.adding_replicas.clone(),
                    removing_replicas: r.removing_replicas.clone(),
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
            MetadataRecord::PartitionChange(r) => {
                let partition = self
                    .names_by_id
                    .get(&r.topic_id)
                    .and_then(|n| self.topics.get_mut(n))
                    .and_then(|t| t.partitions.iter_mut().find(|p| p.index == r.partition_id));
                if let Some(partition) = partition {
                    partition.apply(r);
                }
            }
            MetadataRecord::RegisterBroker(r) => {
                self.last_broker_epoch = self.last_broker_epoch.max(r.broker_epoch);
                self.brokers.insert(
                    r.broker_id,
                    BrokerMeta {
                        id: r.broker_id,
                        epoch: r.broker_epoch,
                        incarnation_id: r.incarnation_id,
                        endpoints: r.end_points.clone(),
                        rack: r.rack.clone(),
                        fenced: r.fenced,
                        in_controlled_shutdown: r.in_controlled_shutdown,
                    },
                );
            }
            MetadataRecord::BrokerRegistrationChange(r) => {
                // A change for an older registration is stale.
                let Some(broker) = self
                    .brokers
                    .get_mut(&r.broker_id)
                    .filter(|b| b.epoch == r.broker_epoch)
                else {
                    return;
                };
                match r.fenced {
                    1 => broker.fenced = true,
                    -1 => broker.fenced = false,
                    _ => {}
                }
                if r.in_controlled_shutdown == 1 {
                    broker.in_controlled_shutdown = true;
                }
            }
            MetadataRecord::UserScramCredential(r) => {
                self.scram_credentials
                    .entry(r.name.clone())
                    .or_default()
                    .insert(r.mechanism, r.clone());
            }
            MetadataRecord::RemoveUserScramCredential(r) => {
                if let Some(credentials) = self.scram_credentials.get_mut(&r.name) {
                    credentials.remove(&r.mechanism);
                    if credentials.is_empty() {
                        self.scram_credentials.remove(&r.name);
                    }
                }
            }
            MetadataRecord::AccessControlEntry(r) => {
                self.acls.insert(r.id, r.clone());
            }
            MetadataRecord::RemoveAccessControlEntry(r) => {
                self.acls.remove(&r.id);
            }
            MetadataRecord::ClientQuota(r) => {
                let entity = quota_entity(r);
                if r.remove {
                    if let Some(quotas) = self.client_quotas.get_mut(&entity) {
                        quotas.remove(&r.key);
                        if quotas.is_empty() {
                            self.client_quotas.remove(&entity);
                        }
                    }
                } else {
                    self.client_quotas
                        .entry(entity)
                        .or_default()
                        .insert(r.key.clone(), r.value);
                }
            }
            MetadataRecord::UnregisterBroker(r) => {
                if self
                    .brokers
                    .get(&r.broker_id)
                    .is_some_and(|b| b.epoch == r.broker_epoch)
                {
                    self.brokers.remove(&r.broker_id);
                }
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
        let start = log.log_start_offset();
        log.for_each_batch(start, log.log_end_offset(), |batch| {
            for record in batch.records(64 << 20)? {
                let record = record?;
                if record.offset < start {
                    continue;
                }
                if let Some(value) = record.value {
                    image.apply(&MetadataRecord::decode(value)?);
                }
            }
            Ok::<(), MetadataError>(())
        })?;
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

    fn register(id: i32, epoch: i64) -> MetadataRecord {
        MetadataRecord::RegisterBroker(RegisterBrokerRecord {
            broker_id: id,
            incarnation_id: Uuid::from_u128(id as u128 + 100),
            broker_epoch: epoch,
            end_points: vec![BrokerEndpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092 + id as u16,
                ..Default::default()
            }],
            rack: Some(format!("rack-{id}")),
            fenced: true,
            in_controlled_shutdown: false,
            ..Default::default()
        })
    }

    fn fencing(id: i32, epoch: i64, fenced: i8) -> MetadataRecord {
        MetadataRecord::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
            broker_id: id,
            broker_epoch: epoch,
            fenced,
            ..Default::default()
        })
    }

    #[test]
    fn broker_and_partition_change_records_round_trip() {
        let topic_id = Uuid::from_u128(7);
        for record in [
            register(1, 10),
            fencing(1, 10, -1),
            MetadataRecord::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
                broker_id: 2,
                broker_epoch: 11,
                in_controlled_shutdown: 1,
                ..Default::default()
            }),
            MetadataRecord::UnregisterBroker(UnregisterBrokerRecord {
                broker_id: 3,
                broker_epoch: 12,
                ..Default::default()
            }),
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                partition_id: 2,
                topic_id,
                isr: Some(vec![1, 2]),
                leader: 2,
                ..Default::default()
            }),
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                partition_id: 0,
                topic_id,
                ..Default::default()
            }),
        ] {
            assert_eq!(
                MetadataRecord::decode(record.encode().unwrap()).unwrap(),
                record
            );
        }
    }

    #[test]
    fn brokers_register_get_fenced_and_partitions_change_leader_and_isr() {
        let mut image = MetadataImage::default();
        for record in create_topic_records("orders", 1, 1, &BTreeMap::new()) {
            image.apply(&record);
        }
        image.apply(&register(1, 10));
        image.apply(&register(2, 11));
        assert!(image.broker(1).unwrap().fenced, "brokers register fenced");
        image.apply(&fencing(1, 10, -1));
        image.apply(&fencing(2, 11, -1));
        assert!(!image.broker(1).unwrap().fenced);
        // A change for an older registration of broker 1 is ignored.
        image.apply(&register(1, 20));
        image.apply(&fencing(1, 10, -1));
        assert!(image.broker(1).unwrap().fenced);
        assert_eq!(image.broker(1).unwrap().rack.as_deref(), Some("rack-1"));
        image.apply(&MetadataRecord::UnregisterBroker(UnregisterBrokerRecord {
            broker_id: 2,
            broker_epoch: 10,
            ..Default::default()
        }));
        assert!(image.broker(2).is_some(), "wrong epoch: still registered");

        let topic_id = image.topic("orders").unwrap().id;
        let change = |isr: Option<Vec<i32>>, leader: i32| {
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                partition_id: 0,
                topic_id,
                isr,
                leader,
                ..Default::default()
            })
        };
        // The ISR grows: the leader and its epoch stay, the partition epoch moves.
        image.apply(&change(Some(vec![1, 2]), NO_LEADER_CHANGE));
        let p = &image.topic("orders").unwrap().partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone()),
            (1, 0, 1, vec![1, 2])
        );
        // A new leader: both epochs move.
        image.apply(&change(Some(vec![2]), 2));
        let p = &image.topic("orders").unwrap().partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone()),
            (2, 1, 2, vec![2])
        );
        // No leader left.
        image.apply(&change(None, NO_LEADER));
        let p = &image.topic("orders").unwrap().partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (NO_LEADER, 2, vec![2])
        );
    }

    #[test]
    fn scram_credentials_are_set_replaced_removed_and_kept_in_snapshots() {
        let credential = |name: &str, mechanism: i8, iterations: i32| {
            MetadataRecord::UserScramCredential(UserScramCredentialRecord {
                name: name.into(),
                mechanism,
                salt: vec![1; 16].into(),
                stored_key: vec![2; 32].into(),
                server_key: vec![3; 32].into(),
                iterations,
                ..Default::default()
            })
        };
        let removal = |name: &str, mechanism: i8| {
            MetadataRecord::RemoveUserScramCredential(RemoveUserScramCredentialRecord {
                name: name.into(),
                mechanism,
                ..Default::default()
            })
        };
        for record in [credential("alice", 2, 8192), removal("alice", 2)] {
            assert_eq!(
                MetadataRecord::decode(record.encode().unwrap()).unwrap(),
                record
            );
        }
        let mut image = MetadataImage::default();
        image.apply(&credential("alice", 1, 4096));
        image.apply(&credential("alice", 2, 4096));
        image.apply(&credential("alice", 2, 8192));
        image.apply(&credential("bob", 1, 4096));
        image.apply(&removal("bob", 1));
        image.apply(&removal("carol", 1));
        assert_eq!(image.scram_credential("alice", 2).unwrap().iterations, 8192);
        assert!(image.scram_user("bob").is_none());
        let mut rebuilt = MetadataImage::default();
        for record in image.to_records() {
            rebuilt.apply(&record);
        }
        let users = |image: &MetadataImage| {
            image
                .scram_users()
                .map(|(user, credentials)| (user.clone(), credentials.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(users(&rebuilt), users(&image));
        assert_eq!(users(&image)[0].1.len(), 2);
    }

    #[test]
    fn acl_bindings_are_added_removed_and_kept_in_snapshots() {
        let binding = |id: u128, name: &str| {
            MetadataRecord::AccessControlEntry(AccessControlEntryRecord {
                id: Uuid::from_u128(id),
                resource_type: 2,
                resource_name: name.into(),
                pattern_type: 3,
                principal: "User:alice".into(),
                host: "*".into(),
                operation: 4,
                permission_type: 3,
                ..Default::default()
            })
        };
        let removal = |id: u128| {
            MetadataRecord::RemoveAccessControlEntry(RemoveAccessControlEntryRecord {
                id: Uuid::from_u128(id),
                ..Default::default()
            })
        };
        for record in [binding(1, "orders"), removal(1)] {
            assert_eq!(
                MetadataRecord::decode(record.encode().unwrap()).unwrap(),
                record
            );
        }
        let mut image = MetadataImage::default();
        for record in [
            binding(1, "orders"),
            binding(2, "payments"),
            removal(1),
            removal(3),
        ] {
            image.apply(&record);
        }
        let names = |image: &MetadataImage| {
            image
                .acls()
                .map(|acl| acl.resource_name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&image), ["payments"]);
        let mut rebuilt = MetadataImage::default();
        for record in image.to_records() {
            rebuilt.apply(&record);
        }
        assert_eq!(names(&rebuilt), ["payments"]);
    }

    #[test]
    fn client_quotas_are_set_removed_and_kept_in_snapshots() {
        let quota = |entity: &[(&str, Option<&str>)], key: &str, value: f64, remove: bool| {
            MetadataRecord::ClientQuota(ClientQuotaRecord {
                entity: entity
                    .iter()
                    .map(|(t, n)| EntityData {
                        entity_type: t.to_string(),
                        entity_name: n.map(str::to_string),
                        ..Default::default()
                    })
                    .collect(),
                key: key.into(),
                value,
                remove,
                ..Default::default()
            })
        };
        let alice_app = [("user", Some("alice")), ("client-id", Some("app"))];
        let records = [
            quota(&alice_app, "producer_byte_rate", 1024.0, false),
            quota(&alice_app, "consumer_byte_rate", 2048.0, false),
            quota(&[("user", None)], "producer_byte_rate", 512.0, false),
            quota(&alice_app, "producer_byte_rate", 0.0, true),
            quota(&[("user", None)], "producer_byte_rate", 0.0, true),
        ];
        let mut image = MetadataImage::default();
        for record in &records {
            assert_eq!(
                &MetadataRecord::decode(record.encode().unwrap()).unwrap(),
                record
            );
            image.apply(record);
        }
        let expected: QuotaEntity = vec![
            ("client-id".into(), Some("app".into())),
            ("user".into(), Some("alice".into())),
        ];
        let listed = |image: &MetadataImage| {
            image
                .client_quotas()
                .iter()
                .map(|(entity, quotas)| (entity.clone(), quotas.clone()))
                .collect::<Vec<_>>()
        };
        let only = vec![(
            expected,
            BTreeMap::from([("consumer_byte_rate".to_string(), 2048.0)]),
        )];
        assert_eq!(listed(&image), only);
        let mut rebuilt = MetadataImage::default();
        for record in image.to_records() {
            rebuilt.apply(&record);
        }
        assert_eq!(listed(&rebuilt), only);
    }

    #[test]
    fn topic_ids_are_random_version_4_uuids() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        assert_ne!(a, Uuid::ZERO);
        assert_eq!(a.0[6] >> 4, 4);
    }
}
