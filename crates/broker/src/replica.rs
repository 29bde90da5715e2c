//! A partition replica on this broker: its log and its part in replication, Kafka's
//! model.
//!
//! The metadata image says who leads each partition, at which leader epoch, and which
//! replicas are in sync (the ISR). A replica follows the image ([`Replica::apply`]):
//!
//! - As **leader** it stamps appends with its epoch (which it records at its log end
//!   offset on taking over, so that followers can find where they diverge), and tracks how
//!   far each follower has fetched. A follower fetches from its log end offset only once
//!   everything before it is fsynced, so its fetch offset is what it durably holds. The
//!   high watermark is the lowest log end offset over the ISR: the log keeps it below the
//!   other members' ([`PartitionLog::set_replica_floor`]), so every append path advances
//!   it safely. While an ISR change is on its way to the controller, the high watermark
//!   counts the members of the old and the new ISR together.
//! - As **follower** it appends what the replica fetcher brings from the leader, keeps the
//!   leader's offsets and epochs, and truncates a tail that diverged from the leader's log.
//!
//! An acks=all write is answered once the high watermark has passed it
//! ([`Replica::wait_committed`]); with fewer in-sync replicas than `min.insync.replicas`
//! it is refused before the append (NOT_ENOUGH_REPLICAS) or, if the ISR shrank meanwhile,
//! after it (NOT_ENOUGH_REPLICAS_AFTER_APPEND).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use spool_log::{AppendInfo, LogError, PartitionLog, SharedLog};
use spool_metadata::PartitionMeta;
use spool_protocol::ErrorCode;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::state::lock;

/// How long a leader waits before asking again for an ISR change the controller refused.
pub const ISR_RETRY_BACKOFF_MS: i64 = 100;

/// A replica's part in its partition.
#[derive(Debug)]
enum Role {
    /// Follows `leader` (a node ID, or -1 while the partition has none) at `epoch`.
    Follower {
        leader: i32,
        epoch: i32,
    },
    Leader(Leading),
}

#[derive(Debug)]
struct Leading {
    epoch: i32,
    partition_epoch: i32,
    replicas: Vec<i32>,
    /// The ISR as the metadata has it.
    isr: Vec<i32>,
    /// An ISR this leader has asked the controller for and not yet seen applied.
    pending_isr: Option<Vec<i32>>,
    /// The controller's answer left open whether `pending_isr` was recorded (no answer,
    /// or a partition epoch newer than this leader's, perhaps its own change): it stays
    /// in the high watermark's floor until the metadata says, and is asked again after
    /// the back-off.
    pending_unresolved: bool,
    /// After a refused ISR change, none is asked for before this time.
    isr_retry_at_ms: i64,
    /// Where this leader epoch began: a follower must hold at least this much to rejoin
    /// the ISR.
    epoch_start: i64,
    /// The epoch at which this broker's unbroken leadership began. Epochs bumped since
    /// (a reassignment that drops a replica bumps it, the leader staying) truncated
    /// nothing, so writes made under any of them still stand.
    first_epoch: i32,
    followers: BTreeMap<i32, Progress>,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The follower's log end offset as its last fetch showed (durable there); -1 before
    /// its first fetch to this leader.
    end: i64,
    /// The follower's log start offset as its last fetch showed.
    log_start: i64,
    /// When it last held everything the leader had.
    caught_up_ms: i64,
    last_fetch_ms: i64,
    /// The leader's log end offset at that fetch.
    leader_end_at_last_fetch: i64,
}

impl Progress {
    fn new(now: i64) -> Progress {
        Progress {
            end: -1,
            log_start: -1,
            caught_up_ms: now,
            last_fetch_ms: now,
            leader_end_at_last_fetch: -1,
        }
    }
}

impl Leading {
    /// The members the high watermark waits for: the ISR and any pending one together.
    fn maximal_isr(&self) -> BTreeSet<i32> {
        self.isr
            .iter()
            .chain(self.pending_isr.iter().flatten())
            .copied()
            .collect()
    }

    /// The lowest log end offset of the other members of the maximal ISR; `None` when
    /// the leader is in sync alone.
    fn floor(&self, me: i32) -> Option<i64> {
        self.maximal_isr()
            .into_iter()
            .filter(|&b| b != me)
            .map(|b| self.followers.get(&b).map_or(-1, |p| p.end))
            .min()
    }
}

