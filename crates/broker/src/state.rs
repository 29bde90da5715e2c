//! What every request handler shares: settings, the metadata store, and the partition
//! logs this broker leads.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use spool_log::storage::LockGuard;
use spool_log::{
    DiskStorage, KeepAllBatches, LogConfig, LogError, LogManager, PartitionLog, SharedLog, Storage,
    TopicPartition,
};
use spool_protocol::ErrorCode;
use spool_protocol::internal::{
    ConfigRecord, PartitionRecord, ProducerIdsRecord, RemoveTopicRecord,
};
use spool_protocol::record_batch::TimestampType;
use thiserror::Error;

use crate::config::{AdvertisedListener, BrokerConfig};
use crate::fetch_session::FetchSessionCache;
use crate::flusher::Flusher;
use crate::group::runtime::offsets_logs;
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::metadata::{
    BROKER_RESOURCE_TYPE, METADATA_TOPIC, MetadataError, MetadataImage, MetadataRecord,
    MetadataStore, TOPIC_RESOURCE_TYPE, create_topic_records,
};
use crate::topic_configs;
use crate::txn::runtime::txn_logs;
use crate::txn::{TXN_TOPIC, TxnCoordinator};
use crate::wakeups::Wakeups;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("invalid topic config `{key}={value}`")]
    InvalidConfig { key: String, value: String },
}

pub struct BrokerState {
    pub config: BrokerConfig,
    /// What clients are told to connect to, per listener name.
    pub endpoints: Vec<AdvertisedListener>,
    storage: Arc<dyn Storage>,
    /// The metadata log; held while a change is recorded (an fsync).
    metadata: Mutex<MetadataStore>,
    /// The latest committed image, replaced after each change: readers never wait for
    /// the metadata log.
    image: RwLock<Arc<MetadataImage>>,
    partitions: RwLock<HashMap<TopicPartition, Arc<SharedLog>>>,
    /// Fetches waiting on `min_bytes`, woken per partition by appends.
    pub wakeups: Wakeups,
    /// Incremental fetch sessions (KIP-227).
    pub fetch_sessions: Mutex<FetchSessionCache>,
    /// Makes acks=all appends durable, all partitions together.
    pub flusher: Flusher,
    /// Consumer groups and their committed offsets.
    pub groups: GroupCoordinator,
    /// Transactional IDs and their transactions.
    pub txns: TxnCoordinator,
    /// The producer IDs this broker may still hand out: `next..end`.
    producer_ids: Mutex<std::ops::Range<i64>>,
    _lock: Box<dyn LockGuard>,
}

/// Producer IDs taken from the metadata log at a time (Kafka's block size).
pub const PRODUCER_ID_BLOCK: i64 = 1000;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The broker's clock; only the edge reads it.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Checks topic configs: known names and values the log accepts.
pub fn validate_topic_configs(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    if let Some(unknown) = configs
        .keys()
        .find(|k| crate::topic_configs::find(k).is_none())
    {
        return Err(format!("unknown topic config `{unknown}`"));
    }
    topic_log_config(defaults, configs).map_err(|e| e.to_string())
}

/// Checks a broker resource's dynamic settings: each must be one that can change while the
/// broker runs (the broker synonym of a topic config), with a value the log accepts.
pub fn validate_broker_configs(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<(), String> {
    for key in configs.keys() {
        if topic_configs::by_broker_synonym(key).is_none() {
            let known = BrokerConfig::default()
                .describe()
                .iter()
                .any(|(name, _)| name == key);
            return Err(if known {
                format!("cannot update `{key}` dynamically: it is read at start-up")
            } else {
                format!("unknown broker setting `{key}`")
            });
        }
    }
    topic_log_config(defaults, &as_topic_configs(configs))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Broker settings renamed to the topic configs they are the defaults of.
fn as_topic_configs(configs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    configs
        .iter()
        .filter_map(|(key, value)| {
            topic_configs::by_broker_synonym(key).map(|def| (def.name.to_string(), value.clone()))
        })
        .collect()
}

/// The `log.*` defaults in force: the static ones, overridden by the dynamic cluster-wide
/// settings, then by this broker's own dynamic settings.
fn effective_log_defaults(config: &BrokerConfig, image: &MetadataImage) -> LogConfig {
    let mut dynamic = BTreeMap::new();
    for name in [String::new(), config.node_id.to_string()] {
        if let Some(configs) = image.broker_configs(&name) {
            dynamic.extend(as_topic_configs(configs));
        }
    }
    topic_log_config(&config.log, &dynamic).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the stored dynamic broker settings");
        config.log.clone()
    })
}

