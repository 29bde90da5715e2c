//! The log's errors and the Kafka error codes they become at the API edge.

use std::io;

use spool_protocol::DecodeError;
use spool_protocol::ErrorCode;
use spool_protocol::record_batch::batch_error_code;
use thiserror::Error;

use crate::producer_state::ProducerError;

#[derive(Debug, Error)]
pub enum LogError {
    /// The disk failed under this log. It stays failed: nothing pretends a failed write or
    /// fsync succeeded.
    #[error("storage failed: {0}")]
    Storage(#[from] io::Error),
    #[error("the log is offline after an earlier storage failure")]
    Offline,
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] DecodeError),
    #[error("rewriting a batch failed: {0}")]
    Rewrite(#[from] spool_protocol::EncodeError),
    #[error("record timestamp {timestamp} is outside the allowed range around {now_ms}")]
    InvalidTimestamp { timestamp: i64, now_ms: i64 },
    #[error("batch of {size} bytes exceeds max.message.bytes ({max})")]
    MessageTooLarge { size: u64, max: u64 },
    #[error(transparent)]
    Producer(#[from] crate::producer_state::ProducerError),
    #[error("offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
}

impl LogError {
    /// The error code a client sees for this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            LogError::Storage(_) | LogError::Offline => ErrorCode::KafkaStorageError,
            LogError::InvalidBatch(e) => batch_error_code(e),
            LogError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            LogError::InvalidTimestamp { .. } => ErrorCode::InvalidTimestamp,
            LogError::Rewrite(_) => ErrorCode::UnknownServerError,
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Producer(ProducerError::InvalidEpoch { .. }) => {
                ErrorCode::InvalidProducerEpoch
            }
            LogError::Producer(ProducerError::OutOfOrderSequence { .. }) => {
                ErrorCode::OutOfOrderSequenceNumber
            }
            LogError::Producer(ProducerError::InvalidTxnState { .. }) => ErrorCode::InvalidTxnState,
            LogError::Producer(ProducerError::CoordinatorFenced { .. }) => {
                ErrorCode::TransactionCoordinatorFenced
            }
        }
    }
}