/// An ISR this leader wants the controller to record.
#[derive(Debug, Clone, PartialEq)]
pub struct IsrChange {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// What a follower's fetch changed on the leader.
#[derive(Debug, Default)]
pub struct FetchNote {
    /// The high watermark moved: consumers and acks=all writes may proceed.
    pub high_watermark_moved: bool,
    /// An ISR change to ask the controller for: the follower caught up and should join
    /// the ISR, or a change whose fate was left open is asked again.
    pub expand: Option<IsrChange>,
}

/// What a follower's append of fetched batches did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerAppend {
    pub log_end_offset: i64,
    /// The high watermark moved: consumers reading here (KIP-392) may read further.
    pub high_watermark_moved: bool,
}

/// A replica a consumer could read from, as its leader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCandidate {
    pub id: i32,
    pub log_end_offset: i64,
    /// How long ago it last held everything the leader had.
    pub since_caught_up_ms: i64,
}

/// Where the leader's log stood at a follower's fetch, as the fetch response says.
#[derive(Debug, Clone, Copy)]
pub struct LeaderOffsets {
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// What a follower's fetch asked: from which leader, at which of its epochs, from which
/// offset (the follower's log end then). Its answer applies only while all three still
/// hold, as in Kafka's fetcher: a replica that changed in between (truncated, recreated
/// under the same name, moved away and back) drops it and fetches again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub leader: i32,
    pub epoch: i32,
    pub offset: i64,
}

/// Where a follower's log diverged from the leader's, as a fetch response says.
#[derive(Debug, Clone, Copy)]
pub struct Divergence {
    pub epoch: i32,
    pub end_offset: i64,
}

/// Why [`Replica::write_as_leader`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this broker does not lead the partition")]
    NotLeader,
    #[error(transparent)]
    Log(#[from] LogError),
}

impl WriteError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WriteError::NotLeader => ErrorCode::NotLeaderOrFollower,
            WriteError::Log(e) => e.error_code(),
        }
    }
}

pub struct Replica {
    me: i32,
    pub log: Arc<SharedLog>,
    role: Mutex<Role>,
    /// Bumped when the high watermark, the role or the ISR changes.
    changed: watch::Sender<u64>,
}

