//! The quorum's storage: the Raft log in the partition log `__cluster_metadata-0` with the
//! vote beside it, and the state machine that applies committed entries to the image and
//! keeps its newest snapshot in a `.checkpoint` file in the same directory.

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

/// A snapshot file's suffix (KRaft's).
pub const CHECKPOINT_SUFFIX: &str = ".checkpoint";

/// The metadata log: segments of `segment_bytes`, no compaction, and retention applied
/// by the quorum, never by the log itself ([`LogStore::purgeable`]).
pub fn metadata_log_config(
    segment_bytes: u64,
    retention_bytes: i64,
    retention_ms: i64,
) -> LogConfig {
    LogConfig {
        segment_bytes,
        retention_ms,
        retention_bytes,
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
    /// Bytes of entries appended since the log was opened.
    appended_bytes: u64,
    /// Told of every commit index Raft learns.
    machine: Option<ImageMachine>,
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
        config: LogConfig,
        clock: fn() -> i64,
    ) -> Result<LogStore, StorageError<u64>> {
        let (log, _) = PartitionLog::open(storage.clone(), dir, config, clock())
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
                appended_bytes: 0,
                machine: None,
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

    /// Tells `machine` of the commit index whenever Raft learns it, so that it publishes
    /// once it has caught up ([`ImageMachine::commit_known`]).
    pub fn tell_commits_to(&self, machine: ImageMachine) {
        self.lock().machine = Some(machine);
    }

    /// Bytes of entries appended since the log was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.lock().appended_bytes
    }

    /// The last entry removed from the log's start, if any.
    pub fn last_purged(&self) -> Option<LogId<u64>> {
        self.lock().state.last_purged
    }

    /// The last entry the log's retention lets go, given that a snapshot holds every entry
    /// up to `snapshot`: the end of the oldest segments past the retention limits (bytes,
    /// age) that the snapshot covers whole. As in KRaft, nothing goes before a snapshot
    /// covers it, so the limits are soft.
    pub fn purgeable(&self, snapshot: u64) -> Option<u64> {
        let inner = self.lock();
        let bound = i64::try_from(snapshot).ok()?.checked_add(1)?;
        let start = inner.log.retention_point((inner.clock)(), bound)?;
        u64::try_from(start - 1).ok()
    }

    /// The offset of the first entry still kept.
    pub fn start_offset(&self) -> i64 {
        self.lock().log.log_start_offset()
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
        let machine = {
            let mut inner = self.lock();
            inner.committed = committed;
            inner.machine.clone()
        };
        if let (Some(machine), Some(committed)) = (machine, committed) {
            machine.commit_known(committed.index);
        }
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
                inner.appended_bytes += value.len() as u64;
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
        let start = log_id.index as i64 + 1;
        if start > inner.log.log_end_offset() {
            // Past the end: a snapshot installed on a voter that was behind replaces its
            // whole log, and the next entry follows the snapshot.
            inner
                .log
                .truncate_fully_and_start_at(start)
                .map_err(|e| log_error(ErrorVerb::Delete, e))?;
        } else {
            inner
                .log
                .advance_log_start_offset(start)
                .map_err(|e| log_error(ErrorVerb::Delete, e))?;
        }
        // The metadata log has no retention task to remove retired segments later.
        inner
            .log
            .purge_deleted()
            .map_err(|e| log_error(ErrorVerb::Delete, e))?;
        Ok(())
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
    /// Nothing is published until the image has reached the commit index first learnt
    /// from a leader: a node starting from its own snapshot or log would otherwise show
    /// the rest of Spool the cluster as it was when the node stopped (KRaft's loader
    /// waits for the high watermark the same way).
    caught_up: bool,
    /// The highest commit index learnt.
    known_commit: Option<u64>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
}

/// The state machine: the image, built from committed entries and published after each
/// batch of them.
#[derive(Clone)]
pub struct ImageMachine {
    inner: Arc<Mutex<MachineInner>>,
}

/// The largest snapshot file read back (the largest the quorum's messages carry).
const CHECKPOINT_BYTES_MAX: u64 = 64 << 20;

/// A snapshot's file name, as KRaft names them: the offset after its last entry and that
/// entry's term (epoch).
fn checkpoint_name(last: &LogId<u64>) -> String {
    format!(
        "{:020}-{:010}{CHECKPOINT_SUFFIX}",
        last.index + 1,
        last.leader_id.term
    )
}

/// The end offset in a snapshot file's name.
fn checkpoint_offset(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(CHECKPOINT_SUFFIX)?;
    let (offset, epoch) = stem.split_once('-')?;
    epoch.parse::<u64>().ok()?;
    offset.parse().ok()
}

fn checkpoint_error(verb: ErrorVerb, error: impl ToString) -> StorageError<u64> {
    io_error(ErrorSubject::Snapshot(None), verb, error)
}

impl ImageMachine {
    /// Starts from the newest readable snapshot in `dir`, or from an empty image.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
    ) -> Result<(ImageMachine, watch::Receiver<Published>), StorageError<u64>> {
        let mut names: Vec<(u64, String)> = storage
            .list(dir)
            .map_err(|e| checkpoint_error(ErrorVerb::Read, e))?
            .into_iter()
            .filter_map(|name| Some((checkpoint_offset(&name)?, name)))
            .collect();
        names.sort();
        let mut newest = None;
        for (_, name) in names.iter().rev() {
            let read = read_whole(storage.as_ref(), &dir.join(name), CHECKPOINT_BYTES_MAX)
                .map_err(|e| e.to_string())
                .and_then(|bytes| codec::decode_checkpoint(bytes.into()).map_err(|e| e.to_string()))
                .and_then(|snapshot| {
                    let image = rebuild(&snapshot.snapshot).map_err(|e| e.to_string())?;
                    Ok((snapshot, image))
                });
            match read {
                Ok(found) => {
                    newest = Some(found);
                    break;
                }
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "unreadable metadata snapshot skipped")
                }
            }
        }
        let (publish, published) = watch::channel(Published::default());
        let mut inner = MachineInner {
            image: MetadataImage::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            publish,
            caught_up: false,
            known_commit: None,
            storage,
            dir: dir.to_path_buf(),
        };
        if let Some((snapshot, image)) = newest {
            inner.restore(snapshot, image);
        }
        let machine = ImageMachine {
            inner: Arc::new(Mutex::new(inner)),
        };
        Ok((machine, published))
    }

    /// The last entry the image includes.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.lock().last_applied
    }

    /// Raft has learnt that entries up to `index` are committed.
    pub fn commit_known(&self, index: u64) {
        let mut inner = self.lock();
        inner.known_commit = inner.known_commit.max(Some(index));
        if !inner.caught_up {
            inner.publish();
        }
    }

    fn lock(&self) -> MutexGuard<'_, MachineInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MachineInner {
    /// Publishes the image, once it has caught up with the first commit index learnt.
    fn publish(&mut self) {
        if !self.caught_up {
            let applied = self.last_applied.map(|l| l.index);
            if self.known_commit.is_none() || applied < self.known_commit {
                return;
            }
            self.caught_up = true;
        }
        let offset = self.last_applied.map_or(-1, |l| l.index as i64);
        self.publish.send_replace(Published {
            image: Arc::new(self.image.clone()),
            offset,
        });
    }

    /// Makes `snapshot`, whose records built `image`, the state: image, applied position,
    /// membership and current snapshot.
    fn restore(&mut self, snapshot: Snapshot<Quorum>, image: MetadataImage) {
        self.image = image;
        self.last_applied = snapshot.meta.last_log_id;
        self.membership = snapshot.meta.last_membership.clone();
        self.snapshot = Some(snapshot);
    }

    /// Writes `snapshot` to its file (synced), then removes older snapshot files.
    fn persist(&self, snapshot: &Snapshot<Quorum>) -> Result<(), StorageError<u64>> {
        let Some(last) = &snapshot.meta.last_log_id else {
            return Ok(());
        };
        let name = checkpoint_name(last);
        let bytes = codec::encode_checkpoint(snapshot)
            .map_err(|e| checkpoint_error(ErrorVerb::Write, e))?;
        write_atomically(self.storage.as_ref(), &self.dir.join(&name), &bytes)
            .map_err(|e| checkpoint_error(ErrorVerb::Write, e))?;
        let names = self
            .storage
            .list(&self.dir)
            .map_err(|e| checkpoint_error(ErrorVerb::Read, e))?;
        for older in names {
            if checkpoint_offset(&older).is_some_and(|offset| offset <= last.index && older != name)
            {
                self.storage
                    .remove_file(&self.dir.join(&older))
                    .map_err(|e| checkpoint_error(ErrorVerb::Delete, e))?;
            }
        }
        Ok(())
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

/// The image a snapshot's records build.
fn rebuild(snapshot: &ImageSnapshot) -> Result<MetadataImage, codec::CodecError> {
    let mut image = MetadataImage::default();
    for record in &codec::decode_records(snapshot.records.clone())? {
        image.apply(record);
    }
    Ok(image)
}

impl RaftSnapshotBuilder<Quorum> for ImageMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Quorum>, StorageError<u64>> {
        let mut inner = self.lock();
        let snapshot = inner.snapshot()?;
        inner.persist(&snapshot)?;
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
        let image = rebuild(&snapshot).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        let snapshot = Snapshot {
            meta: meta.clone(),
            snapshot,
        };
        let mut inner = self.lock();
        inner.persist(&snapshot)?;
        inner.restore(snapshot, image);
        // A leader's snapshot holds only committed entries.
        let last = meta.last_log_id.map(|l| l.index);
        inner.known_commit = inner.known_commit.max(last);
        inner.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<Quorum>>, StorageError<u64>> {
        Ok(self.lock().snapshot.clone())
    }
}