/// A partition log's settings: the broker's `log.*` defaults overridden by the topic's
/// configs (Kafka's topic-level names).
pub fn topic_log_config(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, BrokerError> {
    let mut config = defaults.clone();
    for (key, value) in configs {
        let invalid = || BrokerError::InvalidConfig {
            key: key.clone(),
            value: value.clone(),
        };
        let number = || value.trim().parse::<i64>().map_err(|_| invalid());
        match key.as_str() {
            "retention.ms" => config.retention_ms = number()?,
            "retention.bytes" => config.retention_bytes = number()?,
            "segment.bytes" => {
                config.segment_bytes = u64::try_from(number()?).map_err(|_| invalid())?
            }
            "segment.ms" => config.segment_ms = number()?,
            "max.message.bytes" => {
                config.max_message_bytes = u64::try_from(number()?).map_err(|_| invalid())?
            }
            "message.timestamp.before.max.ms" => config.timestamp_before_max_ms = number()?,
            "message.timestamp.after.max.ms" => config.timestamp_after_max_ms = number()?,
            "flush.messages" => config.flush_messages = number()?,
            "flush.ms" => config.flush_ms = number()?,
            "min.compaction.lag.ms" => config.min_compaction_lag_ms = number()?,
            "max.compaction.lag.ms" => config.max_compaction_lag_ms = number()?,
            "delete.retention.ms" => config.delete_retention_ms = number()?,
            "cleanup.policy" => {
                let policies: Vec<&str> = value.split(',').map(str::trim).collect();
                if policies.iter().any(|p| *p != "delete" && *p != "compact") {
                    return Err(invalid());
                }
                config.cleanup_delete = policies.contains(&"delete");
                config.cleanup_compact = policies.contains(&"compact");
            }
            "message.timestamp.type" => {
                config.message_timestamp_type = match value.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid()),
                }
            }
            // Settings the broker accepts and keeps but does not act on yet.
            _ => {}
        }
    }
    Ok(config)
}

impl BrokerState {
    /// Opens the data directory (locked), replays the metadata log and opens every
    /// partition log of every known topic.
    pub fn open(
        config: BrokerConfig,
        endpoints: Vec<AdvertisedListener>,
    ) -> Result<Arc<BrokerState>, BrokerError> {
        let storage: Arc<dyn Storage> = Arc::new(DiskStorage);
        let now = now_ms();
        let defaults = config.log.clone();
        let (manager, _) = LogManager::open(
            Arc::clone(&storage),
            &config.data_dir,
            |_| defaults.clone(),
            now,
        )?;
        let (guard, mut logs) = manager.into_parts();
        let flusher = Flusher::start(storage.as_ref(), &config.data_dir).map_err(LogError::from)?;
        let metadata_tp = TopicPartition::new(METADATA_TOPIC, 0);
        let metadata_log = match logs.remove(&metadata_tp) {
            Some(log) => log,
            None => open_log(
                &storage,
                &config.data_dir,
                &metadata_tp,
                LogConfig::default(),
                now,
            )?,
        };
        let metadata = MetadataStore::replay(metadata_log)?;
        let defaults = effective_log_defaults(&config, metadata.image());
        let mut partitions = HashMap::new();
        for topic in metadata.image().topics() {
            let log_config = topic_log_config(&defaults, &topic.configs)?;
            for partition in &topic.partitions {
                let tp = TopicPartition::new(topic.name.clone(), partition.index);
                let mut log = match logs.remove(&tp) {
                    Some(log) => log,
                    None => open_log(&storage, &config.data_dir, &tp, log_config.clone(), now)?,
                };
                log.set_config(log_config.clone());
                // One replica: everything appended is replicated to the whole ISR.
                let end = log.log_end_offset();
                log.advance_high_watermark(end);
                partitions.insert(tp, Arc::new(SharedLog::new(log)));
            }
        }
        let fetch_sessions = FetchSessionCache::new(
            config.max_incremental_fetch_session_cache_slots,
            Box::new(|| {
                let bytes = crate::metadata::random_uuid().0;
                i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & i32::MAX
            }),
        );
        let groups = GroupCoordinator::new(config.group.clone());
        let txns = TxnCoordinator::new(config.txn.clone());
        let state = Arc::new(BrokerState {
            groups,
            txns,
            fetch_sessions: Mutex::new(fetch_sessions),
            producer_ids: Mutex::new(0..0),
            flusher,
            config,
            endpoints,
            storage,
            image: RwLock::new(Arc::new(metadata.image().clone())),
            metadata: Mutex::new(metadata),
            partitions: RwLock::new(partitions),
            wakeups: Wakeups::default(),
            _lock: guard,
        });
        // Groups and offsets are read back from `__consumer_offsets` on a loader thread.
        if state.with_image(|image| image.topic(OFFSETS_TOPIC).is_some()) {
            state.groups.attach(offsets_logs(&state), true);
        }
        // Transactions are read back at once: a transaction a crash left half-ended
        // resumes with the first tick.
        if state.with_image(|image| image.topic(TXN_TOPIC).is_some()) {
            state.txns.attach(txn_logs(&state));
        }
        Ok(state)
    }