impl Replica {
    /// A replica that follows nobody until the metadata says otherwise.
    pub fn new(me: i32, log: Arc<SharedLog>) -> Replica {
        Replica {
            me,
            log,
            role: Mutex::new(Role::Follower {
                leader: -1,
                epoch: -1,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes the part the metadata gives this broker in partition `p`. A new leader
    /// records its epoch in the log; a leader whose ISR changed recomputes the high
    /// watermark. Blocking (the epoch is written to disk).
    pub fn apply(&self, p: &PartitionMeta, now: i64) -> Result<(), LogError> {
        let mut role = lock(&self.role);
        if p.leader != self.me {
            let same = matches!(&*role, Role::Follower { leader, epoch }
                if *leader == p.leader && *epoch == p.leader_epoch);
            if !same {
                *role = Role::Follower {
                    leader: p.leader,
                    epoch: p.leader_epoch,
                };
                self.log.with_log(|l| l.set_replica_floor(None));
                drop(role);
                self.notify();
            }
            return Ok(());
        }
        let others = p.replicas.iter().copied().filter(|&r| r != self.me);
        match &mut *role {
            Role::Leader(leading) if leading.epoch == p.leader_epoch => {
                if leading.partition_epoch == p.partition_epoch {
                    return Ok(());
                }
                leading.partition_epoch = p.partition_epoch;
                leading.isr = p.isr.clone();
                leading.replicas = p.replicas.clone();
                leading.pending_isr = None;
                leading.pending_unresolved = false;
                let known = std::mem::take(&mut leading.followers);
                leading.followers = others
                    .map(|r| (r, known.get(&r).copied().unwrap_or(Progress::new(now))))
                    .collect();
            }
            _ => {
                let first_epoch = match &*role {
                    Role::Leader(leading) => leading.first_epoch,
                    Role::Follower { .. } => p.leader_epoch,
                };
                let epoch_start = self.log.with_log(|l| {
                    l.begin_leader_epoch(p.leader_epoch)?;
                    Ok::<_, LogError>(l.log_end_offset())
                })?;
                *role = Role::Leader(Leading {
                    epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    pending_isr: None,
                    pending_unresolved: false,
                    isr_retry_at_ms: 0,
                    epoch_start,
                    first_epoch,
                    followers: others.map(|r| (r, Progress::new(now))).collect(),
                });
            }
        }
        if let Role::Leader(leading) = &*role {
            self.update_high_watermark(leading);
        }
        drop(role);
        self.notify();
        Ok(())
    }

    /// Caps the high watermark at what the other in-sync replicas hold and advances it as
    /// far as that allows. Whether it moved.
    fn update_high_watermark(&self, leading: &Leading) -> bool {
        let floor = leading.floor(self.me);
        self.log.with_log(|l| {
            let before = l.high_watermark();
            l.set_replica_floor(floor);
            let end = l.log_end_offset();
            l.advance_high_watermark(end) > before
        })
    }

    /// Stops taking part: the replica was moved off this broker. It follows nobody, so
    /// no fetch answer is applied to it any more, and writes waiting on it as leader are
    /// answered NOT_LEADER_OR_FOLLOWER.
    pub fn retire(&self) {
        *lock(&self.role) = Role::Follower {
            leader: -1,
            epoch: -1,
        };
        self.log.with_log(|l| l.set_replica_floor(None));
        self.notify();
    }

    /// The leader epoch when this broker leads the partition.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &*lock(&self.role) {
            Role::Leader(leading) => Some(leading.epoch),
            Role::Follower { .. } => None,
        }
    }

    /// The leader this replica follows and its epoch; `None` while it leads or the
    /// partition has no leader.
    pub fn following(&self) -> Option<(i32, i32)> {
        match &*lock(&self.role) {
            Role::Follower { leader, epoch } if *leader >= 0 => Some((*leader, *epoch)),
            _ => None,
        }
    }

    /// The ISR as the metadata has it, when this broker leads.
    pub fn isr(&self) -> Option<Vec<i32>> {
        match &*lock(&self.role) {
            Role::Leader(leading) => Some(leading.isr.clone()),
            Role::Follower { .. } => None,
        }
    }

    /// Where a consumer at `fetch_offset` could read instead of this leader (KIP-392): the
    /// followers in the ISR that hold that offset, by what the last fetch of each showed.
    /// `None` when this broker does not lead.
    pub fn read_candidates(&self, fetch_offset: i64, now: i64) -> Option<Vec<ReadCandidate>> {
        let role = lock(&self.role);
        let Role::Leader(leading) = &*role else {
            return None;
        };
        let candidates = leading
            .isr
            .iter()
            .filter(|&&b| b != self.me)
            .filter_map(|&b| {
                let p = leading.followers.get(&b)?;
                (p.end >= fetch_offset && p.log_start <= fetch_offset && p.log_start >= 0).then(
                    || ReadCandidate {
                        id: b,
                        log_end_offset: p.end,
                        since_caught_up_ms: now.saturating_sub(p.caught_up_ms),
                    },
                )
            })
            .collect();
        Some(candidates)
    }

    /// Appends a producer's batches as the leader, stamped with the leader epoch; returns
    /// what the append did and that epoch. With `acks` = -1 the ISR must have at least
    /// `min.insync.replicas` members (else NOT_ENOUGH_REPLICAS, and nothing is written).
    pub fn append_as_leader(
        &self,
        records: Bytes,
        acks: i16,
        now: i64,
    ) -> Result<(AppendInfo, i32), ErrorCode> {
        let role = lock(&self.role);
        let Role::Leader(leading) = &*role else {
            return Err(ErrorCode::NotLeaderOrFollower);
        };
        if acks == -1 && leading.isr.len() < self.min_insync_replicas() {
            return Err(ErrorCode::NotEnoughReplicas);
        }
        let info = self.log.append(records, leading.epoch, now).map_err(|e| {
            tracing::debug!(error = %e, "produce refused");
            e.error_code()
        })?;
        self.log
            .with_log(|l| l.advance_high_watermark(info.last_offset + 1));
        Ok((info, leading.epoch))
    }

    /// Runs `write` on the log with the leader epoch while this broker leads: the
    /// broker's own writes (coordinator records, transaction markers). `write` returns
    /// what it wrote and the offset after it; the high watermark advances that far as the
    /// ISR allows. The role cannot change meanwhile, so nothing is stamped with an epoch
    /// this broker no longer leads at. Returns `write`'s result and the epoch to wait
    /// under ([`Self::wait_committed`]); NOT_LEADER_OR_FOLLOWER, with nothing written,
    /// when this broker does not lead.
    pub fn write_as_leader<R>(
        &self,
        write: impl FnOnce(&mut PartitionLog, i32) -> Result<(R, i64), LogError>,
    ) -> Result<(R, i32), WriteError> {
        let role = lock(&self.role);
        let Role::Leader(leading) = &*role else {
            return Err(WriteError::NotLeader);
        };
        let epoch = leading.epoch;
        let written = self.log.with_log(|l| {
            let (written, end) = write(l, epoch)?;
            l.advance_high_watermark(end);
            Ok::<_, LogError>(written)
        })?;
        Ok((written, epoch))
    }

    fn min_insync_replicas(&self) -> usize {
        let configured = self.log.with_log(|l| l.config().min_insync_replicas);
        usize::try_from(configured).unwrap_or(1)
    }

    /// Waits until the high watermark reaches `end` while this broker still leads since
    /// `epoch` (at it or a later epoch of the same leadership): then Ok, or
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR has shrunk below
    /// `min.insync.replicas` meanwhile. NOT_LEADER_OR_FOLLOWER once the leadership moved,
    /// REQUEST_TIMED_OUT after `timeout`.
    pub async fn wait_committed(
        &self,
        epoch: i32,
        end: i64,
        timeout: Duration,
    ) -> Result<(), ErrorCode> {
        let deadline = Instant::now() + timeout;
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(outcome) = self.committed(epoch, end) {
                return outcome;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ErrorCode::NotLeaderOrFollower),
                Err(_) => return Err(ErrorCode::RequestTimedOut),
            }
        }
    }

