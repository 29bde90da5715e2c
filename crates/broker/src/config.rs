//! Broker settings under Kafka's names and with Kafka's defaults.
//!
//! Every setting can be given by its Kafka name (`num.partitions`, `log.retention.ms`, …)
//! through [`BrokerConfig::set`], which the command line's `--set`, the TOML file and
//! `SPOOL_*` environment variables all end in. Topic-level defaults (`log.*`) become each
//! new partition's [`LogConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use spool_log::LogConfig;
use spool_metadata::quorum::QuorumSettings;

use crate::acl::Authorizer;
use crate::auth::SaslSettings;
use crate::group::GroupConfig;
use crate::group::assign::ASSIGNORS;
use crate::limits::{LimitSettings, parse_overrides};
use crate::quota::QuotaWindows;
use crate::tls::SslSettings;
use crate::txn::TxnConfig;
use spool_protocol::record_batch::TimestampType;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown setting `{0}`")]
    Unknown(String),
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// One Kafka listener (`listeners`): a name and where it binds; port 0 picks a free port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
}

/// Where clients are told to reach a listener (`advertised.listeners`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedListener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A controller of the metadata quorum (`controller.quorum.voters`): its node ID and its
/// controller listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl Voter {
    /// `host:port`, as a TCP connection is opened to it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Settings given for every listener, or for one as `listener.name.<name>.<setting>`
/// (which wins); listener names are kept upper case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerListener {
    general: std::collections::BTreeMap<&'static str, String>,
    listeners: std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, String>>,
}

impl PerListener {
    /// Sets `key` for every listener, or for `listener` only.
    pub fn insert(&mut self, listener: Option<&str>, key: &'static str, value: &str) {
        let settings = match listener {
            Some(name) => self.listeners.entry(name.to_ascii_uppercase()).or_default(),
            None => &mut self.general,
        };
        settings.insert(key, value.trim().to_string());
    }

    /// The value of `key` in force on `listener`, if it was given.
    pub fn get(&self, listener: &str, key: &str) -> Option<&str> {
        self.listeners
            .get(&listener.to_ascii_uppercase())
            .and_then(|s| s.get(key))
            .or_else(|| self.general.get(key))
            .map(String::as_str)
    }
}

/// The items of a comma-separated setting, trimmed, without empty ones.
pub(crate) fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// The listener name a bare `HOST:PORT` gets.
pub const DEFAULT_LISTENER: &str = "PLAINTEXT";

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// `listeners`: where the broker serves the Kafka protocol, by listener name.
    pub listeners: Vec<Listener>,
    /// `advertised.listeners`: what clients are told; when unset, every listener at its
    /// bound address (127.0.0.1 for a wildcard bind).
    pub advertised_listeners: Option<Vec<AdvertisedListener>>,
    /// `listener.security.protocol.map`: each listener name's security protocol.
    pub listener_security_protocol_map: std::collections::BTreeMap<String, String>,
    /// `ssl.*` and `listener.name.<name>.ssl.*`: TLS on SSL listeners.
    pub ssl: SslSettings,
    /// `sasl.*`, `connections.max.reauth.ms` and the rest of [`crate::auth`]'s settings,
    /// general or per listener: logins on SASL listeners.
    pub sasl: SaslSettings,
    /// The ACL authorizer, when `authorizer.class.name` names one: every request is
    /// checked against the ACLs. Without one everything is allowed and CreateAcls and the
    /// rest answer SECURITY_DISABLED.
    pub authorizer: Option<Authorizer>,
    /// `super.users` and `allow.everyone.if.no.acl.found` as set, whether or not an
    /// authorizer is (the settings may come in any order).
    pub acl_settings: Authorizer,
    /// `max.connections`, `max.connections.per.ip` (and overrides) and the listeners'
    /// `max.connections`.
    pub limits: LimitSettings,
    /// `quota.window.num` and `quota.window.size.seconds`: how client rates are sampled.
    pub quota_windows: QuotaWindows,
    /// `log.dirs` (one directory).
    pub data_dir: PathBuf,
    /// `num.partitions`: partitions of auto-created topics.
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `socket.request.max.bytes`: larger frames are refused before they are read.
    pub socket_request_max_bytes: usize,
    /// `connections.max.idle.ms`.
    pub connections_max_idle_ms: u64,
    /// `max.incremental.fetch.session.cache.slots`: fetch sessions (KIP-227) kept at once.
    pub max_incremental_fetch_session_cache_slots: usize,
    /// Requests one connection may have in flight before the broker stops reading it.
    pub queued_max_requests_per_connection: usize,
    /// The cluster ID reported in Metadata and DescribeCluster; brokers of another
    /// cluster cannot register with this one's controller.
    pub cluster_id: String,
    /// `broker.rack`: replicas of a partition are spread over racks.
    pub broker_rack: Option<String>,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced and its
    /// partitions get new leaders. 1500 (Kafka: 9000), so that a dead leader's partitions
    /// are writable again within two seconds.
    pub broker_session_timeout_ms: i64,
    /// `broker.heartbeat.interval.ms`: 300 (Kafka: 2000), five per session.
    pub broker_heartbeat_interval_ms: u64,
    /// `default.replication.factor`: replicas of topics created without a factor.
    pub default_replication_factor: i16,
    /// `controller.quorum.election.timeout.ms`.
    pub controller_quorum_election_timeout_ms: u64,
    /// `metadata.log.max.record.bytes.between.snapshots`: a node snapshots the metadata
    /// image once this many bytes of metadata entries were appended since its last one.
    pub metadata_log_max_record_bytes_between_snapshots: u64,
    /// `metadata.log.max.snapshot.interval.ms`: or once this long has passed with any
    /// entry appended (0: never by time).
    pub metadata_log_max_snapshot_interval_ms: u64,
    /// `metadata.log.segment.bytes`: the metadata log's segment size; it is purged a
    /// whole segment at a time.
    pub metadata_log_segment_bytes: u64,
    /// `metadata.max.retention.bytes`: segments a snapshot covers are purged while the
    /// metadata log is larger (-1: no limit)…
    pub metadata_max_retention_bytes: i64,
    /// `metadata.max.retention.ms`: …or once their newest entry is older (-1: no limit).
    pub metadata_max_retention_ms: i64,
    /// How followers copy partitions from their leaders (`replica.*`).
    pub replication: ReplicationConfig,
    /// `controller.quorum.voters`: the controllers of the metadata quorum. Empty: this
    /// node is a quorum of one.
    pub controller_quorum_voters: Vec<Voter>,
    /// `controller.listener.names`: listeners that serve the quorum and the controller,
    /// not Kafka clients.
    pub controller_listener_names: Vec<String>,
    /// `process.roles`: this version runs every node as broker and controller.
    pub process_roles: Vec<String>,
    /// `inter.broker.listener.name`: the listener brokers reach each other on; unset, the
    /// first listener that is not a controller listener.
    pub inter_broker_listener_name: Option<String>,
    /// `log.retention.check.interval.ms`: how often retention, compaction, `flush.ms` and
    /// the removal of deleted segments run.
    pub log_retention_check_interval_ms: u64,
    /// The group coordinator's settings (`group.*`, `offsets.*`).
    pub group: GroupConfig,
    /// The transaction coordinator's settings (`transaction.*`, `transactional.id.*`).
    pub txn: TxnConfig,
    /// Defaults for every partition log (`log.segment.bytes`, `log.retention.ms`, …).
    pub log: LogConfig,
    /// The settings given explicitly (file, environment, flags), as given: DescribeConfigs
    /// reports them as STATIC_BROKER_CONFIG.
    pub explicit: std::collections::BTreeMap<String, String>,
}

