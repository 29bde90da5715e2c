//! Topic-level log settings, under Kafka's names and with Kafka's defaults.

use spool_protocol::record_batch::TimestampType;

/// The settings one partition log follows.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment past this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment after this long.
    pub segment_ms: i64,
    /// `segment.index.bytes`: the size of each index; a full index rolls the segment.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`: log bytes between index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: u64,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: how far in the past a CreateTime record may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future a CreateTime record may be.
    /// The log's own default is unbounded; the broker applies Kafka's (one hour).
    pub timestamp_after_max_ms: i64,
    /// The most bytes a batch may decompress to while the log looks inside it.
    pub decompressed_batch_bytes_max: usize,
    /// `retention.ms`: delete closed segments whose newest record is older; -1 keeps all.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest closed segments while the log is larger; -1
    /// keeps all.
    pub retention_bytes: i64,
    /// `cleanup.policy` contains `delete`: retention applies.
    pub cleanup_delete: bool,
    /// `cleanup.policy` contains `compact`: keep the latest record per key; records
    /// without a key are refused.
    pub cleanup_compact: bool,
    /// `min.cleanable.dirty.ratio`: clean once this share of the cleanable bytes is dirty.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records stay uncompacted at least this long.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty segment older than this is cleaned regardless of
    /// the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`: how long tombstones stay after their segment's newest record.
    pub delete_retention_ms: i64,
    /// The most keys one cleaning pass maps (the memory it may use).
    pub cleaner_keys_max: usize,
    /// `flush.messages`: flush once this many messages are unflushed (acks=1 topics).
    pub flush_messages: i64,
    /// `flush.ms`: flush once the oldest unflushed message is this old.
    pub flush_ms: i64,
    /// `producer.id.expiration.ms` (a broker setting): idempotent producers idle this
    /// long are forgotten by the partition.
    pub producer_id_expiration_ms: i64,
    /// `min.insync.replicas`: an acks=all write needs this many in-sync replicas. The
    /// log keeps it for the partition's leader; it does not act on it.
    pub min_insync_replicas: i32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            max_message_bytes: 1024 * 1024 + 12,
            message_timestamp_type: TimestampType::CreateTime,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
            decompressed_batch_bytes_max: 64 * 1024 * 1024,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            cleanup_delete: true,
            cleanup_compact: false,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            cleaner_keys_max: 1_000_000,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            min_insync_replicas: 1,
        }
    }
}
