//! Broker settings under Kafka's names and with Kafka's defaults.
//!
//! Every setting can be given by its Kafka name (`num.partitions`, `log.retention.ms`, …)
//! through [`BrokerConfig::set`], which the command line's `--set`, the TOML file and
//! `SPOOL_*` environment variables all end in. Topic-level defaults (`log.*`) become each
//! new partition's [`LogConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use spool_log::LogConfig;
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

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// Where the Kafka listener binds (`listeners`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The host clients are told to connect to (`advertised.listeners`); the bound
    /// address when unset.
    pub advertised_host: Option<String>,
    pub advertised_port: Option<u16>,
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
    /// The cluster ID reported in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// `log.retention.check.interval.ms`: how often retention, compaction, `flush.ms` and
    /// the removal of deleted segments run.
    pub log_retention_check_interval_ms: u64,
    /// Defaults for every partition log (`log.segment.bytes`, `log.retention.ms`, …).
    pub log: LogConfig,
    /// The settings given explicitly (file, environment, flags), as given: DescribeConfigs
    /// reports them as STATIC_BROKER_CONFIG.
    pub explicit: std::collections::BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
            advertised_port: None,
            data_dir: PathBuf::from("./spool-data"),
            num_partitions: 1,
            auto_create_topics_enable: true,
            socket_request_max_bytes: 100 * 1024 * 1024,
            connections_max_idle_ms: 10 * 60 * 1000,
            max_incremental_fetch_session_cache_slots: 1000,
            queued_max_requests_per_connection: 100,
            cluster_id: "spool-cluster".to_string(),
            log_retention_check_interval_ms: 5 * 60 * 1000,
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
            ("listeners", format!("PLAINTEXT://{}", self.listen)),
            ("log.dirs", self.data_dir.display().to_string()),
            ("num.partitions", self.num_partitions.to_string()),
            (
                "auto.create.topics.enable",
                self.auto_create_topics_enable.to_string(),
            ),
            (
                "socket.request.max.bytes",
                self.socket_request_max_bytes.to_string(),
            ),
            (
                "connections.max.idle.ms",
                self.connections_max_idle_ms.to_string(),
            ),
            (
                "max.incremental.fetch.session.cache.slots",
                self.max_incremental_fetch_session_cache_slots.to_string(),
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
            ("log.cleanup.policy", policy.to_string()),
            (
                "producer.id.expiration.ms",
                log.producer_id_expiration_ms.to_string(),
            ),
        ]
    }

    /// Sets one setting by its Kafka name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "node.id" | "broker.id" => self.node_id = parse(key, value)?,
            "listeners" => self.listen = parse_listener(key, value)?,
            "advertised.listeners" => {
                let address = value.trim().rsplit("://").next().unwrap_or(value).trim();
                let (host, port) =
                    address
                        .rsplit_once(':')
                        .ok_or_else(|| ConfigError::Invalid {
                            key: key.into(),
                            value: value.into(),
                            reason: "expected HOST:PORT".into(),
                        })?;
                self.advertised_host = Some(host.to_string());
                self.advertised_port = Some(parse(key, port)?);
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
            "log.retention.check.interval.ms" => {
                self.log_retention_check_interval_ms = parse(key, value)?
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
            "log.cleanup.policy" => {
                let policies: Vec<&str> = value.split(',').map(str::trim).collect();
                self.log.cleanup_delete = policies.contains(&"delete");
                self.log.cleanup_compact = policies.contains(&"compact");
            }
            _ => return Err(ConfigError::Unknown(key.to_string())),
        }
        self.explicit
            .insert(key.to_string(), value.trim().to_string());
        Ok(())
    }
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

fn parse_listener(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    // Accepts `HOST:PORT` and Kafka's `PLAINTEXT://HOST:PORT`.
    let address = value.trim().rsplit("://").next().unwrap_or(value).trim();
    let address = if address.starts_with(':') {
        format!("0.0.0.0{address}")
    } else {
        address.to_string()
    };
    let address = address.replace("localhost:", "127.0.0.1:");
    address
        .parse()
        .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            reason: e.to_string(),
        })
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
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert!(config.log.cleanup_compact && config.log.cleanup_delete);
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
    }
}
