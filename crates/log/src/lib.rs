//! Spool's partition log engine: the database every topic, consumer offset and transaction
//! lives in.
//!
//! A [`PartitionLog`] is a directory of segments (`<20-digit base offset>.log` with its
//! `.index` and `.timeindex`) holding record batches exactly as produced, with offsets
//! assigned by the log. It appends, reads byte ranges of segment files for zero-copy
//! fetches, finds offsets by timestamp, truncates for replication, advances its log start
//! offset, makes appends durable on [`PartitionLog::flush`], and recovers at open by
//! scanning only what was not yet durable. It also keeps idempotent producers' state
//! ([`producer_state`]) to refuse out-of-order batches and recognise retries. All file access goes through [`storage`], so
//! tests can inject disk faults and power cuts.

pub mod config;
pub mod error;
pub mod group_commit;
pub mod index;
pub mod leader_epoch;
pub mod log;
pub mod manager;
pub mod producer_state;
pub mod segment;
pub mod storage;
pub mod txn_index;

pub use config::LogConfig;
pub use error::LogError;
pub use group_commit::SharedLog;
pub use log::{
    AppendInfo, BatchFilter, CleanReport, FileRange, FlushTicket, KeepAllBatches, LogRead,
    OpenReport, PartitionLog,
};
pub use manager::{LogManager, TopicPartition};
pub use storage::{DiskStorage, Faults, FilesystemSync, MemStorage, Storage};
