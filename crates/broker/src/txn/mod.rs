//! The transaction coordinator: transactional IDs and their transactions, kept as records
//! in the internal compacted topic `__transaction_state`, as Kafka keeps them.
//!
//! A transactional ID belongs to partition `hash(id) % transaction.state.log.num.partitions`
//! (the same hash as groups). Each partition's transactions are one [`shard::TxnShard`]: a
//! state machine with time passed in, which answers a request with the records to append
//! and, when a transaction ends, the markers to write. [`runtime`] appends the records,
//! waits for them to be durable, writes the markers to the transaction's partitions and
//! completes the transaction; at start it loads every partition back and finishes the
//! transactions a crash left half-ended.

pub mod records;
pub mod runtime;
pub mod shard;

pub use runtime::TxnCoordinator;
pub use shard::TxnShard;

/// The internal topic holding transactional IDs and their transactions.
pub const TXN_TOPIC: &str = "__transaction_state";

/// The transaction coordinator's settings, under Kafka's names and with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`.
    pub topic_partitions: i32,
    /// `transaction.state.log.segment.bytes`.
    pub topic_segment_bytes: u64,
    /// `transaction.max.timeout.ms`: the longest transaction timeout a producer may ask for.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: how long a transactional ID with no transaction
    /// open is kept after its last use.
    pub id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub abort_timed_out_interval_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub remove_expired_interval_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            topic_partitions: 50,
            topic_segment_bytes: 100 * 1024 * 1024,
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            abort_timed_out_interval_ms: 10_000,
            remove_expired_interval_ms: 3_600_000,
        }
    }
}

/// The partition of `__transaction_state` that holds `transactional_id`.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::partition_for(transactional_id, partitions)
}

/// The error an older client understands: PRODUCER_FENCED (KIP-588) is answered as
/// INVALID_PRODUCER_EPOCH to requests older than `fenced_since`, as Kafka does.
pub fn for_version(
    error: spool_protocol::ErrorCode,
    version: i16,
    fenced_since: i16,
) -> spool_protocol::ErrorCode {
    if error == spool_protocol::ErrorCode::ProducerFenced && version < fenced_since {
        spool_protocol::ErrorCode::InvalidProducerEpoch
    } else {
        error
    }
}

#[cfg(test)]
mod shard_tests;
