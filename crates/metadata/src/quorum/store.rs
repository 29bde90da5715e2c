//! The quorum's storage: the Raft log in the partition log `__cluster_metadata-0` with the
//! vote beside it, and the state machine that applies committed entries to the image.

// openraft's storage traits fix the error type, `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use spool_log::storage::{read_whole, write_atomically};
use spool_log::{LogConfig, PartitionLog, Storage};
use spool_protocol::compression::Compression;
use spool_protocol::record_batch::RecordBatchBuilder;
use tokio::sync::watch;

use super::codec::{self, QuorumState};
use super::{Published, Quorum};
use crate::MetadataImage;

/// The file beside the log that holds the vote (KRaft's name).
pub const QUORUM_STATE_FILE: &str = "quorum-state";

/// The metadata log keeps everything: no retention, no compaction. Snapshots let the quorum
/// drop a prefix instead.
pub fn metadata_log_config() -> LogConfig {
    LogConfig {
        retention_ms: -1,
        retention_bytes: -1,
        cleanup_delete: false,
        cleanup_compact: false,
        ..LogConfig::default()
    }
}

fn io_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    error: impl ToString,
) -> StorageError<u64> {
    StorageIOError::new(subject, verb, openraft::AnyError::error(error.to_string())).into()
}

fn log_error(verb: ErrorVerb, error: impl ToString) -> StorageError<u64> {
    io_error(ErrorSubject::Logs, verb, error)
}

struct LogInner {
    log: PartitionLog,
    storage: Arc<dyn Storage>,
    state_path: PathBuf,
    state: QuorumState,
    committed: Option<LogId<u64>>,
    clock: fn() -> i64,
}

/// The Raft log: cheap to clone; clones share the log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens the log in `dir` (created if missing) and its quorum state (written at once
    /// if missing).
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        clock: fn() -> i64,
    ) -> Result<LogStore, StorageError<u64>> {
        let (log, _) = PartitionLog::open(storage.clone(), dir, metadata_log_config(), clock())
            .map_err(|e| log_error(ErrorVerb::Read, e))?;
        let state_path = dir.join(QUORUM_STATE_FILE);
        let state = if storage.exists(&state_path) {
            let read = read_whole(storage.as_ref(), &state_path, 4096)
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?;
            QuorumState::decode(&String::from_utf8_lossy(&read))
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?
        } else {
            QuorumState::default()
        };
        let fresh = !storage.exists(&state_path);
        let store = LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                log,
                storage,
                state_path,
                state,
                committed: None,
                clock,
            })),
        };
        // The state file is written before the first entry, so a quorum log never lacks
        // it: a log of records without one is from before the quorum.
        if fresh {
            store.lock().save_state()?;
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the log cleanly (a checkpoint, so the next open need not recover it).
    pub fn close(&self) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner
            .log
            .write_checkpoint()
            .map_err(|e| log_error(ErrorVerb::Write, e))
    }

    /// Whether this log has never been part of a quorum: no vote, no entry.
    pub fn is_pristine(&self) -> bool {
        let inner = self.lock();
        inner.state.vote.is_none()
            && inner.state.last_purged.is_none()
            && inner.log.log_end_offset() == 0
    }
}

