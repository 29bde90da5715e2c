//! What every request handler shares: settings, the metadata store, and the partition
//! logs this broker leads.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spool_log::storage::{LockGuard, remove_dir_with_files};
use spool_log::{
    DiskStorage, KeepAllBatches, LogConfig, LogError, LogManager, PartitionLog, SharedLog, Storage,
    TopicPartition,
};
use spool_metadata::controller::PRODUCER_ID_BLOCK;
use spool_metadata::net::{Listener, Network, Tcp};
use spool_metadata::quorum::QuorumError;
use spool_metadata::service::{AdminChange, TopicRequest};
use spool_protocol::ErrorCode;
use spool_protocol::messages::{RequestBody, ResponseBody};
use spool_protocol::record_batch::TimestampType;
use thiserror::Error;
use tokio::sync::{Notify, watch};

use crate::config::{AdvertisedListener, BrokerConfig};
use crate::coordinator_log::Written;
use crate::fetch_session::FetchSessionCache;
use crate::flusher::Flusher;
use crate::group::GroupCoordinator;
use crate::group::runtime::offsets_logs;
use crate::limits::ConnectionLimits;
use crate::metadata::{
    BrokerMeta, METADATA_TOPIC, MetadataError, MetadataImage, NO_LEADER, TopicMeta,
};
use crate::metrics::Metrics;
use crate::node::{self, Node};
use crate::peers::{PeerError, Peers};
use crate::quota::Quotas;
use crate::replica::Replica;
use crate::throttle::{self, Quota};
use crate::topic_configs;
use crate::txn::TxnCoordinator;
use crate::txn::runtime::txn_logs;
use crate::wakeups::Wakeups;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("invalid topic config `{key}={value}`")]
    InvalidConfig { key: String, value: String },
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// The controller refused a change, with Kafka's error.
    #[error("{0}: {1}")]
    Refused(ErrorCode, String),
    #[error("cluster: {0}")]
    Cluster(String),
    /// The inter-broker listener's security cannot be spoken as configured.
    #[error("{0}")]
    Security(String),
}

impl BrokerError {
    /// The error code and message for a client: the controller's refusal as it is, any
    /// other failure as UNKNOWN_SERVER_ERROR saying what `failed`.
    pub fn into_refusal(self, failed: &str) -> (ErrorCode, String) {
        match self {
            BrokerError::Refused(code, message) => (code, message),
            e => (ErrorCode::UnknownServerError, format!("{failed}: {e}")),
        }
    }
}

/// How long a request to another broker waits for its answer (Kafka's
/// `request.timeout.ms` default).
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The disk and network a broker runs over.
pub struct Io {
    pub storage: Arc<dyn Storage>,
    pub net: Arc<dyn Network>,
}

pub struct BrokerState {
    pub config: BrokerConfig,
    /// What clients are told to connect to, per listener name.
    pub endpoints: Vec<AdvertisedListener>,
    storage: Arc<dyn Storage>,
    /// How this broker reaches the others' inter-broker listener.
    pub net: Arc<dyn Network>,
    /// This node's voter of the metadata quorum, its controller, its registration.
    pub node: Node,
    /// The image this broker serves: the newest committed one once its partition logs
    /// are open. Readers never wait for the metadata log.
    image: RwLock<Arc<MetadataImage>>,
    /// The metadata offset `image` is as of (-1 before any).
    applied: watch::Sender<i64>,
    /// Logs found at start that no partition of the image has claimed yet.
    unclaimed: Mutex<BTreeMap<TopicPartition, PartitionLog>>,
    /// The replicas this broker holds, each with its log.
    partitions: RwLock<BTreeMap<TopicPartition, Arc<Replica>>>,
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
    /// Connections to the other brokers.
    peers: Peers,
    /// What the admin API's `/metrics` reports.
    pub metrics: Metrics,
    /// The source brokers a replica fetcher runs for.
    pub fetchers: Mutex<BTreeSet<i32>>,
    /// Bumped after each applied image: the partitions followed from a broker may have
    /// changed, and its fetcher looks again (see `replica_fetcher`).
    pub followed_changed: watch::Sender<u64>,
    /// When this broker started, on tokio's monotonic clock: the origin of [`Self::clock_ms`].
    started: tokio::time::Instant,
    /// Turns true when the broker begins to close: requests parked in a long poll are
    /// answered at once with what they have.
    closing: watch::Sender<bool>,
    /// `leader.replication.throttled.rate` and `follower.replication.throttled.rate`.
    pub leader_quota: Quota,
    pub follower_quota: Quota,
    /// Clients' byte rates against their quotas (`producer_byte_rate`, …).
    pub client_quotas: Quotas,
    /// `max.connections` and the rest, with the connections counted against them.
    pub connection_limits: Arc<ConnectionLimits>,
    /// The producer IDs this broker may still hand out.
    producer_ids: Mutex<ProducerIds>,
    /// Held while a block of producer IDs is asked for.
    producer_id_fetch: tokio::sync::Mutex<()>,
    /// Wakes the task that asks for the next block ahead of need.
    producer_ids_wanted: Arc<Notify>,
    _lock: Box<dyn LockGuard>,
}