    fn committed(&self, epoch: i32, end: i64) -> Option<Result<(), ErrorCode>> {
        let role = lock(&self.role);
        match &*role {
            Role::Leader(leading) if (leading.first_epoch..=leading.epoch).contains(&epoch) => {
                if self.log.with_log(|l| l.high_watermark()) < end {
                    return None;
                }
                Some(if leading.isr.len() >= self.min_insync_replicas() {
                    Ok(())
                } else {
                    Err(ErrorCode::NotEnoughReplicasAfterAppend)
                })
            }
            _ => Some(Err(ErrorCode::NotLeaderOrFollower)),
        }
    }

    /// A follower fetched from `offset`: everything below it is durable on `follower`,
    /// whose log starts at `log_start`. Moves the high watermark, and says whether the
    /// follower should join the ISR. NOT_LEADER_OR_FOLLOWER when this broker does not lead
    /// or `follower` is no replica.
    pub fn follower_fetched(
        &self,
        follower: i32,
        offset: i64,
        log_start: i64,
        now: i64,
    ) -> Result<FetchNote, ErrorCode> {
        let mut role = lock(&self.role);
        let Role::Leader(leading) = &mut *role else {
            return Err(ErrorCode::NotLeaderOrFollower);
        };
        let leader_end = self.log.with_log(|l| l.log_end_offset());
        let Some(progress) = leading.followers.get_mut(&follower) else {
            return Err(ErrorCode::NotLeaderOrFollower);
        };
        // Caught up: it holds what the leader had now, or at its previous fetch.
        if offset >= leader_end {
            progress.caught_up_ms = now;
        } else if offset >= progress.leader_end_at_last_fetch
            && progress.leader_end_at_last_fetch >= 0
        {
            progress.caught_up_ms = progress.last_fetch_ms;
        }
        progress.end = offset.min(leader_end);
        progress.log_start = log_start;
        progress.last_fetch_ms = now;
        progress.leader_end_at_last_fetch = leader_end;
        let end = progress.end;
        let moved = self.update_high_watermark(leading);
        let high_watermark = self.log.with_log(|l| l.high_watermark());
        let joins = !leading.maximal_isr().contains(&follower)
            && leading.pending_isr.is_none()
            && now >= leading.isr_retry_at_ms
            && end >= high_watermark
            && end >= leading.epoch_start;
        let expand = joins.then(|| {
            let mut isr = leading.isr.clone();
            isr.push(follower);
            leading.pending_isr = Some(isr.clone());
            isr
        });
        // A change whose fate is open is asked again, on any follower's fetch.
        let expand = expand.or_else(|| {
            let again = leading.pending_unresolved && now >= leading.isr_retry_at_ms;
            leading.pending_unresolved &= !again;
            again.then(|| leading.pending_isr.clone()).flatten()
        });
        let expand = expand.map(|isr| IsrChange {
            leader_epoch: leading.epoch,
            partition_epoch: leading.partition_epoch,
            isr,
        });
        drop(role);
        if moved {
            self.notify();
        }
        Ok(FetchNote {
            high_watermark_moved: moved,
            expand,
        })
    }

