//! The broker's flusher: one thread that makes acks=all appends durable for every
//! partition at once.
//!
//! Produce handlers ask [`Flusher::wait_durable`] and await an answer without holding a
//! thread. The flusher takes every request queued since its last round, captures what
//! each of those partitions must sync, and syncs them together. Requests that arrive
//! during a round wait for the next, so under load one round serves many appends across
//! partitions. A failed sync takes its partitions offline: nothing is acknowledged that
//! may not be on disk.
//!
//! How a round syncs several partitions depends on how much unwritten data the system
//! holds. When it is little (at most [`SYNCFS_MAX_PENDING_BYTES`]), one `syncfs(2)` of
//! the data directory's file system: a single journal commit, the cheapest call. When it
//! is more, that call would also write back everything else that is dirty (acks=1
//! partitions, other programs' files) and make these appends wait for it; the
//! partitions' own files are then synced side by side on up to [`SYNC_WORKERS`] threads,
//! each writing back only its partition's data. One partition is always synced alone.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use spool_log::storage::{FilesystemSync, Storage};
use spool_log::{FlushTicket, SharedLog};
use spool_protocol::ErrorCode;
use tokio::sync::oneshot;

use crate::state::lock;

struct Waiter {
    log: Arc<SharedLog>,
    offset: i64,
    done: oneshot::Sender<Result<(), ErrorCode>>,
}

struct Shared {
    pending: Mutex<Vec<Waiter>>,
    wake: Condvar,
    stop: AtomicBool,
    /// How long each sync took, in seconds.
    sync_times: Histogram,
}

/// Where the rounds run.
enum Rounds {
    /// On the flusher's thread (taken when it is joined).
    Thread(Option<JoinHandle<()>>),
    /// In each waiting task, with this file-system handle (see
    /// [`crate::state::keep_blocking_work_on_this_thread`]).
    Inline(Option<Box<dyn FilesystemSync>>),
}

pub struct Flusher {
    shared: Arc<Shared>,
    rounds: Rounds,
}

