//! Group commit: concurrent appenders share one fsync.
//!
//! An appender that needs its batch durable calls [`SharedLog::wait_durable`]. If no flush
//! is running, it becomes the flusher: it captures everything appended so far — its own
//! batch and whatever others appended meanwhile — syncs it without holding the log, and
//! wakes everyone whose offset is now covered. Appenders that arrive during a sync wait
//! for it and, if not yet covered, one of them starts the next round for all of them. So
//! under load one fsync serves many appends, and latency stays about one fsync.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};

use bytes::Bytes;

use crate::config::LogConfig;
use crate::error::LogError;
use crate::log::{AppendInfo, FlushTicket, PartitionLog, validate_produced};

#[derive(Debug, Default)]
struct CommitState {
    /// Everything below this offset is durable.
    durable_offset: i64,
    flushing: bool,
    /// Completed sync rounds, for tests and benchmarks.
    sync_rounds: u64,
}

/// A partition log shared by threads that append and wait for durability.
pub struct SharedLog {
    log: Mutex<PartitionLog>,
    /// The log's settings, readable without taking the log (validation needs them).
    config: RwLock<LogConfig>,
    state: Mutex<CommitState>,
    flushed: Condvar,
    /// Set (under `state`) once a failed sync or truncation took the log offline; read
    /// without the lock, which truncations hold across an fsync.
    failed: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked mid-append leaves the log as consistent as any crash would.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SharedLog {
    pub fn new(log: PartitionLog) -> Self {
        let durable_offset = log.recovery_point();
        SharedLog {
            config: RwLock::new(log.config().clone()),
            log: Mutex::new(log),
            state: Mutex::new(CommitState {
                durable_offset,
                ..CommitState::default()
            }),
            flushed: Condvar::new(),
            failed: AtomicBool::new(false),
        }
    }

    /// Runs `f` with the log locked. Keep it short: appenders queue behind it.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut PartitionLog) -> R) -> R {
        f(&mut lock(&self.log))
    }

    /// Changes the log's settings (a topic config change).
    pub fn set_config(&self, config: LogConfig) {
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config.clone();
        self.with_log(|log| log.set_config(config));
    }

    /// Appends as leader without waiting for durability, for producers that pipeline:
    /// validation runs before taking the log, so concurrent appenders overlap it. Follow
    /// with [`Self::wait_durable`] for the last offset that must be durable.
    pub fn append(
        &self,
        records: Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let validated = {
            let config = self
                .config
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            validate_produced(&config, records, now_ms)?
        };
        self.with_log(|log| log.append_validated(validated, leader_epoch, now_ms))
    }

    /// Appends as leader and returns once the batch is on stable storage.
    pub fn append_durably(
        &self,
        records: Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let info = self.append(records, leader_epoch, now_ms)?;
        self.wait_durable(info.last_offset + 1)?;
        Ok(info)
    }

    /// Blocks until every offset below `offset` is durable, taking part in group commit.
    pub fn wait_durable(&self, offset: i64) -> Result<(), LogError> {
        let mut state = lock(&self.state);
        loop {
            if self.is_failed() {
                return Err(LogError::Offline);
            }
            if state.durable_offset >= offset {
                return Ok(());
            }
            if state.flushing {
                state = self
                    .flushed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            state.flushing = true;
            drop(state);
            let synced = self.with_log(PartitionLog::prepare_flush).map(|ticket| {
                let result = ticket.sync();
                (ticket, result)
            });
            state = lock(&self.state);
            // Completed under the state lock, as truncation runs, so that a truncation
            // cannot fall between the flush's outcome and its record here.
            let outcome = synced.and_then(|(ticket, result)| {
                self.with_log(|log| log.complete_flush(ticket, result))
            });
            state.flushing = false;
            state.sync_rounds += 1;
            match outcome {
                Ok(durable_offset) => {
                    state.durable_offset = state.durable_offset.max(durable_offset)
                }
                Err(_) => self.failed.store(true, Ordering::Release),
            }
            self.flushed.notify_all();
        }
    }

    /// Removes everything at and after `offset` (see [`PartitionLog::truncate_to`]). What
    /// was durable above it no longer counts: offsets written there anew must be synced.
    pub fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let mut state = lock(&self.state);
        let truncated = self.with_log(|log| {
            log.truncate_to(offset)?;
            Ok::<_, LogError>(log.log_end_offset())
        });
        match truncated {
            Ok(end) => {
                state.durable_offset = state.durable_offset.min(end);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Empties the log and starts it at `offset` (see
    /// [`PartitionLog::truncate_fully_and_start_at`]); nothing above it is durable.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError> {
        let mut state = lock(&self.state);
        match self.with_log(|log| log.truncate_fully_and_start_at(offset)) {
            Ok(()) => {
                state.durable_offset = offset;
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Whether a failed sync took the log offline.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Everything below this offset is durable.
    pub fn durable_offset(&self) -> i64 {
        lock(&self.state).durable_offset
    }

    /// For a flusher that syncs many logs at once: captures what this log must sync.
    /// Follow with [`Self::complete_external_flush`] once the sync is done.
    pub fn prepare_external_flush(&self) -> Result<FlushTicket, LogError> {
        if self.is_failed() {
            return Err(LogError::Offline);
        }
        self.with_log(PartitionLog::prepare_flush)
    }

    /// Records the outcome of a sync of `ticket` done outside this log, and wakes the
    /// appenders it made durable. Returns the new durable offset.
    pub fn complete_external_flush(
        &self,
        ticket: FlushTicket,
        result: io::Result<()>,
    ) -> Result<i64, LogError> {
        // The state lock first, as truncation takes it (see `wait_durable`).
        let mut state = lock(&self.state);
        let outcome = self.with_log(|log| log.complete_flush(ticket, result));
        let durable = match outcome {
            Ok(durable_offset) => {
                state.durable_offset = state.durable_offset.max(durable_offset);
                Ok(state.durable_offset)
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        };
        state.sync_rounds += 1;
        self.flushed.notify_all();
        durable
    }

    /// How many sync rounds have completed.
    pub fn sync_rounds(&self) -> u64 {
        lock(&self.state).sync_rounds
    }

    pub fn into_inner(self) -> PartitionLog {
        self.log
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