    /// The ISR without the followers that have not caught up for `lag_max_ms`, when that
    /// leaves any out and no other change is pending.
    pub fn shrink_lagging(&self, now: i64, lag_max_ms: i64) -> Option<IsrChange> {
        let mut role = lock(&self.role);
        let Role::Leader(leading) = &mut *role else {
            return None;
        };
        if leading.pending_isr.is_some() || now < leading.isr_retry_at_ms {
            return None;
        }
        let leader_end = self.log.with_log(|l| l.log_end_offset());
        let lagging = |b: &i32| {
            leading.followers.get(b).is_some_and(|p| {
                p.end < leader_end && now.saturating_sub(p.caught_up_ms) > lag_max_ms
            })
        };
        let isr: Vec<i32> = leading
            .isr
            .iter()
            .copied()
            .filter(|b| *b == self.me || !lagging(b))
            .collect();
        if isr.len() == leading.isr.len() {
            return None;
        }
        leading.pending_isr = Some(isr.clone());
        Some(IsrChange {
            leader_epoch: leading.epoch,
            partition_epoch: leading.partition_epoch,
            isr,
        })
    }

    /// The controller answered that `change` may have been recorded after all (no answer
    /// in time, or a newer partition epoch than this leader's, which may be that very
    /// change): the change stays pending, and so in the high watermark's floor, until
    /// the metadata settles it; it is asked again after [`ISR_RETRY_BACKOFF_MS`]. Dropping
    /// it could let the high watermark pass a follower the controller has put in the
    /// ISR, which could then be elected without every acknowledged record.
    pub fn isr_change_unresolved(&self, change: &IsrChange, now: i64) {
        let mut role = lock(&self.role);
        if let Role::Leader(leading) = &mut *role
            && leading.pending_isr.as_ref() == Some(&change.isr)
        {
            leading.pending_unresolved = true;
            leading.isr_retry_at_ms = now.saturating_add(ISR_RETRY_BACKOFF_MS);
        }
    }

    /// The controller refused `change`: it is no longer pending, and may be asked again
    /// after [`ISR_RETRY_BACKOFF_MS`].
    pub fn isr_change_failed(&self, change: &IsrChange, now: i64) {
        let mut role = lock(&self.role);
        if let Role::Leader(leading) = &mut *role
            && leading.pending_isr.as_ref() == Some(&change.isr)
        {
            leading.pending_isr = None;
            leading.isr_retry_at_ms = now.saturating_add(ISR_RETRY_BACKOFF_MS);
            self.update_high_watermark(leading);
        }
        drop(role);
        self.notify();
    }

