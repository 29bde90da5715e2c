//! The group coordinator: consumer groups and their committed offsets, kept as records in
//! the internal compacted topic `__consumer_offsets`, as Kafka keeps them.
//!
//! A group belongs to partition `hash(group.id) % offsets.topic.num.partitions` of that
//! topic ([`partition_for`]); the leader of the partition coordinates it. Each partition's
//! groups are one [`shard::Shard`]: a state machine with time passed in, which answers a
//! request with the records to append and the responses to send. [`runtime`] appends the
//! records and releases the responses once they are durable; at start it loads every
//! partition back into its shard, answering COORDINATOR_LOAD_IN_PROGRESS meanwhile.

pub mod assign;
pub mod consumer;
pub mod lag;
pub mod records;
pub mod runtime;
pub mod shard;

pub use records::GroupRecord;
pub use runtime::GroupCoordinator;
pub use shard::Shard;

/// The internal topic holding groups and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The group coordinator's settings, under Kafka's names and with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: u64,
    /// `group.initial.rebalance.delay.ms`: how long a new group waits for more members
    /// before its first rebalance completes.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.max.size`: members a classic group may have.
    pub max_size: usize,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`: the longest metadata string a commit may carry.
    pub offset_metadata_max_bytes: usize,
    /// `group.consumer.session.timeout.ms`: how long a consumer group member may go
    /// without a heartbeat.
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`: how often consumer group members heartbeat.
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`: members a consumer group may have.
    pub consumer_max_size: usize,
    /// `group.consumer.assignors`: the server-side assignors, the first the default.
    pub consumer_assignors: Vec<String>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_partitions: 50,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_size: i32::MAX as usize,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_max_size: i32::MAX as usize,
            consumer_assignors: assign::ASSIGNORS.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// The partition of `__consumer_offsets` that holds `group_id`: Kafka's
/// `abs(groupId.hashCode()) % partitions`, with Java's string hash over UTF-16 code units,
/// so a group lands on the same partition as in Kafka.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let hash = group_id.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    (hash & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_on_the_partition_kafka_picks() {
        // Values of Java's String.hashCode: "" is 0, "a" is 97, "group" is 98_629_247.
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("a", 50), 97 % 50);
        assert_eq!(partition_for("group", 50), 98_629_247 % 50);
        // "spool-group" hashes to -1_158_124_991: masked to 989_358_657, not negated.
        assert_eq!(partition_for("spool-group", 50), 7);
    }
}