/// Replication settings, Kafka's names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this long leaves
    /// the ISR.
    pub lag_time_max_ms: i64,
    /// `replica.fetch.wait.max.ms`: how long a follower's fetch waits for new data.
    pub fetch_wait_max_ms: i32,
    /// `replica.fetch.min.bytes`.
    pub fetch_min_bytes: i32,
    /// `replica.fetch.max.bytes`: per partition.
    pub fetch_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`.
    pub fetch_response_max_bytes: i32,
    /// `replica.fetch.backoff.ms`: the pause after a failed fetch.
    pub fetch_backoff_ms: u64,
    /// `replica.socket.timeout.ms`: how long a follower waits for the answer to a fetch
    /// (its long poll included) before it gives up on the connection; at least
    /// `replica.fetch.wait.max.ms`.
    pub socket_timeout_ms: u64,
    /// `offsets.topic.replication.factor`, capped at the brokers registered when the topic
    /// is created (so that one broker alone serves groups).
    pub offsets_topic_replication_factor: i16,
    /// `transaction.state.log.replication.factor`, capped likewise.
    pub transaction_state_log_replication_factor: i16,
    /// `replica.selector.class`: which replica a leader sends consumers to (KIP-392).
    pub selector: ReplicaSelector,
}

/// The replica selectors Kafka ships, by their class names in `replica.selector.class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaSelector {
    /// Consumers read from the leader (the setting unset, or `LeaderSelector`).
    #[default]
    Leader,
    /// `RackAwareReplicaSelector`: a consumer whose `client.rack` names the rack of an
    /// in-sync follower (and not the leader's) is sent to that follower.
    RackAware,
}

impl ReplicaSelector {
    pub const LEADER_CLASS: &'static str = "org.apache.kafka.common.replica.LeaderSelector";
    pub const RACK_AWARE_CLASS: &'static str =
        "org.apache.kafka.common.replica.RackAwareReplicaSelector";

    /// The class name as the setting shows it (empty when unset).
    pub fn class_name(self) -> &'static str {
        match self {
            ReplicaSelector::Leader => "",
            ReplicaSelector::RackAware => Self::RACK_AWARE_CLASS,
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            lag_time_max_ms: 30_000,
            fetch_wait_max_ms: 500,
            fetch_min_bytes: 1,
            fetch_max_bytes: 1024 * 1024,
            fetch_response_max_bytes: 10 * 1024 * 1024,
            fetch_backoff_ms: 1000,
            socket_timeout_ms: 30_000,
            offsets_topic_replication_factor: 3,
            transaction_state_log_replication_factor: 3,
            selector: ReplicaSelector::Leader,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        // The quorum's defaults (KRaft's) are set in one place.
        let quorum = QuorumSettings::default();
        BrokerConfig {
            node_id: 0,
            listeners: vec![Listener {
                name: DEFAULT_LISTENER.to_string(),
                address: SocketAddr::from(([127, 0, 0, 1], 9092)),
            }],
            advertised_listeners: None,
            // Kafka's default map: each protocol by its own name, and CONTROLLER.
            listener_security_protocol_map: SECURITY_PROTOCOLS
                .iter()
                .map(|p| (p.to_string(), p.to_string()))
                .chain([(CONTROLLER_LISTENER.to_string(), "PLAINTEXT".to_string())])
                .collect(),
            ssl: SslSettings::default(),
            sasl: SaslSettings::default(),
            authorizer: None,
            acl_settings: Authorizer::default(),
            quota_windows: QuotaWindows::default(),
            limits: LimitSettings::default(),
            data_dir: PathBuf::from("./spool-data"),
            num_partitions: 1,
            auto_create_topics_enable: true,
            socket_request_max_bytes: 100 * 1024 * 1024,
            connections_max_idle_ms: 10 * 60 * 1000,
            max_incremental_fetch_session_cache_slots: 1000,
            queued_max_requests_per_connection: 100,
            cluster_id: "spool-cluster".to_string(),
            broker_rack: None,
            broker_session_timeout_ms: 1500,
            broker_heartbeat_interval_ms: 300,
            default_replication_factor: 1,
            controller_quorum_election_timeout_ms: quorum.election_timeout_ms,
            metadata_log_max_record_bytes_between_snapshots: quorum.snapshot_bytes,
            metadata_log_max_snapshot_interval_ms: quorum.snapshot_interval_ms,
            metadata_log_segment_bytes: quorum.segment_bytes,
            metadata_max_retention_bytes: quorum.retention_bytes,
            metadata_max_retention_ms: quorum.retention_ms,
            replication: ReplicationConfig::default(),
            controller_quorum_voters: Vec::new(),
            controller_listener_names: vec![CONTROLLER_LISTENER.to_string()],
            process_roles: vec!["broker".to_string(), "controller".to_string()],
            inter_broker_listener_name: None,
            log_retention_check_interval_ms: 5 * 60 * 1000,
            group: GroupConfig::default(),
            txn: TxnConfig::default(),
            // Kafka 4's broker default: records at most an hour in the future.
            log: LogConfig {
                timestamp_after_max_ms: 3_600_000,
                ..LogConfig::default()
            },
            explicit: std::collections::BTreeMap::new(),
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            reason: e.to_string(),
        })
}