    /// Where clients reach this broker through listener `name`; `None` when that listener
    /// is not advertised.
    pub fn endpoint(&self, name: &str) -> Option<&AdvertisedListener> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The `log.*` defaults in force, dynamic broker settings included.
    pub fn log_defaults(&self) -> LogConfig {
        self.with_image(|image| effective_log_defaults(&self.config, image))
    }

    /// Runs `f` on the current metadata image.
    pub fn with_image<R>(&self, f: impl FnOnce(&MetadataImage) -> R) -> R {
        let image = Arc::clone(
            &self
                .image
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        f(&image)
    }

    /// Records `records` durably in the metadata log (whose lock the caller holds), then
    /// publishes the new image to readers.
    fn commit(
        &self,
        metadata: &mut MetadataStore,
        records: &[MetadataRecord],
        now_ms: i64,
    ) -> Result<(), MetadataError> {
        metadata.commit(records, now_ms)?;
        *self
            .image
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(metadata.image().clone());
        Ok(())
    }

    /// The log of partition `index` of `topic`, for a client that believes the leader
    /// epoch is `current_leader_epoch`: UNKNOWN_TOPIC_OR_PARTITION when this broker has no
    /// such partition, else the leader-epoch check's error.
    pub fn leader_log(
        &self,
        topic: &str,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<Arc<SharedLog>, ErrorCode> {
        let log = self
            .partition(topic, index)
            .ok_or(ErrorCode::UnknownTopicOrPartition)?;
        self.check_leader_epoch(topic, index, current_leader_epoch)?;
        Ok(log)
    }

    /// Kafka's check of a client's `current_leader_epoch` (-1 skips it): older than the
    /// partition's epoch is FENCED_LEADER_EPOCH, newer is UNKNOWN_LEADER_EPOCH.
    fn check_leader_epoch(
        &self,
        topic: &str,
        partition: i32,
        requested: i32,
    ) -> Result<(), ErrorCode> {
        if requested < 0 {
            return Ok(());
        }
        let current = self.with_image(|image| {
            image.topic(topic).and_then(|t| {
                t.partitions
                    .iter()
                    .find(|p| p.index == partition)
                    .map(|p| p.leader_epoch)
            })
        });
        match current {
            Some(current) if requested < current => Err(ErrorCode::FencedLeaderEpoch),
            Some(current) if requested > current => Err(ErrorCode::UnknownLeaderEpoch),
            _ => Ok(()),
        }
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<SharedLog>> {
        let partitions = self
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        partitions.get(&TopicPartition::new(topic, index)).cloned()
    }

    /// A producer ID never handed out before, for InitProducerId. IDs come in blocks of
    /// [`PRODUCER_ID_BLOCK`] recorded in the metadata log, so none is reused after a
    /// restart. Blocking when a new block must be recorded (it fsyncs).
    pub fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        let mut ids = lock(&self.producer_ids);
        if ids.is_empty() {
            let mut metadata = lock(&self.metadata);
            let start = metadata.image().next_producer_id();
            let record = ProducerIdsRecord {
                broker_id: self.config.node_id,
                broker_epoch: -1,
                next_producer_id: start + PRODUCER_ID_BLOCK,
                ..Default::default()
            };
            self.commit(
                &mut metadata,
                &[MetadataRecord::ProducerIds(record)],
                now_ms(),
            )?;
            *ids = start..start + PRODUCER_ID_BLOCK;
        }
        let id = ids.start;
        ids.start += 1;
        Ok(id)
    }

    /// Creates a topic: records it durably in the metadata log, then creates its partition
    /// logs. Blocking (it fsyncs): call from a blocking context.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut metadata = lock(&self.metadata);
        if metadata.image().topic(name).is_some() {
            return Ok(());
        }
        let log_config = topic_log_config(
            &effective_log_defaults(&self.config, metadata.image()),
            configs,
        )?;
        self.commit(
            &mut metadata,
            &create_topic_records(name, partitions, self.config.node_id, configs),
            now,
        )?;
        drop(metadata);
        self.open_partitions(name, 0..partitions, &log_config, now)?;
        Ok(())
    }

    /// Creates (or opens) the logs of partitions `indexes` of topic `name` and serves them.
    fn open_partitions(
        &self,
        name: &str,
        indexes: std::ops::Range<i32>,
        log_config: &LogConfig,
        now: i64,
    ) -> Result<(), BrokerError> {
        for index in indexes {
            let tp = TopicPartition::new(name, index);
            let log = open_log(
                &self.storage,
                &self.config.data_dir,
                &tp,
                log_config.clone(),
                now,
            )?;
            self.partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(tp, Arc::new(SharedLog::new(log)));
        }
        Ok(())
    }

    /// Deletes a topic: records the removal durably, then drops its partition logs and
    /// their folders. Returns false when the topic does not exist. Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<bool, BrokerError> {
        let mut metadata = lock(&self.metadata);
        let Some(topic) = metadata.image().topic(name).cloned() else {
            return Ok(false);
        };
        let record = RemoveTopicRecord {
            topic_id: topic.id,
            ..RemoveTopicRecord::default()
        };
        self.commit(
            &mut metadata,
            &[MetadataRecord::RemoveTopic(record)],
            now_ms(),
        )?;
        drop(metadata);
        for partition in &topic.partitions {
            let tp = TopicPartition::new(name, partition.index);
            self.partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&tp);
            // Requests still holding the log keep their open files; the names go now.
            let dir = self.config.data_dir.join(tp.dir_name());
            for file in self.storage.list(&dir).map_err(LogError::from)? {
                self.storage
                    .remove_file(&dir.join(file))
                    .map_err(LogError::from)?;
            }
            self.storage.remove_dir(&dir).map_err(LogError::from)?;
        }
        self.storage
            .sync_dir(&self.config.data_dir)
            .map_err(LogError::from)?;
        Ok(true)
    }

    /// Grows a topic to `count` partitions (the caller checked it is more than it has).
    /// Blocking.
    pub fn add_partitions(&self, name: &str, count: i32) -> Result<(), BrokerError> {
        let mut metadata = lock(&self.metadata);
        let Some(topic) = metadata.image().topic(name).cloned() else {
            return Ok(());
        };
        let log_config = topic_log_config(
            &effective_log_defaults(&self.config, metadata.image()),
            &topic.configs,
        )?;
        let now = now_ms();
        let first_new = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
        let records: Vec<MetadataRecord> = (first_new..count)
            .map(|partition_id| {
                MetadataRecord::Partition(PartitionRecord {
                    partition_id,
                    topic_id: topic.id,
                    replicas: vec![self.config.node_id],
                    isr: vec![self.config.node_id],
                    leader: self.config.node_id,
                    ..PartitionRecord::default()
                })
            })
            .collect();
        self.commit(&mut metadata, &records, now)?;
        drop(metadata);
        self.open_partitions(name, first_new..count, &log_config, now)?;
        Ok(())
    }

    /// Replaces the configs of a topic or broker resource with `configs` (validated by the
    /// caller): records the changes durably, then applies them to the partition logs they
    /// govern. Blocking.
    pub fn set_configs(
        &self,
        resource_type: i8,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let mut metadata = lock(&self.metadata);
        let Some(current) = metadata.image().resource_configs(resource_type, name) else {
            return Ok(());
        };
        let mut changes = Vec::new();
        for (key, value) in configs {
            if current.get(key) != Some(value) {
                changes.push((key.clone(), Some(value.clone())));
            }
        }
        for key in current.keys().filter(|k| !configs.contains_key(*k)) {
            changes.push((key.clone(), None));
        }
        let records: Vec<MetadataRecord> = changes
            .into_iter()
            .map(|(key, value)| {
                MetadataRecord::Config(ConfigRecord {
                    resource_type,
                    resource_name: name.to_string(),
                    name: key,
                    value,
                    ..ConfigRecord::default()
                })
            })
            .collect();
        if !records.is_empty() {
            self.commit(&mut metadata, &records, now_ms())?;
        }
        let defaults = effective_log_defaults(&self.config, metadata.image());
        let governed: Vec<(String, Vec<i32>, BTreeMap<String, String>)> = metadata
            .image()
            .topics()
            .filter(|t| match resource_type {
                TOPIC_RESOURCE_TYPE => t.name == name,
                BROKER_RESOURCE_TYPE => name.is_empty() || name == self.config.node_id.to_string(),
                _ => false,
            })
            .map(|t| {
                let indexes = t.partitions.iter().map(|p| p.index).collect();
                (t.name.clone(), indexes, t.configs.clone())
            })
            .collect();
        drop(metadata);
        for (topic, indexes, topic_configs) in governed {
            let log_config = topic_log_config(&defaults, &topic_configs)?;
            for index in indexes {
                if let Some(log) = self.partition(&topic, index) {
                    log.set_config(log_config.clone());
                }
            }
        }
        Ok(())
    }

    /// One maintenance pass over every partition log: retention, removal of deleted
    /// segments, compaction when due (never past the high watermark) and `flush.ms` /
    /// `flush.messages`. Blocking. A log that fails is reported and skipped; the others go on.
    pub fn maintain(&self, now_ms: i64) {
        let logs: Vec<(TopicPartition, Arc<SharedLog>)> = {
            let partitions = self
                .partitions
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            partitions
                .iter()
                .map(|(tp, log)| (tp.clone(), Arc::clone(log)))
                .collect()
        };
        for (tp, log) in logs {
            let outcome = log.with_log(|log| -> Result<(), LogError> {
                log.apply_retention(now_ms)?;
                log.purge_deleted()?;
                let high_watermark = log.high_watermark();
                if log.needs_cleaning(now_ms, high_watermark) {
                    log.clean(now_ms, high_watermark, &KeepAllBatches)?;
                }
                if log.flush_due(now_ms) {
                    log.flush()?;
                }
                log.remove_expired_producers(now_ms);
                Ok(())
            });
            if let Err(e) = outcome {
                tracing::warn!(partition = %tp, error = %e, "log maintenance failed");
            }
        }
    }

    /// Closes every log cleanly so the next start skips recovery.
    pub fn close(self: Arc<Self>) -> Result<(), BrokerError> {
        // The coordinators hold the logs of their internal topics.
        self.groups.detach();
        self.txns.detach();
        let Some(state) = Arc::into_inner(self) else {
            return Ok(());
        };
        let partitions = state
            .partitions
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, shared) in partitions {
            if let Some(shared) = Arc::into_inner(shared) {
                shared.into_inner().close()?;
            }
        }
        state
            .metadata
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .close()?;
        Ok(())
    }
}