/// A broker as clients are told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveBroker {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The leaders one response's NOT_LEADER_OR_FOLLOWER answers point clients to (KIP-951),
/// and how clients reach them through the request's listener.
pub struct LeaderHints<'a> {
    state: &'a BrokerState,
    listener: &'a str,
    endpoints: BTreeMap<i32, LiveBroker>,
}

impl<'a> LeaderHints<'a> {
    pub fn new(state: &'a BrokerState, listener: &'a str) -> LeaderHints<'a> {
        LeaderHints {
            state,
            listener,
            endpoints: BTreeMap::new(),
        }
    }

    /// The leader of partition `index` of `topic` and its epoch in this broker's image
    /// (-1 and -1 when the partition is unknown). The leader's endpoint joins the
    /// response's when it is live on the listener.
    pub fn leader_of(&mut self, topic: &str, index: i32) -> (i32, i32) {
        self.state.with_image(|image| {
            let Some(partition) = image
                .topic(topic)
                .and_then(|t| t.partitions.iter().find(|p| p.index == index))
            else {
                return (NO_LEADER, -1);
            };
            let endpoint = image
                .broker(partition.leader)
                .and_then(|b| live_broker(b, self.listener));
            if let Some(leader) = endpoint {
                self.endpoints.insert(leader.id, leader);
            }
            (partition.leader, partition.leader_epoch)
        })
    }

    /// The endpoints of the leaders named, by ID.
    pub fn endpoints(self) -> impl Iterator<Item = LiveBroker> {
        self.endpoints.into_values()
    }
}

/// Broker `b` as clients reach it through listener `name`; `None` when it is fenced or has
/// no such listener.
fn live_broker(b: &BrokerMeta, name: &str) -> Option<LiveBroker> {
    if b.fenced {
        return None;
    }
    let endpoint = b.endpoints.iter().find(|e| e.name == name)?;
    Some(LiveBroker {
        id: b.id,
        host: endpoint.host.clone(),
        port: endpoint.port,
        rack: b.rack.clone(),
    })
}

/// The blocks of producer IDs the controller gave this broker: the one in use and the
/// next, fetched once the current one runs low.
#[derive(Debug, Default)]
struct ProducerIds {
    current: Range<i64>,
    next: Option<Range<i64>>,
}

impl ProducerIds {
    fn take(&mut self) -> Option<i64> {
        if self.current.is_empty() {
            self.current = self.next.take()?;
        }
        self.current.next()
    }

    fn wants_more(&self) -> bool {
        self.next.is_none() && self.current.end - self.current.start < PRODUCER_ID_BLOCK / 10
    }
}