    /// The role, locked, while this replica follows `fetched.leader` at `fetched.epoch`
    /// and its log still ends where the fetch started; NOT_LEADER_OR_FOLLOWER otherwise
    /// (the answer is dropped and the partition fetched again).
    fn following_at(&self, fetched: Fetched) -> Result<MutexGuard<'_, Role>, ErrorCode> {
        let role = lock(&self.role);
        let follows = matches!(&*role, Role::Follower { leader, epoch }
            if *leader == fetched.leader && *epoch == fetched.epoch);
        if follows && self.log.with_log(|l| l.log_end_offset()) == fetched.offset {
            Ok(role)
        } else {
            Err(ErrorCode::NotLeaderOrFollower)
        }
    }

    /// Appends batches a fetch brought (see [`Fetched`]), as a follower, moves the high
    /// watermark to the leader's (within what this log holds) and the log start offset up
    /// to the leader's (records deleted there go here too). Nothing is appended when the
    /// fetch no longer applies (NOT_LEADER_OR_FOLLOWER). Blocking.
    pub fn append_from_leader(
        &self,
        fetched: Fetched,
        records: Bytes,
        leader_at: LeaderOffsets,
        now: i64,
    ) -> Result<FollowerAppend, ErrorCode> {
        let _role = self.following_at(fetched)?;
        self.log
            .with_log(|l| {
                if !records.is_empty() {
                    l.append_as_follower(records, now)?;
                }
                let before = l.high_watermark();
                let high_watermark_moved =
                    l.advance_high_watermark(leader_at.high_watermark) != before;
                if leader_at.log_start_offset > l.log_start_offset()
                    && leader_at.log_start_offset <= l.log_end_offset()
                {
                    l.advance_log_start_offset(leader_at.log_start_offset)?;
                }
                Ok::<_, LogError>(FollowerAppend {
                    log_end_offset: l.log_end_offset(),
                    high_watermark_moved,
                })
            })
            .map_err(|e| e.error_code())
    }

    /// The leader answered OFFSET_OUT_OF_RANGE to a fetch from this log's end. When the
    /// log ends below the leader's log start offset, the leader no longer has what would
    /// continue it: the log is emptied and starts there. Otherwise (the log runs past the
    /// leader's) it is cut to the leader's high watermark, below which the two agree.
    /// Returns whether the log changed. Blocking.
    pub fn reset_out_of_range(
        &self,
        fetched: Fetched,
        leader_at: LeaderOffsets,
    ) -> Result<bool, ErrorCode> {
        let _role = self.following_at(fetched)?;
        // The log still ends where the fetch started (checked under the role lock).
        let end = fetched.offset;
        if end < leader_at.log_start_offset {
            tracing::info!(
                from = end,
                to = leader_at.log_start_offset,
                "log ends below the leader's log start; starting over there"
            );
            self.log
                .truncate_fully_and_start_at(leader_at.log_start_offset)
                .map_err(|e| e.error_code())?;
        } else if leader_at.high_watermark >= 0 && end > leader_at.high_watermark {
            tracing::info!(
                from = end,
                to = leader_at.high_watermark,
                "log runs past the leader's; truncating to its high watermark"
            );
            self.log
                .truncate_to(leader_at.high_watermark)
                .map_err(|e| e.error_code())?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Truncates the tail that diverged from the leader's log, Kafka's way: to where the
    /// epoch the leader names ends in both logs; when this log does not know that epoch,
    /// to where its own largest epoch below it ends (the next fetch narrows it down); when
    /// nothing is known, to the high watermark. Blocking.
    pub fn truncate_diverged(
        &self,
        fetched: Fetched,
        divergence: Divergence,
    ) -> Result<i64, ErrorCode> {
        let _role = self.following_at(fetched)?;
        let target = self.log.with_log(|l| truncation_point(l, divergence));
        tracing::info!(
            to = target,
            leader_epoch = divergence.epoch,
            leader_end_offset = divergence.end_offset,
            "truncating a log tail that diverged from the leader's"
        );
        self.log.truncate_to(target).map_err(|e| e.error_code())?;
        Ok(target)
    }
}

/// The leader's side of a follower's fetch from `fetch_offset` whose last batch was of
/// `last_fetched_epoch` (-1: none): when that epoch ends earlier in the leader's log than
/// the follower's log, or the leader does not know it, the epoch and end offset the
/// follower must truncate to (Kafka's diverging epoch); `None` when the logs agree. When
/// the leader knows no epoch that old (its log start passed them all) there is nothing to
/// name, as in Kafka: the fetch goes on, and one from below the log start offset gets
/// OFFSET_OUT_OF_RANGE.
pub fn diverging_epoch(
    log: &PartitionLog,
    last_fetched_epoch: i32,
    fetch_offset: i64,
) -> Option<(i32, i64)> {
    if last_fetched_epoch < 0 {
        return None;
    }
    let (epoch, end) = log.end_offset_for_epoch(last_fetched_epoch);
    (epoch >= 0 && (epoch < last_fetched_epoch || end < fetch_offset)).then_some((epoch, end))
}

/// Where a follower's log must be cut, given the leader's divergence answer.
fn truncation_point(log: &PartitionLog, divergence: Divergence) -> i64 {
    let end = log.log_end_offset();
    if divergence.epoch < 0 || divergence.end_offset < 0 {
        return log.high_watermark().min(end);
    }
    let (epoch, epoch_end) = log.end_offset_for_epoch(divergence.epoch);
    if epoch_end < 0 {
        return log.high_watermark().min(end);
    }
    if epoch == divergence.epoch {
        epoch_end.min(divergence.end_offset).min(end)
    } else {
        epoch_end.min(end)
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