impl BrokerConfig {
    /// Every setting by its Kafka name with its effective value, for DescribeConfigs.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let log = &self.log;
        let group = &self.group;
        let txn = &self.txn;
        let replication = &self.replication;
        let policy = match (log.cleanup_delete, log.cleanup_compact) {
            (true, true) => "compact,delete",
            (false, true) => "compact",
            _ => "delete",
        };
        let timestamp_type = match log.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        };
        vec![
            ("node.id", self.node_id.to_string()),
            ("listeners", self.listeners_setting()),
            (
                "advertised.listeners",
                match &self.advertised_listeners {
                    Some(advertised) => join(
                        advertised
                            .iter()
                            .map(|l| format!("{}://{}:{}", l.name, l.host, l.port)),
                    ),
                    // Unset, Kafka advertises the listeners themselves.
                    None => self.listeners_setting(),
                },
            ),
            (
                "listener.security.protocol.map",
                join(
                    self.listener_security_protocol_map
                        .iter()
                        .map(|(name, protocol)| format!("{name}:{protocol}")),
                ),
            ),
            ("log.dirs", self.data_dir.display().to_string()),
            ("num.partitions", self.num_partitions.to_string()),
            ("broker.rack", self.broker_rack.clone().unwrap_or_default()),
            (
                "broker.session.timeout.ms",
                self.broker_session_timeout_ms.to_string(),
            ),
            (
                "broker.heartbeat.interval.ms",
                self.broker_heartbeat_interval_ms.to_string(),
            ),
            (
                "default.replication.factor",
                self.default_replication_factor.to_string(),
            ),
            (
                "controller.quorum.election.timeout.ms",
                self.controller_quorum_election_timeout_ms.to_string(),
            ),
            (
                "metadata.log.max.record.bytes.between.snapshots",
                self.metadata_log_max_record_bytes_between_snapshots
                    .to_string(),
            ),
            (
                "metadata.log.max.snapshot.interval.ms",
                self.metadata_log_max_snapshot_interval_ms.to_string(),
            ),
            (
                "metadata.log.segment.bytes",
                self.metadata_log_segment_bytes.to_string(),
            ),
            (
                "metadata.max.retention.bytes",
                self.metadata_max_retention_bytes.to_string(),
            ),
            (
                "metadata.max.retention.ms",
                self.metadata_max_retention_ms.to_string(),
            ),
            (
                "controller.quorum.voters",
                join(
                    self.controller_quorum_voters
                        .iter()
                        .map(|v| format!("{}@{}:{}", v.id, v.host, v.port)),
                ),
            ),
            (
                "controller.listener.names",
                self.controller_listener_names.join(","),
            ),
            ("process.roles", self.process_roles.join(",")),
            (
                "replica.lag.time.max.ms",
                replication.lag_time_max_ms.to_string(),
            ),
            (
                "replica.fetch.wait.max.ms",
                replication.fetch_wait_max_ms.to_string(),
            ),
            (
                "replica.fetch.min.bytes",
                replication.fetch_min_bytes.to_string(),
            ),
            (
                "replica.fetch.max.bytes",
                replication.fetch_max_bytes.to_string(),
            ),
            (
                "replica.fetch.response.max.bytes",
                replication.fetch_response_max_bytes.to_string(),
            ),
            (
                "replica.fetch.backoff.ms",
                replication.fetch_backoff_ms.to_string(),
            ),
            (
                "replica.socket.timeout.ms",
                replication.socket_timeout_ms.to_string(),
            ),
            (
                "replica.selector.class",
                replication.selector.class_name().to_string(),
            ),
            (
                "offsets.topic.replication.factor",
                replication.offsets_topic_replication_factor.to_string(),
            ),
            (
                "transaction.state.log.replication.factor",
                replication
                    .transaction_state_log_replication_factor
                    .to_string(),
            ),
            ("inter.broker.listener.name", self.inter_broker_listener()),
            (
                "auto.create.topics.enable",
                self.auto_create_topics_enable.to_string(),
            ),
            (
                "socket.request.max.bytes",
                self.socket_request_max_bytes.to_string(),
            ),
            (
                "authorizer.class.name",
                if self.authorizer.is_some() {
                    STANDARD_AUTHORIZER.to_string()
                } else {
                    String::new()
                },
            ),
            ("super.users", self.acl_settings.super_users.join(";")),
            ("quota.window.num", self.quota_windows.samples.to_string()),
            ("max.connections", self.limits.max_connections.to_string()),
            ("max.connections.per.ip", self.limits.per_ip.to_string()),
            (
                "max.connection.creation.rate",
                self.limits.creation_rate.to_string(),
            ),
            (
                "max.connections.per.ip.overrides",
                self.limits
                    .per_ip_overrides
                    .iter()
                    .map(|(ip, n)| format!("{ip}:{n}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "quota.window.size.seconds",
                (self.quota_windows.window_ms / 1000).to_string(),
            ),
            (
                "allow.everyone.if.no.acl.found",
                self.acl_settings.allow_everyone_if_no_acl_found.to_string(),
            ),
            (
                "connections.max.idle.ms",
                self.connections_max_idle_ms.to_string(),
            ),
            (
                "max.incremental.fetch.session.cache.slots",
                self.max_incremental_fetch_session_cache_slots.to_string(),
            ),
            (
                "offsets.topic.num.partitions",
                group.offsets_topic_partitions.to_string(),
            ),
            (
                "offsets.topic.segment.bytes",
                group.offsets_topic_segment_bytes.to_string(),
            ),
            (
                "group.initial.rebalance.delay.ms",
                group.initial_rebalance_delay_ms.to_string(),
            ),
            (
                "group.min.session.timeout.ms",
                group.min_session_timeout_ms.to_string(),
            ),
            (
                "group.max.session.timeout.ms",
                group.max_session_timeout_ms.to_string(),
            ),
            ("group.max.size", group.max_size.to_string()),
            (
                "group.consumer.session.timeout.ms",
                group.consumer_session_timeout_ms.to_string(),
            ),
            (
                "group.consumer.heartbeat.interval.ms",
                group.consumer_heartbeat_interval_ms.to_string(),
            ),
            (
                "group.consumer.max.size",
                group.consumer_max_size.to_string(),
            ),
            (
                "group.consumer.assignors",
                group.consumer_assignors.join(","),
            ),
            (
                "offsets.retention.minutes",
                (group.offsets_retention_ms / 60_000).to_string(),
            ),
            (
                "offsets.retention.check.interval.ms",
                group.offsets_retention_check_interval_ms.to_string(),
            ),
            (
                "offset.metadata.max.bytes",
                group.offset_metadata_max_bytes.to_string(),
            ),
            (
                "transaction.state.log.num.partitions",
                txn.topic_partitions.to_string(),
            ),
            (
                "transaction.state.log.segment.bytes",
                txn.topic_segment_bytes.to_string(),
            ),
            ("transaction.max.timeout.ms", txn.max_timeout_ms.to_string()),
            (
                "transactional.id.expiration.ms",
                txn.id_expiration_ms.to_string(),
            ),
            (
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                txn.abort_timed_out_interval_ms.to_string(),
            ),
            (
                "transaction.remove.expired.transaction.cleanup.interval.ms",
                txn.remove_expired_interval_ms.to_string(),
            ),
            ("log.segment.bytes", log.segment_bytes.to_string()),
            ("log.roll.ms", log.segment_ms.to_string()),
            (
                "log.index.size.max.bytes",
                log.segment_index_bytes.to_string(),
            ),
            (
                "log.index.interval.bytes",
                log.index_interval_bytes.to_string(),
            ),
            ("message.max.bytes", log.max_message_bytes.to_string()),
            ("log.message.timestamp.type", timestamp_type.to_string()),
            ("log.retention.ms", log.retention_ms.to_string()),
            ("log.retention.bytes", log.retention_bytes.to_string()),
            (
                "log.flush.interval.messages",
                log.flush_messages.to_string(),
            ),
            ("log.flush.interval.ms", log.flush_ms.to_string()),
            ("min.insync.replicas", log.min_insync_replicas.to_string()),
            ("log.cleanup.policy", policy.to_string()),
            (
                "producer.id.expiration.ms",
                log.producer_id_expiration_ms.to_string(),
            ),
        ]
    }

    /// The security protocol of listener `name` as Kafka numbers them (PLAINTEXT 0, SSL 1,
    /// SASL_PLAINTEXT 2, SASL_SSL 3).
    pub fn security_protocol_id(&self, name: &str) -> i16 {
        self.listener_security_protocol_map
            .get(name)
            .and_then(|p| SECURITY_PROTOCOLS.iter().position(|known| known == p))
            .map_or(0, |i| i as i16)
    }

    /// The security protocol of listener `name` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL).
    pub fn security_protocol(&self, name: &str) -> Option<&str> {
        self.listener_security_protocol_map
            .get(name)
            .map(String::as_str)
    }

    /// `listeners` in Kafka's form, `NAME://HOST:PORT,…`.
    fn listeners_setting(&self) -> String {
        join(
            self.listeners
                .iter()
                .map(|l| format!("{}://{}", l.name, l.address)),
        )
    }

    /// Checks what single settings cannot: every listener has a security protocol this
    /// version serves (PLAINTEXT; SSL for listeners serving clients only), no two
    /// listeners share a port, and every advertised listener is a listener.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.limits.per_ip == 0 && self.limits.per_ip_overrides.is_empty() {
            return Err(invalid(
                "max.connections.per.ip",
                "0",
                "0 refuses every address: name the ones allowed in max.connections.per.ip.overrides".into(),
            ));
        }
        let replication = &self.replication;
        if u64::try_from(replication.fetch_wait_max_ms).unwrap_or(0) > replication.socket_timeout_ms
        {
            return Err(invalid(
                "replica.socket.timeout.ms",
                &replication.socket_timeout_ms.to_string(),
                format!(
                    "must be at least replica.fetch.wait.max.ms ({})",
                    replication.fetch_wait_max_ms
                ),
            ));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let Some(protocol) = self.listener_security_protocol_map.get(&listener.name) else {
                return Err(invalid(
                    "listeners",
                    &self.listeners_setting(),
                    format!(
                        "listener `{}` has no security protocol in listener.security.protocol.map",
                        listener.name
                    ),
                ));
            };
            // The quorum between controllers speaks plain TCP or TLS in this version;
            // brokers reach each other's inter-broker listener with any protocol.
            if self.is_controller_listener(&listener.name)
                && !matches!(protocol.as_str(), "PLAINTEXT" | "SSL")
            {
                return Err(invalid(
                    "listeners",
                    &self.listeners_setting(),
                    format!(
                        "listener `{}` uses {protocol}, which this version does not serve as a controller listener (PLAINTEXT or SSL; ssl.client.auth=required has the voters and brokers show a certificate)",
                        listener.name
                    ),
                ));
            }
            let port = listener.address.port();
            if port != 0
                && self.listeners[..i]
                    .iter()
                    .any(|other| other.address.port() == port)
            {
                return Err(invalid(
                    "listeners",
                    &self.listeners_setting(),
                    format!("two listeners use port {port}"),
                ));
            }
        }
        for advertised in self.advertised_listeners.iter().flatten() {
            if !self.listeners.iter().any(|l| l.name == advertised.name) {
                return Err(invalid(
                    "advertised.listeners",
                    &advertised.name,
                    format!("`{}` is not one of the listeners", advertised.name),
                ));
            }
            if self.is_controller_listener(&advertised.name) {
                return Err(invalid(
                    "advertised.listeners",
                    &advertised.name,
                    format!("`{}` is a controller listener", advertised.name),
                ));
            }
        }
        if !self
            .listeners
            .iter()
            .any(|l| !self.is_controller_listener(&l.name))
        {
            return Err(invalid(
                "listeners",
                &self.listeners_setting(),
                "no listener serves Kafka clients".into(),
            ));
        }
        if let Some(name) = &self.inter_broker_listener_name
            && !self
                .listeners
                .iter()
                .any(|l| &l.name == name && !self.is_controller_listener(name))
        {
            return Err(invalid(
                "inter.broker.listener.name",
                name,
                format!("`{name}` is not one of the listeners serving brokers"),
            ));
        }
        let roles = self.process_roles.join(",");
        if !(self.process_roles.iter().any(|r| r == "broker")
            && self.process_roles.iter().any(|r| r == "controller"))
        {
            return Err(invalid(
                "process.roles",
                &roles,
                "this version runs every node as both broker and controller".into(),
            ));
        }
        if !self.controller_quorum_voters.is_empty() {
            let voters = join(
                self.controller_quorum_voters
                    .iter()
                    .map(|v| format!("{}@{}", v.id, v.address())),
            );
            if !self
                .controller_quorum_voters
                .iter()
                .any(|v| v.id == self.node_id)
            {
                return Err(invalid(
                    "controller.quorum.voters",
                    &voters,
                    format!("node.id {} is not among the voters", self.node_id),
                ));
            }
            if self.controller_listener().is_none() {
                return Err(invalid(
                    "listeners",
                    &self.listeners_setting(),
                    format!(
                        "a controller needs a listener named in controller.listener.names ({})",
                        self.controller_listener_names.join(",")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The listener other brokers are reached on (`inter.broker.listener.name`).
    pub fn inter_broker_listener(&self) -> String {
        self.inter_broker_listener_name.clone().unwrap_or_else(|| {
            self.listeners
                .iter()
                .find(|l| !self.is_controller_listener(&l.name))
                .map_or_else(|| DEFAULT_LISTENER.to_string(), |l| l.name.clone())
        })
    }

    /// Whether listener `name` serves the quorum and the controller rather than clients.
    pub fn is_controller_listener(&self, name: &str) -> bool {
        self.controller_listener_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The listener the quorum and the controller are served on, if any.
    pub fn controller_listener(&self) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| self.is_controller_listener(&l.name))
    }

    /// What clients are told, given the addresses the listeners bound: the advertised
    /// listeners (port 0 meaning the bound port), or every listener but the controller's
    /// at its bound address, with 127.0.0.1 for a wildcard bind.
    pub fn endpoints(&self, bound: &[Listener]) -> Vec<AdvertisedListener> {
        let bound_port = |name: &str| {
            bound
                .iter()
                .find(|l| l.name == name)
                .map_or(0, |l| l.address.port())
        };
        match &self.advertised_listeners {
            Some(advertised) => advertised
                .iter()
                .map(|a| AdvertisedListener {
                    port: if a.port == 0 {
                        bound_port(&a.name)
                    } else {
                        a.port
                    },
                    ..a.clone()
                })
                .collect(),
            None => bound
                .iter()
                .filter(|l| !self.is_controller_listener(&l.name))
                .map(|l| AdvertisedListener {
                    name: l.name.clone(),
                    host: if l.address.ip().is_unspecified() {
                        "127.0.0.1".to_string()
                    } else {
                        l.address.ip().to_string()
                    },
                    port: l.address.port(),
                })
                .collect(),
        }
    }

    /// Sets one setting by its Kafka name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "node.id" | "broker.id" => self.node_id = parse(key, value)?,
            "listeners" => {
                self.listeners = parse_listeners(key, value)?
                    .into_iter()
                    .map(|(name, host, port)| {
                        let address = bind_address(&host, port).ok_or_else(|| {
                            invalid(key, value, format!("`{host}` is not an IP address"))
                        })?;
                        Ok(Listener { name, address })
                    })
                    .collect::<Result<_, ConfigError>>()?;
            }
            "advertised.listeners" => {
                let listeners = parse_listeners(key, value)?;
                if let Some((_, host, _)) = listeners.iter().find(|(_, h, _)| h == "0.0.0.0") {
                    return Err(invalid(
                        key,
                        value,
                        format!("`{host}` cannot be reached: advertise a routable host"),
                    ));
                }
                self.advertised_listeners = Some(
                    listeners
                        .into_iter()
                        .map(|(name, host, port)| AdvertisedListener { name, host, port })
                        .collect(),
                );
            }
            "listener.security.protocol.map" => {
                let mut map = std::collections::BTreeMap::new();
                for pair in list_items(value) {
                    let (name, protocol) = pair
                        .split_once(':')
                        .ok_or_else(|| invalid(key, value, "expected NAME:PROTOCOL,…".into()))?;
                    let protocol = protocol.trim().to_ascii_uppercase();
                    if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
                        return Err(invalid(
                            key,
                            value,
                            format!("unknown security protocol `{protocol}`"),
                        ));
                    }
                    map.insert(name.trim().to_ascii_uppercase(), protocol);
                }
                self.listener_security_protocol_map = map;
            }
            "log.dirs" | "log.dir" => self.data_dir = PathBuf::from(value.trim()),
            "num.partitions" => self.num_partitions = positive(key, value)?,
            "auto.create.topics.enable" => self.auto_create_topics_enable = parse(key, value)?,
            "socket.request.max.bytes" => self.socket_request_max_bytes = parse(key, value)?,
            "connections.max.idle.ms" => self.connections_max_idle_ms = parse(key, value)?,
            "max.incremental.fetch.session.cache.slots" => {
                self.max_incremental_fetch_session_cache_slots = parse(key, value)?
            }
            "cluster.id" => self.cluster_id = value.trim().to_string(),
            "broker.rack" => {
                let rack = value.trim();
                self.broker_rack = (!rack.is_empty()).then(|| rack.to_string());
            }
            "broker.session.timeout.ms" => {
                self.broker_session_timeout_ms = i64::from(positive(key, value)?)
            }
            "broker.heartbeat.interval.ms" => {
                self.broker_heartbeat_interval_ms = positive(key, value)? as u64
            }
            "default.replication.factor" => self.default_replication_factor = factor(key, value)?,
            "controller.quorum.election.timeout.ms" => {
                self.controller_quorum_election_timeout_ms = positive(key, value)? as u64
            }
            "metadata.log.max.record.bytes.between.snapshots" => {
                self.metadata_log_max_record_bytes_between_snapshots = at_least(key, value, 1)?
            }
            "metadata.log.max.snapshot.interval.ms" => {
                self.metadata_log_max_snapshot_interval_ms = at_least(key, value, 0)?
            }
            "metadata.log.segment.bytes" => {
                self.metadata_log_segment_bytes = at_least(key, value, 1024)?
            }
            "metadata.max.retention.bytes" => {
                self.metadata_max_retention_bytes = limit(key, value)?
            }
            "metadata.max.retention.ms" => self.metadata_max_retention_ms = limit(key, value)?,
            "controller.quorum.voters" => self.controller_quorum_voters = parse_voters(key, value)?,
            "inter.broker.listener.name" => {
                let name = value.trim().to_ascii_uppercase();
                self.inter_broker_listener_name = (!name.is_empty()).then_some(name);
            }
            "controller.listener.names" => {
                self.controller_listener_names = names(value);
            }
            "process.roles" => {
                let roles = names(value)
                    .into_iter()
                    .map(|r| r.to_ascii_lowercase())
                    .collect::<Vec<_>>();
                if roles.is_empty() || roles.iter().any(|r| r != "broker" && r != "controller") {
                    return Err(invalid(
                        key,
                        value,
                        "the roles are broker and controller".into(),
                    ));
                }
                self.process_roles = roles;
            }
            "log.retention.check.interval.ms" => {
                self.log_retention_check_interval_ms = parse(key, value)?
            }
            "offsets.topic.num.partitions" => {
                self.group.offsets_topic_partitions = positive(key, value)?
            }
            "offsets.topic.segment.bytes" => {
                self.group.offsets_topic_segment_bytes = parse(key, value)?
            }
            "group.initial.rebalance.delay.ms" => {
                self.group.initial_rebalance_delay_ms = parse(key, value)?
            }
            "group.min.session.timeout.ms" => {
                self.group.min_session_timeout_ms = parse(key, value)?
            }
            "group.max.session.timeout.ms" => {
                self.group.max_session_timeout_ms = parse(key, value)?
            }
            "group.max.size" => self.group.max_size = positive(key, value)? as usize,
            "group.consumer.session.timeout.ms" => {
                self.group.consumer_session_timeout_ms = positive(key, value)?
            }
            "group.consumer.heartbeat.interval.ms" => {
                self.group.consumer_heartbeat_interval_ms = positive(key, value)?
            }
            "group.consumer.max.size" => {
                self.group.consumer_max_size = positive(key, value)? as usize
            }
            "group.consumer.assignors" => {
                let names = names(value);
                if names.is_empty() || names.iter().any(|n| !ASSIGNORS.contains(&n.as_str())) {
                    return Err(invalid(
                        key,
                        value,
                        "the assignors are uniform and range".into(),
                    ));
                }
                self.group.consumer_assignors = names;
            }
            "offsets.retention.minutes" => {
                self.group.offsets_retention_ms = parse::<i64>(key, value)?.saturating_mul(60_000)
            }
            "offsets.retention.check.interval.ms" => {
                self.group.offsets_retention_check_interval_ms = parse(key, value)?
            }
            "offset.metadata.max.bytes" => {
                self.group.offset_metadata_max_bytes = parse(key, value)?
            }
            "transaction.state.log.num.partitions" => {
                self.txn.topic_partitions = positive(key, value)?
            }
            "transaction.state.log.segment.bytes" => {
                self.txn.topic_segment_bytes = parse(key, value)?
            }
            "transaction.max.timeout.ms" => self.txn.max_timeout_ms = positive(key, value)?,
            "transactional.id.expiration.ms" => {
                self.txn.id_expiration_ms = i64::from(positive(key, value)?)
            }
            "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                self.txn.abort_timed_out_interval_ms = i64::from(positive(key, value)?)
            }
            "transaction.remove.expired.transaction.cleanup.interval.ms" => {
                self.txn.remove_expired_interval_ms = i64::from(positive(key, value)?)
            }
            "log.segment.bytes" => self.log.segment_bytes = parse(key, value)?,
            "log.roll.ms" => self.log.segment_ms = parse(key, value)?,
            "log.roll.hours" => {
                self.log.segment_ms = parse::<i64>(key, value)?.saturating_mul(3_600_000)
            }
            "log.index.size.max.bytes" => self.log.segment_index_bytes = parse(key, value)?,
            "log.index.interval.bytes" => self.log.index_interval_bytes = parse(key, value)?,
            "message.max.bytes" => self.log.max_message_bytes = parse(key, value)?,
            "log.message.timestamp.type" => {
                self.log.message_timestamp_type = parse_timestamp_type(key, value)?
            }
            "log.retention.ms" => self.log.retention_ms = parse(key, value)?,
            "log.message.timestamp.before.max.ms" => {
                self.log.timestamp_before_max_ms = parse(key, value)?
            }
            "log.message.timestamp.after.max.ms" => {
                self.log.timestamp_after_max_ms = parse(key, value)?
            }
            "log.retention.minutes" => {
                self.log.retention_ms = parse::<i64>(key, value)?.saturating_mul(60_000)
            }
            "log.retention.hours" => {
                self.log.retention_ms = parse::<i64>(key, value)?.saturating_mul(3_600_000)
            }
            "log.retention.bytes" => self.log.retention_bytes = parse(key, value)?,
            "log.flush.interval.messages" => self.log.flush_messages = parse(key, value)?,
            "log.flush.interval.ms" => self.log.flush_ms = parse(key, value)?,
            "producer.id.expiration.ms" => self.log.producer_id_expiration_ms = parse(key, value)?,
            "min.insync.replicas" => self.log.min_insync_replicas = positive(key, value)?,
            "replica.lag.time.max.ms" => {
                self.replication.lag_time_max_ms = i64::from(positive(key, value)?)
            }
            "replica.fetch.wait.max.ms" => self.replication.fetch_wait_max_ms = parse(key, value)?,
            "replica.fetch.min.bytes" => self.replication.fetch_min_bytes = positive(key, value)?,
            "replica.fetch.max.bytes" => self.replication.fetch_max_bytes = positive(key, value)?,
            "replica.fetch.response.max.bytes" => {
                self.replication.fetch_response_max_bytes = positive(key, value)?
            }
            "replica.fetch.backoff.ms" => self.replication.fetch_backoff_ms = parse(key, value)?,
            "replica.socket.timeout.ms" => {
                self.replication.socket_timeout_ms = u64::from(positive(key, value)?.unsigned_abs())
            }
            "replica.selector.class" => {
                self.replication.selector = match value.trim() {
                    "" | ReplicaSelector::LEADER_CLASS => ReplicaSelector::Leader,
                    ReplicaSelector::RACK_AWARE_CLASS => ReplicaSelector::RackAware,
                    _ => {
                        return Err(invalid(
                            key,
                            value,
                            format!(
                                "the selectors are {} and {}",
                                ReplicaSelector::LEADER_CLASS,
                                ReplicaSelector::RACK_AWARE_CLASS
                            ),
                        ));
                    }
                }
            }
            "offsets.topic.replication.factor" => {
                self.replication.offsets_topic_replication_factor = factor(key, value)?
            }
            "transaction.state.log.replication.factor" => {
                self.replication.transaction_state_log_replication_factor = factor(key, value)?
            }
            "max.connections" => self.limits.max_connections = count(key, value)?,
            "max.connections.per.ip" => self.limits.per_ip = count(key, value)?,
            "max.connection.creation.rate" => self.limits.creation_rate = count(key, value)?,
            "max.connections.per.ip.overrides" => {
                self.limits.per_ip_overrides =
                    parse_overrides(value).map_err(|reason| invalid(key, value, reason))?;
            }
            "quota.window.num" => {
                self.quota_windows.samples = positive(key, value)?.unsigned_abs();
            }
            "quota.window.size.seconds" => {
                let seconds = i64::from(positive(key, value)?);
                self.quota_windows.window_ms = seconds * 1000;
            }
            "authorizer.class.name" => {
                self.authorizer = match value.trim() {
                    "" => None,
                    STANDARD_AUTHORIZER => Some(self.acl_settings.clone()),
                    _ => {
                        return Err(invalid(
                            key,
                            value,
                            format!("the authorizer served is {STANDARD_AUTHORIZER}"),
                        ));
                    }
                }
            }
            "super.users" => {
                let mut users = Vec::new();
                for user in value.split(';').map(str::trim).filter(|u| !u.is_empty()) {
                    match user.split_once(':') {
                        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                            users.push(user.to_string());
                        }
                        _ => {
                            return Err(invalid(
                                key,
                                value,
                                format!("`{user}` is not a principal (User:name)"),
                            ));
                        }
                    }
                }
                self.set_acl(|acl| acl.super_users.clone_from(&users));
            }
            "allow.everyone.if.no.acl.found" => {
                let allow = parse(key, value)?;
                self.set_acl(|acl| acl.allow_everyone_if_no_acl_found = allow);
            }
            "log.cleanup.policy" => {
                let policies: Vec<&str> = value.split(',').map(str::trim).collect();
                self.log.cleanup_delete = policies.contains(&"delete");
                self.log.cleanup_compact = policies.contains(&"compact");
            }
            _ => {
                let (listener, setting) = key
                    .strip_prefix("listener.name.")
                    .and_then(|rest| rest.split_once('.'))
                    .map_or((None, key), |(name, setting)| (Some(name), setting));
                let per_listener = match setting {
                    "max.connections" => Some(&mut self.limits.per_listener),
                    "max.connection.creation.rate" => {
                        Some(&mut self.limits.creation_rate_per_listener)
                    }
                    _ => None,
                };
                if let (Some(listener), Some(limits)) = (listener, per_listener) {
                    limits.insert(listener.to_ascii_uppercase(), count(key, value)?);
                    self.explicit
                        .insert(key.to_string(), value.trim().to_string());
                    return Ok(());
                }
                let known = match setting.strip_prefix("ssl.") {
                    Some(ssl) => self
                        .ssl
                        .set(listener, ssl, value)
                        .map_err(|e| invalid(key, value, e.to_string()))?,
                    None => self
                        .sasl
                        .set(listener, setting, value)
                        .map_err(|reason| invalid(key, value, reason))?,
                };
                if !known {
                    return Err(ConfigError::Unknown(key.to_string()));
                }
            }
        }
        self.explicit
            .insert(key.to_string(), value.trim().to_string());
        Ok(())
    }

    /// Changes an authorizer setting, in the authorizer too when there is one.
    fn set_acl(&mut self, change: impl Fn(&mut Authorizer)) {
        change(&mut self.acl_settings);
        if let Some(authorizer) = &mut self.authorizer {
            change(authorizer);
        }
    }
}