impl LogInner {
    fn save_state(&self) -> Result<(), StorageError<u64>> {
        write_atomically(
            self.storage.as_ref(),
            &self.state_path,
            self.state.encode().as_bytes(),
        )
        .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    /// The entries with indexes in `[start, end)`.
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry<Quorum>>, StorageError<u64>> {
        let end = end.min(self.log.log_end_offset().max(0) as u64);
        let start = start.max(self.log.log_start_offset().max(0) as u64);
        let mut entries = Vec::new();
        type Failure = Box<dyn std::error::Error + Send + Sync>;
        self.log
            .for_each_batch(start as i64, end as i64, |batch| {
                let term = u64::try_from(batch.partition_leader_epoch())
                    .map_err(|_| Failure::from("negative term"))?;
                for record in batch.records(64 << 20)? {
                    let record = record?;
                    let index = record.offset as u64;
                    if index < start || index >= end {
                        continue;
                    }
                    entries.push(Entry {
                        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
                        payload: codec::decode_payload(record.value.unwrap_or_default())?,
                    });
                }
                Ok::<(), Failure>(())
            })
            .map_err(|e| log_error(ErrorVerb::Read, e))?;
        Ok(entries)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<Quorum> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Quorum>>, StorageError<u64>> {
        let (start, end) = bounds(&range);
        self.lock().entries(start, end)
    }
}

impl RaftLogStorage<Quorum> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Quorum>, StorageError<u64>> {
        let inner = self.lock();
        let end = inner.log.log_end_offset();
        let last = if end > inner.log.log_start_offset() {
            inner
                .entries(end as u64 - 1, end as u64)?
                .pop()
                .map(|e| e.log_id)
        } else {
            None
        };
        let last_purged = inner.state.last_purged;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner.state.vote = Some(*vote);
        inner.save_state()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().state.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Quorum>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Quorum>> + Send,
        I::IntoIter: Send,
    {
        let result = (|| {
            let mut inner = self.lock();
            let now = (inner.clock)();
            for entry in entries {
                let index = entry.log_id.index;
                if index as i64 != inner.log.log_end_offset() {
                    return Err(log_error(
                        ErrorVerb::Write,
                        format!(
                            "entry {index} does not follow the log end {}",
                            inner.log.log_end_offset()
                        ),
                    ));
                }
                let value = codec::encode_payload(&entry.payload)
                    .map_err(|e| log_error(ErrorVerb::Write, e))?;
                let mut builder = RecordBatchBuilder::new(Compression::None);
                builder
                    .append(now, None, Some(&value), &[])
                    .map_err(|e| log_error(ErrorVerb::Write, e))?;
                let batch = builder
                    .build()
                    .map_err(|e| log_error(ErrorVerb::Write, e))?;
                let term = i32::try_from(entry.log_id.leader_id.term)
                    .map_err(|_| log_error(ErrorVerb::Write, "term out of range"))?;
                inner
                    .log
                    .append_as_leader(batch, term, now)
                    .map_err(|e| log_error(ErrorVerb::Write, e))?;
            }
            inner
                .log
                .flush()
                .map_err(|e| log_error(ErrorVerb::Write, e))?;
            Ok(())
        })();
        let io = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        callback.log_io_completed(io);
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner
            .log
            .truncate_to(log_id.index as i64)
            .map_err(|e| log_error(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        // The term of the last purged entry must survive: record it before the entries go.
        inner.state.last_purged = Some(log_id);
        inner.save_state()?;
        let start = (log_id.index as i64 + 1).min(inner.log.log_end_offset());
        inner
            .log
            .advance_log_start_offset(start)
            .map_err(|e| log_error(ErrorVerb::Delete, e))
    }
}

/// A snapshot's data: the metadata records that rebuild the image.
#[derive(Debug, Clone)]
pub struct ImageSnapshot {
    pub records: bytes::Bytes,
}

struct MachineInner {
    image: MetadataImage,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    snapshot: Option<Snapshot<Quorum>>,
    publish: watch::Sender<Published>,
}

/// The state machine: the image, built from committed entries and published after each
/// batch of them.
#[derive(Clone)]
pub struct ImageMachine {
    inner: Arc<Mutex<MachineInner>>,
}

impl ImageMachine {
    pub fn new() -> (ImageMachine, watch::Receiver<Published>) {
        let (publish, published) = watch::channel(Published::default());
        let machine = ImageMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                image: MetadataImage::default(),
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                publish,
            })),
        };
        (machine, published)
    }

    fn lock(&self) -> MutexGuard<'_, MachineInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MachineInner {
    fn publish(&self) {
        let offset = self.last_applied.map_or(-1, |l| l.index as i64);
        self.publish.send_replace(Published {
            image: Arc::new(self.image.clone()),
            offset,
        });
    }

    fn snapshot(&self) -> Result<Snapshot<Quorum>, StorageError<u64>> {
        let records = codec::encode_records(&self.image.to_records())
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        let snapshot_id = match &self.last_applied {
            Some(l) => format!("{}-{}", l.leader_id.term, l.index),
            None => "empty".into(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            snapshot: Box::new(ImageSnapshot { records }),
        })
    }
}

impl RaftSnapshotBuilder<Quorum> for ImageMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Quorum>, StorageError<u64>> {
        let mut inner = self.lock();
        let snapshot = inner.snapshot()?;
        inner.snapshot = Some(snapshot.clone());
        Ok(snapshot)
    }
}

impl RaftStateMachine<Quorum> for ImageMachine {
    type SnapshotBuilder = ImageMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Quorum>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(change) => {
                    for record in &change.0 {
                        inner.image.apply(record);
                    }
                }
                EntryPayload::Membership(membership) => {
                    inner.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                }
            }
            inner.last_applied = Some(entry.log_id);
            replies.push(());
        }
        inner.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> ImageMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<ImageSnapshot>, StorageError<u64>> {
        Ok(Box::new(ImageSnapshot {
            records: bytes::Bytes::new(),
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<ImageSnapshot>,
    ) -> Result<(), StorageError<u64>> {
        let records = codec::decode_records(snapshot.records.clone()).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        let mut image = MetadataImage::default();
        for record in &records {
            image.apply(record);
        }
        let mut inner = self.lock();
        inner.image = image;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(Snapshot {
            meta: meta.clone(),
            snapshot,
        });
        inner.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<Quorum>>, StorageError<u64>> {
        Ok(self.lock().snapshot.clone())
    }
}