/// How long a change waits for this broker to apply the metadata that carries it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker's own acks=all writes wait for the ISR (Kafka's
/// `request.timeout.ms` default).
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing waits for requests and background tasks to let go of the broker.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

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
    for (key, value) in configs {
        if throttle::RATES.contains(&key.as_str()) {
            if value.trim().parse::<i64>().map_or(true, |rate| rate < 0) {
                return Err(format!("`{key}` must be a number of bytes per second"));
            }
            continue;
        }
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
            "min.insync.replicas" => {
                config.min_insync_replicas = i32::try_from(number()?)
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(invalid)?
            }
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
    /// Opens the data directory (locked) and joins the metadata quorum; then registers
    /// the broker and returns once the controller has unfenced it and every partition log
    /// it replicates is open.
    pub async fn start(
        config: BrokerConfig,
        endpoints: Vec<AdvertisedListener>,
        controller_listener: Option<tokio::net::TcpListener>,
    ) -> Result<Arc<BrokerState>, BrokerError> {
        let listener = controller_listener.map(|l| Box::new(l) as Box<dyn Listener>);
        let io = Io {
            storage: Arc::new(DiskStorage),
            net: Arc::new(Tcp),
        };
        BrokerState::start_with(config, endpoints, listener, io).await
    }

    /// [`BrokerState::start`] over the given disk and network (the simulation's).
    pub async fn start_with(
        config: BrokerConfig,
        endpoints: Vec<AdvertisedListener>,
        controller_listener: Option<Box<dyn Listener>>,
        io: Io,
    ) -> Result<Arc<BrokerState>, BrokerError> {
        let Io { storage, net } = io;
        // Other brokers are reached as their inter-broker listener expects: its TLS stores
        // and this broker's login are read before anything else.
        let broker_net = crate::secure_net::to_listener(
            &config,
            &config.inter_broker_listener(),
            Arc::clone(&net),
        )
        .map_err(BrokerError::Security)?;
        // So are the voters' controller listener (the first of controller.listener.names,
        // as Kafka's brokers reach it), when there are other voters, and this node's own.
        let controller_net = match config.controller_listener_names.first() {
            Some(name) if !config.controller_quorum_voters.is_empty() => {
                crate::secure_net::to_listener(&config, name, Arc::clone(&net))
                    .map_err(BrokerError::Security)?
            }
            _ => Arc::clone(&net),
        };
        let controller_listener = match (controller_listener, config.controller_listener()) {
            (Some(socket), Some(listener)) => Some(
                crate::secure_net::accepting(&config, &listener.name, socket)
                    .map_err(BrokerError::Security)?,
            ),
            (socket, _) => socket,
        };
        let metrics = Metrics::new();
        let opening = (
            Arc::clone(&storage),
            config.clone(),
            metrics.sync_histogram(),
        );
        let (guard, logs, flusher) = blocking(move || {
            let (storage, config, sync_times) = opening;
            let defaults = config.log.clone();
            let (manager, _) = LogManager::open(
                Arc::clone(&storage),
                &config.data_dir,
                |_| defaults.clone(),
                now_ms(),
            )?;
            let (guard, mut logs) = manager.into_parts();
            let flusher = Flusher::start(storage.as_ref(), &config.data_dir, sync_times)
                .map_err(LogError::from)?;
            let metadata_log = logs.remove(&TopicPartition::new(METADATA_TOPIC, 0));
            node::set_aside_legacy_log(&storage, &config.data_dir, metadata_log)?;
            Ok((guard, logs, flusher))
        })
        .await?;
        let node = Node::start(
            &config,
            Arc::clone(&storage),
            controller_listener,
            &controller_net,
        )
        .await?;
        let fetch_sessions = FetchSessionCache::new(
            config.max_incremental_fetch_session_cache_slots,
            Box::new(|| {
                let bytes = crate::metadata::random_uuid().0;
                i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & i32::MAX
            }),
        );
        let peers = Peers::new(
            format!("spool-broker-{}", config.node_id),
            PEER_TIMEOUT,
            Arc::clone(&broker_net),
        );
        let groups = GroupCoordinator::new(config.group.clone());
        let txns = TxnCoordinator::new(config.txn.clone());
        let heartbeat_interval = Duration::from_millis(config.broker_heartbeat_interval_ms);
        let state = Arc::new(BrokerState {
            groups,
            txns,
            fetch_sessions: Mutex::new(fetch_sessions),
            client_quotas: Quotas::new(config.quota_windows),
            connection_limits: ConnectionLimits::new(config.limits.clone(), config.quota_windows),
            producer_ids: Mutex::new(ProducerIds::default()),
            producer_id_fetch: tokio::sync::Mutex::new(()),
            producer_ids_wanted: Arc::new(Notify::new()),
            flusher,
            config,
            endpoints,
            storage,
            net: broker_net,
            peers,
            metrics,
            fetchers: Mutex::new(BTreeSet::new()),
            followed_changed: watch::channel(0).0,
            started: tokio::time::Instant::now(),
            closing: watch::channel(false).0,
            leader_quota: Quota::default(),
            follower_quota: Quota::default(),
            node,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            applied: watch::channel(-1).0,
            unclaimed: Mutex::new(logs),
            partitions: RwLock::new(BTreeMap::new()),
            wakeups: Wakeups::default(),
            _lock: guard,
        });
        tokio::spawn(node::run_publisher(Arc::downgrade(&state)));
        node::join(&state).await?;
        let strays = Arc::clone(&state);
        blocking(move || strays.remove_unclaimed()).await?;
        tokio::spawn(node::run_heartbeats(
            Arc::downgrade(&state),
            heartbeat_interval,
        ));
        tokio::spawn(crate::replica_fetcher::run_isr_checks(
            Arc::downgrade(&state),
            state.config.replication.lag_time_max_ms,
        ));
        tokio::spawn(refill_producer_ids(
            Arc::downgrade(&state),
            Arc::clone(&state.producer_ids_wanted),
        ));
        state.producer_ids_wanted.notify_one();
        Ok(state)
    }

    /// Milliseconds since this broker started, on a monotonic clock: what times the
    /// replication (how long a follower lags, when a refused ISR change is asked again).
    /// Unlike [`now_ms`] it never jumps with the wall clock, and a simulation's time drives it.
    pub fn clock_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Resolves once the broker has begun to close.
    pub async fn closing(&self) {
        let _ = self.closing.subscribe().wait_for(|closing| *closing).await;
    }

    /// Why this broker should not take traffic now, or `None` when it serves: it is
    /// registered and unfenced in the metadata it serves, and neither leaving nor closing.
    pub fn not_ready(&self) -> Option<&'static str> {
        if *self.closing.borrow() {
            return Some("closing");
        }
        if self.node.is_leaving() {
            return Some("shutting down");
        }
        self.with_image(|image| match image.broker(self.config.node_id) {
            None => Some("not registered in the metadata"),
            Some(broker) if broker.fenced => Some("fenced by the controller"),
            Some(_) => None,
        })
    }

    /// The metadata offset of the image this broker serves.
    pub fn applied_offset(&self) -> i64 {
        *self.applied.borrow()
    }

    pub(crate) fn set_applied(&self, offset: i64) {
        self.applied.send_replace(offset);
    }

    /// Waits until this broker serves the image as of metadata `offset` or later.
    pub async fn wait_applied(&self, offset: i64) -> Result<(), BrokerError> {
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|&a| a >= offset)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(BrokerError::Cluster(format!(
                "metadata offset {offset} not applied in time"
            ))),
        }
    }

    /// Makes the broker serve `image`: opens the logs of the partitions it replicates
    /// that are new, reconfigures those whose settings changed, and removes those of
    /// deleted topics. Blocking. A log that cannot be opened is reported; the others are
    /// served all the same.
    ///
    /// The image is in force before the replicas take their new parts, as in Kafka: a
    /// request the change fails (a write waiting for the ISR of a leadership that just
    /// moved, a read of a copy being removed) is answered with the new leader.
    pub(crate) fn apply_image(
        &self,
        image: Arc<MetadataImage>,
        now: i64,
    ) -> Result<(), BrokerError> {
        let old = std::mem::replace(
            &mut *self
                .image
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Arc::clone(&image),
        );
        for topic in old.topics() {
            if image.topic_by_id(&topic.id).is_none() {
                self.remove_topic_logs(topic)?;
            }
        }
        self.remove_moved_replicas(&image);
        let node = self.config.node_id;
        self.leader_quota
            .set_rate(throttle::rate(&image, node, throttle::LEADER_RATE));
        self.follower_quota
            .set_rate(throttle::rate(&image, node, throttle::FOLLOWER_RATE));
        let old_defaults = effective_log_defaults(&self.config, &old);
        let defaults = effective_log_defaults(&self.config, &image);
        let mut failed = None;
        for topic in image.topics() {
            let reconfigured = old_defaults != defaults
                || old
                    .topic_by_id(&topic.id)
                    .is_none_or(|t| t.configs != topic.configs);
            let log_config = topic_log_config(&defaults, &topic.configs).unwrap_or_else(|e| {
                tracing::warn!(topic = %topic.name, error = %e, "ignoring the topic's stored configs");
                defaults.clone()
            });
            for p in topic
                .partitions
                .iter()
                .filter(|p| p.replicas.contains(&node))
            {
                let replica = match self.replica(&topic.name, p.index) {
                    Some(replica) => {
                        if reconfigured {
                            replica.log.set_config(log_config.clone());
                        }
                        replica
                    }
                    None => {
                        let tp = TopicPartition::new(topic.name.clone(), p.index);
                        match self.open_partition(tp, &log_config, now) {
                            Ok(replica) => replica,
                            Err(e) => {
                                failed = Some(e);
                                continue;
                            }
                        }
                    }
                };
                if let Err(e) = replica.apply(p, self.clock_ms()) {
                    tracing::error!(topic = %topic.name, partition = p.index, error = %e, "the replica could not take its part");
                    failed = Some(e.into());
                }
            }
        }
        // The coordinators serve the internal partitions this broker leads: groups are
        // read back on a loader thread, transactions at once (so that one a crash left
        // half-ended resumes with the first tick).
        self.groups.follow(offsets_logs(self));
        self.txns.follow(txn_logs(self));
        failed.map_or(Ok(()), Err)
    }

    /// Where clients reach this broker through listener `name`; `None` when that listener
    /// is not advertised.
    pub fn endpoint(&self, name: &str) -> Option<&AdvertisedListener> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The brokers clients may use, as reached through listener `name`: the registered,
    /// unfenced ones that have such a listener, by ID.
    pub fn live_brokers(&self, name: &str) -> Vec<LiveBroker> {
        self.with_image(|image| {
            image
                .brokers()
                .filter_map(|b| live_broker(b, name))
                .collect()
        })
    }

    /// The `log.*` defaults in force, dynamic broker settings included.
    pub fn log_defaults(&self) -> LogConfig {
        self.with_image(|image| effective_log_defaults(&self.config, image))
    }

    /// Runs `f` on the current metadata image.
    pub fn with_image<R>(&self, f: impl FnOnce(&MetadataImage) -> R) -> R {
        f(&self.current_image())
    }

    /// The metadata image this broker serves.
    pub fn current_image(&self) -> Arc<MetadataImage> {
        Arc::clone(
            &self
                .image
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The log of partition `index` of `topic`, for a client that believes the leader
    /// epoch is `current_leader_epoch`: UNKNOWN_TOPIC_OR_PARTITION when the cluster has no
    /// such partition, NOT_LEADER_OR_FOLLOWER when another broker leads it, else the
    /// leader-epoch check's error.
    pub fn leader_log(
        &self,
        topic: &str,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<Arc<SharedLog>, ErrorCode> {
        self.leader_replica(topic, index, current_leader_epoch)
            .map(|r| Arc::clone(&r.log))
    }

    /// This broker's replica of a partition it leads; errors as [`Self::leader_log`].
    pub fn leader_replica(
        &self,
        topic: &str,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<Arc<Replica>, ErrorCode> {
        self.readable_replica(topic, index, current_leader_epoch, false)
            .map(|(replica, _)| replica)
    }

    /// This broker's replica of a partition, for a consumer's read: the leader's, or with
    /// `follower_too` (Fetch from version 11, KIP-392) a follower's. Also says whether
    /// this broker leads. Errors as [`Self::leader_log`]; NOT_LEADER_OR_FOLLOWER when this
    /// broker holds no replica it may serve.
    pub fn readable_replica(
        &self,
        topic: &str,
        index: i32,
        current_leader_epoch: i32,
        follower_too: bool,
    ) -> Result<(Arc<Replica>, bool), ErrorCode> {
        let me = self.config.node_id;
        let current = self.with_image(|image| {
            image.topic(topic).and_then(|t| {
                t.partitions
                    .iter()
                    .find(|p| p.index == index)
                    .map(|p| (p.leader, p.leader_epoch, p.replicas.contains(&me)))
            })
        });
        // A partition of the cluster that this broker holds no copy of (any more, or
        // not yet) is NOT_LEADER_OR_FOLLOWER, as in Kafka, so that clients look for its
        // leader; only one nobody knows is UNKNOWN_TOPIC_OR_PARTITION.
        let Some(replica) = self.replica(topic, index) else {
            return Err(if current.is_some() {
                ErrorCode::NotLeaderOrFollower
            } else {
                ErrorCode::UnknownTopicOrPartition
            });
        };
        // Kafka's checks of a request to a partition leader: this broker must lead it
        // (or follow it, when allowed), and a client's `current_leader_epoch` (-1 skips
        // it) older than the partition's is FENCED_LEADER_EPOCH, newer is
        // UNKNOWN_LEADER_EPOCH.
        let leads = match current {
            Some((leader, _, _)) if leader == me => true,
            Some((_, _, true)) if follower_too => false,
            Some(_) => return Err(ErrorCode::NotLeaderOrFollower),
            None => true,
        };
        match current {
            Some((_, current, _))
                if current_leader_epoch >= 0 && current_leader_epoch < current =>
            {
                Err(ErrorCode::FencedLeaderEpoch)
            }
            Some((_, current, _)) if current_leader_epoch > current => {
                Err(ErrorCode::UnknownLeaderEpoch)
            }
            _ => Ok((replica, leads)),
        }
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<SharedLog>> {
        self.replica(topic, index).map(|r| Arc::clone(&r.log))
    }

    /// This broker's replica of partition `index` of `topic`.
    pub fn replica(&self, topic: &str, index: i32) -> Option<Arc<Replica>> {
        let partitions = self
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        partitions.get(&TopicPartition::new(topic, index)).cloned()
    }

    /// Every replica this broker holds.
    pub fn replicas(&self) -> Vec<(TopicPartition, Arc<Replica>)> {
        let partitions = self
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        partitions
            .iter()
            .map(|(tp, replica)| (tp.clone(), Arc::clone(replica)))
            .collect()
    }

    /// The leader (a node ID, or -1 when it has none) and leader epoch of partition
    /// `index` of `topic`; `None` when the cluster has no such partition.
    pub fn partition_leader(&self, topic: &str, index: i32) -> Option<(i32, i32)> {
        self.with_image(|image| {
            image
                .topic(topic)?
                .partitions
                .iter()
                .find(|p| p.index == index)
                .map(|p| (p.leader, p.leader_epoch))
        })
    }

    /// Sends a request to broker `id` on the inter-broker listener.
    pub async fn send_to_broker(
        &self,
        id: i32,
        body: RequestBody,
        version: i16,
    ) -> Result<ResponseBody, PeerError> {
        let (host, port) = self.broker_endpoint(id).ok_or(PeerError::NoEndpoint(id))?;
        self.peers.send(&host, port, body, version).await
    }

    /// Where broker `id` listens for other brokers; `None` unless it is registered,
    /// unfenced and has the inter-broker listener.
    pub fn broker_endpoint(&self, id: i32) -> Option<(String, u16)> {
        let listener = self.config.inter_broker_listener();
        self.live_brokers(&listener)
            .into_iter()
            .find(|b| b.id == id)
            .map(|b| (b.host, b.port))
    }

    /// Whether the cluster has partition `index` of `topic` (wherever its replicas are).
    pub fn has_partition(&self, topic: &str, index: i32) -> bool {
        self.partition_leader(topic, index).is_some()
    }

    /// Waits until what the broker wrote to a partition it leads (coordinator records,
    /// transaction markers) is durable here and held by every in-sync replica: acks=all
    /// for its own writes. Errors as [`Replica::wait_committed`]; NOT_LEADER_OR_FOLLOWER
    /// once the partition is led at another epoch than the write's.
    pub async fn wait_replicated(
        &self,
        topic: &str,
        partition: i32,
        written: Written,
    ) -> Result<(), ErrorCode> {
        let replica = self
            .replica(topic, partition)
            .ok_or(ErrorCode::NotLeaderOrFollower)?;
        self.flusher.wait_durable(&replica.log, written.end).await?;
        replica
            .wait_committed(written.epoch, written.end, REPLICATION_TIMEOUT)
            .await
    }

    /// A producer ID never handed out before, for InitProducerId. IDs come from the
    /// controller in blocks of [`PRODUCER_ID_BLOCK`] recorded in the metadata log, so
    /// none is reused after a restart; this waits when a block must be asked for.
    pub async fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        loop {
            if let Some(id) = self.take_producer_id() {
                return Ok(id);
            }
            self.fetch_producer_ids().await?;
        }
    }

    /// A producer ID if one is at hand; else COORDINATOR_LOAD_IN_PROGRESS (clients retry)
    /// while the next block is asked for. For callers that cannot wait.
    pub fn try_allocate_producer_id(&self) -> Result<i64, ErrorCode> {
        self.take_producer_id().ok_or_else(|| {
            self.producer_ids_wanted.notify_one();
            ErrorCode::CoordinatorLoadInProgress
        })
    }

    fn take_producer_id(&self) -> Option<i64> {
        let mut ids = lock(&self.producer_ids);
        let id = ids.take();
        if ids.wants_more() {
            self.producer_ids_wanted.notify_one();
        }
        id
    }

    /// Asks the controller for the next block of producer IDs, unless one is at hand.
    async fn fetch_producer_ids(&self) -> Result<(), BrokerError> {
        let _fetching = self.producer_id_fetch.lock().await;
        if !lock(&self.producer_ids).wants_more() {
            return Ok(());
        }
        let block = self
            .node
            .controller
            .allocate_producer_ids(self.config.node_id, self.node.broker_epoch())
            .await
            .map_err(|code| BrokerError::Refused(code, "no producer IDs".into()))?;
        let mut ids = lock(&self.producer_ids);
        if ids.current.is_empty() {
            ids.current = block;
        } else {
            ids.next = Some(block);
        }
        Ok(())
    }

    /// Has the controller carry out `change`, then waits until this broker serves the
    /// metadata that holds it.
    pub async fn change_metadata(&self, change: AdminChange) -> Result<(), BrokerError> {
        let offset = self
            .node
            .controller
            .change(change)
            .await
            .map_err(|(code, message)| BrokerError::Refused(code, message))?;
        self.wait_applied(offset).await
    }

    /// Creates a topic (the controller places its replicas) and waits until this broker
    /// serves it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        self.change_metadata(AdminChange::CreateTopic(TopicRequest {
            name: name.to_string(),
            partitions,
            replication_factor,
            assignments,
            configs,
        }))
        .await
    }

    /// Deletes a topic; its logs are removed as the deletion is applied. False when the
    /// topic does not exist.
    pub async fn delete_topic(&self, name: &str) -> Result<bool, BrokerError> {
        match self
            .change_metadata(AdminChange::DeleteTopic(name.to_string()))
            .await
        {
            Ok(()) => Ok(true),
            Err(BrokerError::Refused(ErrorCode::UnknownTopicOrPartition, _)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Grows a topic to `count` partitions, placed by the controller or as `assignments`
    /// say.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Vec<Vec<i32>>,
    ) -> Result<(), BrokerError> {
        self.change_metadata(AdminChange::CreatePartitions {
            name: name.to_string(),
            count,
            assignments,
        })
        .await
    }

    /// Replaces the configs of a topic or broker resource with `configs` (validated by the
    /// caller); the partition logs they govern take them as the change is applied.
    pub async fn set_configs(
        &self,
        resource_type: i8,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        self.change_metadata(AdminChange::AlterConfigs {
            resource_type,
            name: name.to_string(),
            configs,
        })
        .await
    }

    /// Serves the log of `tp`: the one found at start if there is one, else a new one.
    fn open_partition(
        &self,
        tp: TopicPartition,
        log_config: &LogConfig,
        now: i64,
    ) -> Result<Arc<Replica>, BrokerError> {
        let found = lock(&self.unclaimed).remove(&tp);
        let mut log = match found {
            Some(log) => log,
            None => open_log(
                &self.storage,
                &self.config.data_dir,
                &tp,
                log_config.clone(),
                now,
            )?,
        };
        log.set_config(log_config.clone());
        let replica = Arc::new(Replica::new(
            self.config.node_id,
            Arc::new(SharedLog::new(log)),
        ));
        self.partitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tp, Arc::clone(&replica));
        Ok(replica)
    }

    /// Stops serving a deleted topic's partitions and removes their folders.
    fn remove_topic_logs(&self, topic: &TopicMeta) -> Result<(), BrokerError> {
        for partition in &topic.partitions {
            let tp = TopicPartition::new(topic.name.clone(), partition.index);
            let served = self
                .partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&tp);
            // Requests still holding the log keep their open files; the names go now.
            if served.is_some() {
                self.remove_partition_dir(&tp)?;
            }
        }
        self.storage
            .sync_dir(&self.config.data_dir)
            .map_err(LogError::from)?;
        Ok(())
    }

    /// Removes the replicas a reassignment moved off this broker: each stops taking part
    /// (writes waiting on it as leader are answered NOT_LEADER_OR_FOLLOWER) and its log
    /// goes.
    fn remove_moved_replicas(&self, image: &MetadataImage) {
        let node = self.config.node_id;
        let mut removed = false;
        for (tp, replica) in self.replicas() {
            let Some(p) = image
                .topic(&tp.topic)
                .and_then(|t| t.partitions.iter().find(|p| p.index == tp.partition))
            else {
                continue;
            };
            if p.replicas.contains(&node) {
                continue;
            }
            tracing::info!(partition = %tp, replicas = ?p.replicas, "replica moved off this broker; removing its log");
            self.partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&tp);
            replica.retire();
            // The replica is gone from the map either way: a folder that stays is left to
            // the stray-log cleanup at the next start, and the image is still applied.
            if let Err(e) = self.remove_partition_dir(&tp) {
                tracing::error!(partition = %tp, error = %e, "removing a moved replica's log failed");
            }
            removed = true;
        }
        if removed && let Err(e) = self.storage.sync_dir(&self.config.data_dir) {
            tracing::error!(error = %e, "syncing the data directory after removing moved replicas failed");
        }
    }

    /// Removes a partition's folder and its files (the caller syncs the data directory).
    fn remove_partition_dir(&self, tp: &TopicPartition) -> Result<(), LogError> {
        Ok(remove_dir_with_files(
            self.storage.as_ref(),
            &self.config.data_dir.join(tp.dir_name()),
        )?)
    }

    /// Removes the logs found at start that the metadata, now caught up, gives this broker
    /// no partition for: topics deleted while it was down or before their removal
    /// finished. Blocking.
    fn remove_unclaimed(&self) -> Result<(), BrokerError> {
        let strays = std::mem::take(&mut *lock(&self.unclaimed));
        for (tp, log) in strays {
            tracing::warn!(partition = %tp, "removing the log of a partition this broker no longer has");
            log.close()?;
            self.remove_partition_dir(&tp)?;
        }
        self.storage
            .sync_dir(&self.config.data_dir)
            .map_err(LogError::from)?;
        Ok(())
    }

    /// One maintenance pass over every partition log: retention, removal of deleted
    /// segments, compaction when due (never past the high watermark) and `flush.ms` /
    /// `flush.messages`. Blocking. A log that fails is reported and skipped; the others go on.
    pub fn maintain(&self, now_ms: i64) {
        for (tp, replica) in self.replicas() {
            let log = &replica.log;
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

    /// Controlled shutdown: the controller moves this broker's leadership away (bounded
    /// wait). The broker keeps serving meanwhile.
    pub async fn leave(&self) {
        node::leave(self).await;
    }

    /// Closes every log cleanly so the next start skips recovery, then stops the quorum
    /// voter.
    pub async fn close(self: Arc<Self>) -> Result<(), BrokerError> {
        // Fetches parked in a long poll (a follower's may wait as long as
        // replica.fetch.wait.max.ms) are answered now, so their connections end.
        self.closing.send_replace(true);
        // The coordinators hold the logs of their internal topics.
        self.groups.detach();
        self.txns.detach();
        let wanted = Arc::clone(&self.producer_ids_wanted);
        // Connections finish their requests and background tasks let go of the broker.
        let Ok(state) = when_unique(self, CLOSE_TIMEOUT).await else {
            return Err(BrokerError::Cluster(
                "the broker is still in use; its logs were not closed".into(),
            ));
        };
        // The producer-ID task finds the broker gone and ends.
        wanted.notify_one();
        let BrokerState {
            partitions,
            unclaimed,
            node,
            _lock,
            ..
        } = state;
        blocking(move || {
            let partitions = partitions
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (tp, replica) in partitions {
                match Arc::into_inner(replica).and_then(|r| Arc::into_inner(r.log)) {
                    Some(shared) => shared.into_inner().close()?,
                    None => tracing::warn!(partition = %tp, "log still in use at shutdown; left to recovery"),
                }
            }
            let unclaimed = unclaimed
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (_, log) in unclaimed {
                log.close()?;
            }
            Ok(())
        })
        .await?;
        node.shutdown().await?;
        drop(_lock);
        Ok(())
    }
}

thread_local! {
    static ON_THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes brokers started on this thread from now on do their blocking work (disk I/O,
/// fsyncs) on it, in the task that asks, rather than on other threads. For the
/// simulation, which runs every node on one thread and replays a seed only if nothing
/// runs beside it; a broker serving clients does not do this.
pub fn keep_blocking_work_on_this_thread() {
    ON_THIS_THREAD.with(|on| on.set(true));
}

/// Whether [`keep_blocking_work_on_this_thread`] was called on this thread.
pub(crate) fn blocking_work_stays_on_this_thread() -> bool {
    ON_THIS_THREAD.with(std::cell::Cell::get)
}

/// Runs blocking work (disk I/O) on tokio's blocking pool (or at once, see
/// [`keep_blocking_work_on_this_thread`]).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    if blocking_work_stays_on_this_thread() {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BrokerError::Cluster(format!("blocking work failed: {e}")))?
}

/// Takes the value back once every other holder of `shared` has let go, waiting at most
/// `timeout`; hands `shared` back if some holder has not.
pub(crate) async fn when_unique<T>(mut shared: Arc<T>, timeout: Duration) -> Result<T, Arc<T>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match Arc::try_unwrap(shared) {
            Ok(value) => return Ok(value),
            Err(still) if tokio::time::Instant::now() >= deadline => return Err(still),
            Err(still) => shared = still,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fetches producer-ID blocks ahead of need whenever woken, until the broker is gone.
async fn refill_producer_ids(state: std::sync::Weak<BrokerState>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if let Err(e) = state.fetch_producer_ids().await {
            tracing::warn!(error = %e, "no block of producer IDs could be fetched");
        }
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
pub(crate) async fn open_in_temp_dir(name: &str) -> (Arc<BrokerState>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = BrokerConfig {
        data_dir: dir.clone(),
        ..BrokerConfig::default()
    };
    let state = BrokerState::start(config, Vec::new(), None)
        .await
        .expect("the broker starts");
    (state, dir)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