/// `authorizer.class.name` of the authorizer this broker serves: Kafka's ACL authorizer
/// with its bindings in the metadata log.
pub const STANDARD_AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";

/// A connection count: 0 to 2147483647.
fn count(key: &str, value: &str) -> Result<usize, ConfigError> {
    let n: i32 = parse(key, value)?;
    usize::try_from(n).map_err(|_| invalid(key, value, "must be at least 0".into()))
}

/// A replication factor: 1 to 32767.
fn factor(key: &str, value: &str) -> Result<i16, ConfigError> {
    i16::try_from(positive(key, value)?).map_err(|_| invalid(key, value, "at most 32767".into()))
}

/// A 64-bit count of at least `min`.
fn at_least(key: &str, value: &str, min: u64) -> Result<u64, ConfigError> {
    let n: i64 = parse(key, value)?;
    u64::try_from(n)
        .ok()
        .filter(|&n| n >= min)
        .ok_or_else(|| invalid(key, value, format!("must be at least {min}")))
}

/// A limit: -1 (none) or more.
fn limit(key: &str, value: &str) -> Result<i64, ConfigError> {
    let n: i64 = parse(key, value)?;
    if n < -1 {
        return Err(invalid(key, value, "must be -1 (no limit) or more".into()));
    }
    Ok(n)
}

