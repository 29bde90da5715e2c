//! Kafka's topic-level configs: name, default, type and the broker setting that supplies
//! the default (its synonym), for validation and for DescribeConfigs' sources and synonyms.

/// DescribeConfigs' `config_source` values.
pub mod source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const DYNAMIC_BROKER_CONFIG: i8 = 2;
    pub const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

/// DescribeConfigs' `config_type` values (version 3 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker setting whose value is the default for every topic.
    pub broker_synonym: Option<&'static str>,
    pub default: &'static str,
    pub kind: ConfigType,
}

const fn def(
    name: &'static str,
    broker_synonym: Option<&'static str>,
    default: &'static str,
    kind: ConfigType,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        broker_synonym,
        default,
        kind,
    }
}

use ConfigType::{Boolean, Double, Int, List, Long, String};

pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def("cleanup.policy", Some("log.cleanup.policy"), "delete", List),
    def(
        "compression.type",
        Some("compression.type"),
        "producer",
        String,
    ),
    def(
        "delete.retention.ms",
        Some("log.cleaner.delete.retention.ms"),
        "86400000",
        Long,
    ),
    def(
        "file.delete.delay.ms",
        Some("log.segment.delete.delay.ms"),
        "60000",
        Long,
    ),
    def(
        "flush.messages",
        Some("log.flush.interval.messages"),
        "9223372036854775807",
        Long,
    ),
    def(
        "flush.ms",
        Some("log.flush.interval.ms"),
        "9223372036854775807",
        Long,
    ),
    def("follower.replication.throttled.replicas", None, "", List),
    def(
        "index.interval.bytes",
        Some("log.index.interval.bytes"),
        "4096",
        Int,
    ),
    def("leader.replication.throttled.replicas", None, "", List),
    def(
        "local.retention.bytes",
        Some("log.local.retention.bytes"),
        "-2",
        Long,
    ),
    def(
        "local.retention.ms",
        Some("log.local.retention.ms"),
        "-2",
        Long,
    ),
    def(
        "max.compaction.lag.ms",
        Some("log.cleaner.max.compaction.lag.ms"),
        "9223372036854775807",
        Long,
    ),
    def(
        "max.message.bytes",
        Some("message.max.bytes"),
        "1048588",
        Int,
    ),
    def(
        "message.timestamp.after.max.ms",
        Some("log.message.timestamp.after.max.ms"),
        "3600000",
        Long,
    ),
    def(
        "message.timestamp.before.max.ms",
        Some("log.message.timestamp.before.max.ms"),
        "9223372036854775807",
        Long,
    ),
    def(
        "message.timestamp.type",
        Some("log.message.timestamp.type"),
        "CreateTime",
        String,
    ),
    def(
        "min.cleanable.dirty.ratio",
        Some("log.cleaner.min.cleanable.ratio"),
        "0.5",
        Double,
    ),
    def(
        "min.compaction.lag.ms",
        Some("log.cleaner.min.compaction.lag.ms"),
        "0",
        Long,
    ),
    def("min.insync.replicas", Some("min.insync.replicas"), "1", Int),
    def("preallocate", Some("log.preallocate"), "false", Boolean),
    def("remote.storage.enable", None, "false", Boolean),
    def("retention.bytes", Some("log.retention.bytes"), "-1", Long),
    def("retention.ms", Some("log.retention.ms"), "604800000", Long),
    def(
        "segment.bytes",
        Some("log.segment.bytes"),
        "1073741824",
        Int,
    ),
    def(
        "segment.index.bytes",
        Some("log.index.size.max.bytes"),
        "10485760",
        Int,
    ),
    def("segment.jitter.ms", Some("log.roll.jitter.ms"), "0", Long),
    def("segment.ms", Some("log.roll.ms"), "604800000", Long),
    def(
        "unclean.leader.election.enable",
        Some("unclean.leader.election.enable"),
        "false",
        Boolean,
    ),
];

pub fn find(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The topic config whose default the broker setting `name` supplies. These broker settings
/// are the ones that may be changed while the broker runs (Kafka's dynamic log settings).
pub fn by_broker_synonym(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.broker_synonym == Some(name))
}