fn open_log(
    storage: &Arc<dyn Storage>,
    data_dir: &Path,
    tp: &TopicPartition,
    config: LogConfig,
    now: i64,
) -> Result<PartitionLog, BrokerError> {
    let (log, _) = PartitionLog::open(
        Arc::clone(storage),
        &data_dir.join(tp.dir_name()),
        config,
        now,
    )?;
    // The partition's folder itself must survive a crash.
    storage.sync_dir(data_dir).map_err(LogError::from)?;
    Ok(log)
}

/// A broker with default settings on a fresh data directory named after `name`; the
/// caller removes the directory.
#[cfg(test)]
pub(crate) fn open_in_temp_dir(name: &str) -> (Arc<BrokerState>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = BrokerConfig {
        data_dir: dir.clone(),
        ..BrokerConfig::default()
    };
    let state = BrokerState::open(config, Vec::new()).expect("the broker opens");
    (state, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_committed_metadata_without_waiting_for_the_metadata_log() {
        let (state, dir) = open_in_temp_dir("state");
        state.create_topic("orders", 2, &BTreeMap::new()).unwrap();
        // A change being recorded holds the metadata log (through an fsync); reading the
        // image meanwhile must not wait for it.
        let recording = lock(&state.metadata);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Arc::clone(&state);
        std::thread::spawn(move || {
            let partitions =
                reader.with_image(|image| image.topic("orders").map(|t| t.partitions.len()));
            let _ = tx.send(partitions);
        });
        let seen = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(recording);
        assert_eq!(seen, Ok(Some(2)));
        drop(state);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