fn positive(key: &str, value: &str) -> Result<i32, ConfigError> {
    let n: i32 = parse(key, value)?;
    if n < 1 {
        return Err(ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(n)
}

/// Kafka's security protocols, each also a listener name that maps to itself by default.
/// The controller listener's name unless `controller.listener.names` says otherwise.
pub const CONTROLLER_LISTENER: &str = "CONTROLLER";

/// A comma-separated list, trimmed, without empty items.
fn names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// `id@host:port,…`.
fn parse_voters(key: &str, value: &str) -> Result<Vec<Voter>, ConfigError> {
    let mut voters: Vec<Voter> = Vec::new();
    for item in names(value) {
        let bad = || invalid(key, value, format!("`{item}` is not ID@HOST:PORT"));
        let (id, address) = item.split_once('@').ok_or_else(bad)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        let port: u16 = port.trim().parse().map_err(|_| bad())?;
        if id < 0 || port == 0 || host.is_empty() {
            return Err(bad());
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(invalid(key, value, format!("voter {id} is listed twice")));
        }
        voters.push(Voter {
            id,
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        });
    }
    Ok(voters)
}

const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

fn invalid(key: &str, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        reason,
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// A listener list: comma-separated `NAME://HOST:PORT` (Kafka's form) or a bare `HOST:PORT`
/// (named PLAINTEXT). Names are upper-cased and must differ. An empty host (`:9092`) binds
/// every interface; `[::1]:9092` is an IPv6 host.
fn parse_listeners(key: &str, value: &str) -> Result<Vec<(String, String, u16)>, ConfigError> {
    let mut listeners: Vec<(String, String, u16)> = Vec::new();
    for item in list_items(value) {
        let (name, address) = match item.split_once("://") {
            Some((name, address)) => (name.trim().to_ascii_uppercase(), address.trim()),
            None => (DEFAULT_LISTENER.to_string(), item),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                key,
                value,
                format!("`{name}` is not a listener name"),
            ));
        }
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| invalid(key, value, format!("`{item}`: expected HOST:PORT")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = parse(key, port)?;
        if listeners.iter().any(|(n, _, _)| *n == name) {
            return Err(invalid(
                key,
                value,
                format!("listener `{name}` is given twice"),
            ));
        }
        listeners.push((name, host.to_string(), port));
    }
    if listeners.is_empty() {
        return Err(invalid(key, value, "no listener given".into()));
    }
    Ok(listeners)
}

/// The socket address a listener's host binds: an IP address, `localhost`, or empty for
/// every interface.
fn bind_address(host: &str, port: u16) -> Option<SocketAddr> {
    let ip = match host {
        "" => std::net::IpAddr::from([0, 0, 0, 0]),
        "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        other => other.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

fn parse_timestamp_type(key: &str, value: &str) -> Result<TimestampType, ConfigError> {
    match value.trim() {
        "CreateTime" => Ok(TimestampType::CreateTime),
        "LogAppendTime" => Ok(TimestampType::LogAppendTime),
        other => Err(ConfigError::Invalid {
            key: key.into(),
            value: other.into(),
            reason: "CreateTime or LogAppendTime".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_use_kafka_names_and_units() {
        let mut config = BrokerConfig::default();
        config.set("num.partitions", "6").unwrap();
        config.set("log.retention.hours", "2").unwrap();
        config.set("listeners", "PLAINTEXT://localhost:0").unwrap();
        config.set("log.cleanup.policy", "compact,delete").unwrap();
        assert_eq!(config.num_partitions, 6);
        assert_eq!(config.log.retention_ms, 7_200_000);
        assert_eq!(
            config.listeners,
            [Listener {
                name: "PLAINTEXT".into(),
                address: SocketAddr::from(([127, 0, 0, 1], 0))
            }]
        );
        assert!(config.log.cleanup_compact && config.log.cleanup_delete);
    }

    #[test]
    fn listeners_are_named_and_advertised_per_name() {
        let mut config = BrokerConfig::default();
        config
            .set("listeners", "PLAINTEXT://:9092, internal://127.0.0.1:0")
            .unwrap();
        config
            .set(
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT",
            )
            .unwrap();
        config
            .set(
                "advertised.listeners",
                "PLAINTEXT://broker.example:19092,INTERNAL://10.0.0.5:0",
            )
            .unwrap();
        config.check().unwrap();
        let bound = [
            Listener {
                name: "PLAINTEXT".into(),
                address: "0.0.0.0:9092".parse().unwrap(),
            },
            Listener {
                name: "INTERNAL".into(),
                address: "127.0.0.1:40001".parse().unwrap(),
            },
        ];
        let endpoints: Vec<(String, String, u16)> = config
            .endpoints(&bound)
            .into_iter()
            .map(|e| (e.name, e.host, e.port))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("PLAINTEXT".into(), "broker.example".into(), 19092),
                ("INTERNAL".into(), "10.0.0.5".into(), 40001),
            ]
        );
        config.advertised_listeners = None;
        assert_eq!(config.endpoints(&bound)[0].host, "127.0.0.1");
    }

    #[test]
    fn listener_combinations_kafka_refuses_are_refused() {
        let checked = |settings: &[(&str, &str)]| {
            let mut config = BrokerConfig::default();
            for (key, value) in settings {
                config.set(key, value)?;
            }
            config.check()
        };
        let refused = |settings: &[(&str, &str)]| {
            assert!(
                matches!(checked(settings), Err(ConfigError::Invalid { .. })),
                "{settings:?} was accepted"
            );
        };
        refused(&[("listeners", "A://:1,A://:2")]);
        refused(&[
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,B:PLAINTEXT",
            ),
            ("listeners", "PLAINTEXT://:1,B://:1"),
        ]);
        refused(&[("listeners", "OTHER://:1")]);
        // A controller listener is PLAINTEXT or SSL: SASL is not served there.
        for protocol in ["SASL_SSL", "SASL_PLAINTEXT"] {
            refused(&[
                ("listeners", "PLAINTEXT://:9092,CONTROLLER://:9093"),
                (
                    "listener.security.protocol.map",
                    &format!("PLAINTEXT:PLAINTEXT,CONTROLLER:{protocol}"),
                ),
            ]);
        }
        refused(&[("listeners", "broker.example:9092")]);
        refused(&[("advertised.listeners", "OTHER://h:1")]);
        refused(&[("advertised.listeners", "PLAINTEXT://0.0.0.0:1")]);
        refused(&[("listener.security.protocol.map", "A:TLS")]);
        assert!(checked(&[("listeners", "localhost:0,B://[::1]:0")]).is_err());
        assert!(
            checked(&[
                ("listeners", "localhost:0,B://[::1]:0"),
                (
                    "listener.security.protocol.map",
                    "PLAINTEXT:PLAINTEXT,B:PLAINTEXT"
                ),
            ])
            .is_ok()
        );
    }

    #[test]
    fn ssl_listeners_serve_clients_and_their_settings_go_by_listener() {
        let mut config = BrokerConfig::default();
        config
            .set("listeners", "PLAINTEXT://:0,SSL://:0,MTLS://:0")
            .unwrap();
        config
            .set(
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL,CONTROLLER:PLAINTEXT",
            )
            .unwrap();
        config
            .set("ssl.keystore.location", "/etc/spool/broker.pem")
            .unwrap();
        config
            .set("listener.name.mtls.ssl.client.auth", "required")
            .unwrap();
        assert_eq!(config.check(), Ok(()));
        assert_eq!(
            config.ssl.client_auth("MTLS"),
            crate::tls::ClientAuth::Required
        );
        assert_eq!(config.ssl.client_auth("SSL"), crate::tls::ClientAuth::None);
        assert_eq!(
            config.ssl.get("MTLS", "keystore.location"),
            Some("/etc/spool/broker.pem")
        );
        assert!(matches!(
            config.set("listener.name.mtls.ssl.client.auth", "maybe"),
            Err(ConfigError::Invalid { .. })
        ));
        assert_eq!(
            config.set("listener.name.mtls.ssl.bogus", "1"),
            Err(ConfigError::Unknown("listener.name.mtls.ssl.bogus".into()))
        );
        // Brokers reach each other over any protocol; controllers only in plain TCP.
        config.set("inter.broker.listener.name", "SSL").unwrap();
        assert_eq!(config.check(), Ok(()));
        config
            .set(
                "listeners",
                "PLAINTEXT://:0,SSL://:0,MTLS://:0,CONTROLLER://:0",
            )
            .unwrap();
        config
            .set(
                "listener.security.protocol.map",
                "PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,CONTROLLER:SASL_SSL",
            )
            .unwrap();
        assert!(matches!(config.check(), Err(ConfigError::Invalid { .. })));
        config
            .set(
                "listener.security.protocol.map",
                "PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,CONTROLLER:SSL",
            )
            .unwrap();
        assert!(config.check().is_ok(), "{:?}", config.check());
    }

    #[test]
    fn unknown_and_invalid_settings_are_refused() {
        let mut config = BrokerConfig::default();
        assert_eq!(
            config.set("num.partitons", "6"),
            Err(ConfigError::Unknown("num.partitons".into()))
        );
        assert!(matches!(
            config.set("num.partitions", "0"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            config.set("auto.create.topics.enable", "maybe"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            config.set("replica.selector.class", "com.example.NearestSelector"),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn the_replica_socket_timeout_covers_the_fetch_wait() {
        let mut config = BrokerConfig::default();
        assert_eq!(config.replication.socket_timeout_ms, 30_000);
        config.set("replica.socket.timeout.ms", "400").unwrap();
        assert!(matches!(
            config.check(),
            Err(ConfigError::Invalid { ref key, .. }) if key == "replica.socket.timeout.ms"
        ));
        config.set("replica.fetch.wait.max.ms", "400").unwrap();
        assert_eq!(config.check(), Ok(()));
        assert!(matches!(
            config.set("replica.socket.timeout.ms", "0"),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn replica_selectors_are_named_by_kafka_class() {
        let mut config = BrokerConfig::default();
        assert_eq!(config.replication.selector, ReplicaSelector::Leader);
        config
            .set("replica.selector.class", ReplicaSelector::RACK_AWARE_CLASS)
            .unwrap();
        assert_eq!(config.replication.selector, ReplicaSelector::RackAware);
        config
            .set("replica.selector.class", ReplicaSelector::LEADER_CLASS)
            .unwrap();
        assert_eq!(config.replication.selector, ReplicaSelector::Leader);
    }

    #[test]
    fn a_cluster_node_names_its_voters_and_its_controller_listener() {
        let mut config = BrokerConfig::default();
        config
            .set("controller.quorum.voters", "1@127.0.0.1:9093, 2@[::1]:9094")
            .unwrap();
        assert_eq!(
            config.controller_quorum_voters,
            vec![
                Voter {
                    id: 1,
                    host: "127.0.0.1".into(),
                    port: 9093
                },
                Voter {
                    id: 2,
                    host: "::1".into(),
                    port: 9094
                },
            ]
        );
        for bad in ["1@host", "x@h:1", "1@h:0", "-1@h:1", "1@h:1,1@g:2", "h:1"] {
            assert!(
                config.set("controller.quorum.voters", bad).is_err(),
                "{bad}"
            );
        }
        // node.id 0 is not a voter, and there is no controller listener yet.
        let refused = config.check().unwrap_err().to_string();
        assert!(
            refused.contains("node.id 0 is not among the voters"),
            "{refused}"
        );
        config.set("node.id", "1").unwrap();
        let refused = config.check().unwrap_err().to_string();
        assert!(refused.contains("controller.listener.names"), "{refused}");
        config
            .set(
                "listeners",
                "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
            )
            .unwrap();
        config.check().unwrap();
        assert_eq!(
            config.controller_listener().map(|l| l.address.port()),
            Some(9093)
        );
        // The controller listener is neither advertised nor advertisable.
        let bound: Vec<Listener> = config.listeners.clone();
        let endpoints = config.endpoints(&bound);
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].name, "PLAINTEXT");
        config
            .set("advertised.listeners", "CONTROLLER://127.0.0.1:9093")
            .unwrap();
        assert!(config.check().is_err());
        // Only combined nodes for now.
        let mut config = BrokerConfig::default();
        config.set("process.roles", "controller").unwrap();
        assert!(config.check().is_err());
        assert!(config.set("process.roles", "observer").is_err());
        config.set("process.roles", "broker,controller").unwrap();
        config.check().unwrap();
    }
}
