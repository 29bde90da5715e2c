//! All the partition logs of one data directory.
//!
//! Each partition lives in a folder named as Kafka names it, `<topic>-<partition>`. A lock
//! file in the data directory keeps a second process (or a second broker in the same
//! process) from opening the same logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LogConfig;
use crate::error::LogError;
use crate::log::{OpenReport, PartitionLog};
use crate::storage::{LockGuard, Storage, remove_dir_with_files};

/// The name of the lock file in a data directory.
pub const LOCK_FILE: &str = ".lock";

/// A topic name and partition index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Parses a partition folder name; the partition is after the last `-`, since topic
    /// names may contain dashes.
    pub fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        if topic.is_empty()
            || partition.is_empty()
            || !partition.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(TopicPartition {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
        })
    }

    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

pub struct LogManager {
    storage: Arc<dyn Storage>,
    data_dir: PathBuf,
    logs: BTreeMap<TopicPartition, PartitionLog>,
    _lock: Box<dyn LockGuard>,
}

impl LogManager {
    /// Locks `data_dir` and opens every partition log in it, each with the config
    /// `config_for` gives. Fails with `WouldBlock` if another holder has the directory.
    pub fn open(
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        config_for: impl Fn(&TopicPartition) -> LogConfig,
        now_ms: i64,
    ) -> Result<(LogManager, Vec<(TopicPartition, OpenReport)>), LogError> {
        storage.create_dir_all(data_dir)?;
        let lock = storage.lock(&data_dir.join(LOCK_FILE))?;
        let mut logs = BTreeMap::new();
        let mut reports = Vec::new();
        for name in storage.list(data_dir)? {
            let Some(tp) = TopicPartition::from_dir_name(&name) else {
                continue;
            };
            let (log, report) = PartitionLog::open(
                Arc::clone(&storage),
                &data_dir.join(&name),
                config_for(&tp),
                now_ms,
            )?;
            reports.push((tp.clone(), report));
            logs.insert(tp, log);
        }
        Ok((
            LogManager {
                storage,
                data_dir: data_dir.to_path_buf(),
                logs,
                _lock: lock,
            },
            reports,
        ))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.logs.keys()
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<&PartitionLog> {
        self.logs.get(tp)
    }

    pub fn get_mut(&mut self, tp: &TopicPartition) -> Option<&mut PartitionLog> {
        self.logs.get_mut(tp)
    }

    /// The log of `tp`, created empty with `config` if it does not exist yet.
    pub fn get_or_create(
        &mut self,
        tp: &TopicPartition,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<&mut PartitionLog, LogError> {
        if !self.logs.contains_key(tp) {
            let dir = self.data_dir.join(tp.dir_name());
            let (log, _) = PartitionLog::open(Arc::clone(&self.storage), &dir, config, now_ms)?;
            // The new folder itself must survive a crash.
            self.storage.sync_dir(&self.data_dir)?;
            self.logs.insert(tp.clone(), log);
        }
        self.logs.get_mut(tp).ok_or(LogError::Offline)
    }

    /// Deletes a partition's log and its folder.
    pub fn delete(&mut self, tp: &TopicPartition) -> Result<bool, LogError> {
        let Some(log) = self.logs.remove(tp) else {
            return Ok(false);
        };
        let dir = log.dir().to_path_buf();
        drop(log);
        remove_dir_with_files(self.storage.as_ref(), &dir)?;
        self.storage.sync_dir(&self.data_dir)?;
        Ok(true)
    }

    /// Hands over the directory lock and every open log, for an owner that manages the
    /// logs itself (the broker shares each behind group commit). Dropping the guard
    /// releases the directory.
    pub fn into_parts(self) -> (Box<dyn LockGuard>, BTreeMap<TopicPartition, PartitionLog>) {
        (self._lock, self.logs)
    }

    /// Closes every log cleanly (flush, checkpoint, clean-shutdown marker) and releases the
    /// directory. Every log is closed even if one fails; the first error is returned.
    pub fn close(self) -> Result<(), LogError> {
        let mut first_error = None;
        for (_, log) in self.logs {
            if let Err(e) = log.close() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use spool_protocol::compression::Compression;
    use spool_protocol::record_batch::RecordBatchBuilder;

    #[test]
    fn partition_folder_names_split_at_the_last_dash() {
        assert_eq!(
            TopicPartition::from_dir_name("click-stream-12"),
            Some(TopicPartition::new("click-stream", 12))
        );
        assert_eq!(
            TopicPartition::from_dir_name("__consumer_offsets-0").map(|t| t.topic),
            Some("__consumer_offsets".into())
        );
        assert_eq!(TopicPartition::from_dir_name("orders"), None);
        assert_eq!(TopicPartition::from_dir_name("orders-"), None);
        assert_eq!(TopicPartition::from_dir_name(".lock"), None);
    }

    #[test]
    fn a_second_manager_cannot_open_a_locked_data_dir() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let dir = Path::new("/data");
        let (first, _) =
            LogManager::open(Arc::clone(&storage), dir, |_| LogConfig::default(), 0).unwrap();
        let err = LogManager::open(Arc::clone(&storage), dir, |_| LogConfig::default(), 0)
            .err()
            .unwrap();
        assert!(
            matches!(err, LogError::Storage(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{err}"
        );
        first.close().unwrap();
        assert!(
            LogManager::open(storage, dir, |_| LogConfig::default(), 0).is_ok(),
            "the lock is released on close"
        );
    }

    #[test]
    fn partitions_are_found_again_after_a_restart_and_can_be_deleted() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let dir = Path::new("/data");
        let (mut manager, _) =
            LogManager::open(Arc::clone(&storage), dir, |_| LogConfig::default(), 0).unwrap();
        for tp in [
            TopicPartition::new("orders", 0),
            TopicPartition::new("orders", 1),
            TopicPartition::new("click-stream", 0),
        ] {
            let log = manager.get_or_create(&tp, LogConfig::default(), 0).unwrap();
            let mut builder = RecordBatchBuilder::new(Compression::None);
            builder
                .append(0, None, Some(tp.to_string().as_bytes()), &[])
                .unwrap();
            log.append_as_leader(builder.build().unwrap(), 0, 0)
                .unwrap();
        }
        manager.close().unwrap();

        let (mut manager, reports) =
            LogManager::open(Arc::clone(&storage), dir, |_| LogConfig::default(), 0).unwrap();
        assert_eq!(reports.len(), 3);
        assert!(reports.iter().all(|(_, r)| r.clean_shutdown));
        assert_eq!(
            manager
                .get(&TopicPartition::new("click-stream", 0))
                .map(PartitionLog::log_end_offset),
            Some(1)
        );
        assert!(manager.delete(&TopicPartition::new("orders", 1)).unwrap());
        manager.close().unwrap();
        let (manager, _) = LogManager::open(storage, dir, |_| LogConfig::default(), 0).unwrap();
        let left: Vec<String> = manager.partitions().map(ToString::to_string).collect();
        assert_eq!(
            left,
            vec!["click-stream-0".to_string(), "orders-0".to_string()]
        );
    }
}