impl Flusher {
    /// Starts the flusher for logs under `data_dir`. Open it before the logs are written:
    /// the file-system handle reports write-back errors from then on. Each sync's time
    /// goes into `sync_times`.
    pub fn start(
        storage: &dyn Storage,
        data_dir: &Path,
        sync_times: Histogram,
    ) -> std::io::Result<Flusher> {
        let filesystem = storage.filesystem_sync(data_dir)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            sync_times,
        });
        if crate::state::blocking_work_stays_on_this_thread() {
            return Ok(Flusher {
                shared,
                rounds: Rounds::Inline(filesystem),
            });
        }
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("spool-flusher".into())
                .spawn(move || run(&shared, filesystem.as_deref()))?
        };
        Ok(Flusher {
            shared,
            rounds: Rounds::Thread(Some(thread)),
        })
    }

    /// Returns once every offset of `log` below `offset` is on stable storage.
    pub async fn wait_durable(&self, log: &Arc<SharedLog>, offset: i64) -> Result<(), ErrorCode> {
        let mut outcomes = self.wait_all_durable(vec![(Arc::clone(log), offset)]).await;
        outcomes.pop().unwrap_or(Err(ErrorCode::UnknownServerError))
    }

    /// Waits until each log is durable below its offset, all in the same rounds; the
    /// outcome of each, in order.
    pub async fn wait_all_durable(
        &self,
        logs: Vec<(Arc<SharedLog>, i64)>,
    ) -> Vec<Result<(), ErrorCode>> {
        let mut answers = Vec::with_capacity(logs.len());
        {
            let mut pending = lock(&self.shared.pending);
            for (log, offset) in logs {
                if log.durable_offset() >= offset {
                    answers.push(None);
                    continue;
                }
                let (done, answer) = oneshot::channel();
                pending.push(Waiter { log, offset, done });
                answers.push(Some(answer));
            }
        }
        if answers.iter().any(Option::is_some) {
            match &self.rounds {
                Rounds::Inline(filesystem) => {
                    let waiters = std::mem::take(&mut *lock(&self.shared.pending));
                    let unanswered = round(waiters, filesystem.as_deref(), &self.shared.sync_times);
                    lock(&self.shared.pending).extend(unanswered);
                }
                Rounds::Thread(_) => self.shared.wake.notify_one(),
            }
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match answer {
                None => Ok(()),
                Some(answer) => answer.await.unwrap_or(Err(ErrorCode::UnknownServerError)),
            });
        }
        outcomes
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Rounds::Thread(thread) = &mut self.rounds
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, filesystem: Option<&dyn FilesystemSync>) {
    loop {
        let waiters = {
            let mut pending = lock(&shared.pending);
            while pending.is_empty() {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            std::mem::take(&mut *pending)
        };
        let unanswered = round(waiters, filesystem, &shared.sync_times);
        if !unanswered.is_empty() {
            lock(&shared.pending).extend(unanswered);
        }
    }
}

/// At most this many partitions are synced at the same time.
pub const SYNC_WORKERS: usize = 8;

/// Above this much unwritten data in the system, a round syncs partitions' own files
/// rather than the whole file system.
pub const SYNCFS_MAX_PENDING_BYTES: u64 = 32 << 20;

/// One round: sync every log a waiter needs, then answer the waiters. Returns those
/// still to answer (a flush prepared elsewhere, still syncing, holds their offsets back).
fn round(
    waiters: Vec<Waiter>,
    filesystem: Option<&dyn FilesystemSync>,
    sync_times: &Histogram,
) -> Vec<Waiter> {
    // The logs that need a sync, each once, in the order they were asked for (so that a
    // replayed simulation completes them, and wakes their waiters, in the same order).
    let mut seen = HashSet::new();
    let mut logs = Vec::new();
    for waiter in &waiters {
        if waiter.log.durable_offset() < waiter.offset && seen.insert(Arc::as_ptr(&waiter.log)) {
            logs.push(Arc::clone(&waiter.log));
        }
    }
    let mut tickets = Vec::with_capacity(logs.len());
    for log in logs {
        match log.prepare_external_flush() {
            Ok(ticket) => tickets.push((log, ticket)),
            Err(e) => tracing::warn!(error = %e, "a log cannot be flushed"),
        }
    }
    let whole_filesystem = filesystem.filter(|f| {
        tickets.len() > 1
            && f.pending_bytes()
                .is_some_and(|pending| pending <= SYNCFS_MAX_PENDING_BYTES)
    });
    match whole_filesystem {
        Some(filesystem) => {
            let started = Instant::now();
            let result = filesystem.sync();
            sync_times.observe(started.elapsed().as_secs_f64());
            for (log, ticket) in tickets {
                let result = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                complete(&log, ticket, result);
            }
        }
        None => sync_each(tickets, sync_times),
    }
    let mut unanswered = Vec::new();
    for waiter in waiters {
        let answer = if waiter.log.durable_offset() >= waiter.offset {
            Ok(())
        } else if waiter.log.is_failed()
            || waiter.offset > waiter.log.with_log(|l| l.log_end_offset())
        {
            // The log is offline, or a truncation took the offset away.
            Err(ErrorCode::KafkaStorageError)
        } else {
            unanswered.push(waiter);
            continue;
        };
        let _ = waiter.done.send(answer);
    }
    unanswered
}

fn complete(log: &SharedLog, ticket: FlushTicket, result: std::io::Result<()>) {
    if let Err(e) = log.complete_external_flush(ticket, result) {
        tracing::error!(error = %e, "flush failed; the partition is offline");
    }
}

/// Syncs every ticket's own files and completes it: one ticket on this thread, more on up
/// to [`SYNC_WORKERS`] threads taking tickets in turn.
fn sync_each(tickets: Vec<(Arc<SharedLog>, FlushTicket)>, sync_times: &Histogram) {
    let count = tickets.len();
    let queue = Mutex::new(tickets.into_iter());
    let work = || {
        while let Some((log, ticket)) = lock(&queue).next() {
            let started = Instant::now();
            let synced = ticket.sync();
            sync_times.observe(started.elapsed().as_secs_f64());
            complete(&log, ticket, synced);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..count.min(SYNC_WORKERS) {
            scope.spawn(work);
        }
        work();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_log::{DiskStorage, Faults, LogConfig, MemStorage, PartitionLog};
    use spool_protocol::compression::Compression;
    use spool_protocol::record_batch::RecordBatchBuilder;

    fn record() -> bytes::Bytes {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.append(0, None, Some(b"v"), &[]).unwrap();
        builder.build().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_to_many_partitions_become_durable_together() {
        let dir = std::env::temp_dir().join(format!("spool-flusher-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let storage: Arc<dyn Storage> = Arc::new(DiskStorage);
        let flusher =
            Arc::new(Flusher::start(storage.as_ref(), &dir, Histogram::new([1.0])).unwrap());
        let logs: Vec<Arc<SharedLog>> = (0..4)
            .map(|p| {
                let path = dir.join(format!("t-{p}"));
                let (log, _) =
                    PartitionLog::open(Arc::clone(&storage), &path, LogConfig::default(), 0)
                        .unwrap();
                Arc::new(SharedLog::new(log))
            })
            .collect();
        let mut waits = Vec::new();
        for round in 0..50 {
            for log in &logs {
                let info = log.append(record(), 0, 0).unwrap();
                assert_eq!(info.first_offset, round);
                let (flusher, log) = (Arc::clone(&flusher), Arc::clone(log));
                waits.push(tokio::spawn(async move {
                    flusher.wait_durable(&log, info.last_offset + 1).await
                }));
            }
        }
        for wait in waits {
            assert_eq!(wait.await.unwrap(), Ok(()));
        }
        for log in &logs {
            assert_eq!(log.durable_offset(), 50);
            assert_eq!(log.with_log(|l| l.recovery_point()), 50);
        }
        drop(logs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_answers_with_a_storage_error_and_takes_the_partition_offline() {
        let storage = MemStorage::new();
        let flusher =
            Arc::new(Flusher::start(&storage, Path::new("/data"), Histogram::new([1.0])).unwrap());
        let logs: Vec<Arc<SharedLog>> = (0..3)
            .map(|p| {
                let path = std::path::PathBuf::from(format!("/data/t-{p}"));
                let (log, _) =
                    PartitionLog::open(Arc::new(storage.clone()), &path, LogConfig::default(), 0)
                        .unwrap();
                Arc::new(SharedLog::new(log))
            })
            .collect();
        for log in &logs {
            log.append(record(), 0, 0).unwrap();
        }
        storage.set_faults(Faults {
            fail_syncs: true,
            ..Faults::default()
        });
        let waits: Vec<_> = logs
            .iter()
            .map(|log| {
                let (flusher, log) = (Arc::clone(&flusher), Arc::clone(log));
                tokio::spawn(async move { flusher.wait_durable(&log, 1).await })
            })
            .collect();
        for wait in waits {
            assert_eq!(wait.await.unwrap(), Err(ErrorCode::KafkaStorageError));
        }
        for log in &logs {
            assert!(log.is_failed());
            assert_eq!(log.durable_offset(), 0);
        }
    }
}
