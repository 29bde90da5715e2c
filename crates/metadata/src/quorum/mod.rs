//! The metadata quorum (KRaft's role): the controllers replicate the metadata log with Raft
//! (openraft), and every node applies the committed entries to its image.
//!
//! - [`store`]: the Raft log kept in the partition log `__cluster_metadata-0` (an entry's
//!   index is its offset, its term the batch's leader epoch) with the vote in
//!   `quorum-state`, and the state machine that builds the image.
//! - [`codec`]: the stored form of entries, votes and snapshots.
//! - [`Transport`]: how a node reaches the other voters; [`local::LocalNet`] connects nodes
//!   of one process (tests), [`tcp`] connects processes through their controller listeners.
//! - [`QuorumNode`]: one node of the quorum, the [`MetadataLog`] the rest of Spool uses.
//!
//! The voters are fixed by configuration (`controller.quorum.voters`), as in KRaft: every
//! voter whose log is empty writes the same first entry, so any of them may start first.

pub mod codec;
pub mod local;
pub mod store;
pub mod tcp;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, Fatal, InitializeError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy, Vote};
use spool_log::Storage;
use thiserror::Error;
use tokio::sync::watch;

use crate::{MetadataImage, MetadataRecord};
use store::{ImageMachine, ImageSnapshot, LogStore};

openraft::declare_raft_types!(
    /// The quorum's types: entries carry metadata records; a node is a controller, known
    /// by the address of its controller listener.
    pub Quorum:
        D = Change,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<Quorum>,
        SnapshotData = ImageSnapshot,
        AsyncRuntime = crate::random::Runtime,
);

/// What an entry carries: the records of one controller decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change(pub Vec<MetadataRecord>);

/// The image after the newest applied entry, and that entry's offset (-1 before any).
#[derive(Debug, Clone)]
pub struct Published {
    pub image: Arc<MetadataImage>,
    pub offset: i64,
}

impl Default for Published {
    fn default() -> Published {
        Published {
            image: Arc::new(MetadataImage::default()),
            offset: -1,
        }
    }
}

#[derive(Debug, Error)]
pub enum QuorumError {
    /// Only the active controller commits; this is who it is, if known.
    #[error("not the active controller (the active one is {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("metadata quorum unavailable: {0}")]
    Unavailable(String),
    #[error("metadata storage: {0}")]
    Storage(String),
}

/// The metadata log as the rest of Spool sees it, whatever keeps it.
pub trait MetadataLog: Send + Sync {
    /// Commits `records` as one entry (only the active controller may); resolves once it
    /// is applied here, with its offset.
    fn commit(
        &self,
        records: Vec<MetadataRecord>,
    ) -> impl Future<Output = Result<i64, QuorumError>> + Send;
    /// The image as of the newest applied entry.
    fn published(&self) -> watch::Receiver<Published>;
    /// The active controller, if known.
    fn leader(&self) -> Option<u64>;
    /// This node's term as the active controller, or `None` when it is not the leader.
    fn leader_term(&self) -> Option<u64>;
    /// As the leader: waits until everything committed before the call is applied here,
    /// and returns the applied offset.
    fn barrier(&self) -> impl Future<Output = Result<i64, QuorumError>> + Send;
}

/// Why a message to another voter got no answer.
#[derive(Debug, Error)]
#[error("voter {target} unreachable: {reason}")]
pub struct Unanswered {
    pub target: u64,
    pub reason: String,
    /// The message was sent (or waited to be) but no answer came in time: the remote
    /// side may still act on it.
    pub timed_out: bool,
}

/// How a node reaches the other voters.
pub trait Transport: Send + Sync + 'static {
    fn vote(
        &self,
        target: u64,
        request: VoteRequest<u64>,
    ) -> impl Future<Output = Result<VoteResponse<u64>, Unanswered>> + Send;
    fn append(
        &self,
        target: u64,
        request: AppendEntriesRequest<Quorum>,
    ) -> impl Future<Output = Result<AppendEntriesResponse<u64>, Unanswered>> + Send;
    fn snapshot(
        &self,
        target: u64,
        vote: Vote<u64>,
        snapshot: Snapshot<Quorum>,
    ) -> impl Future<Output = Result<SnapshotResponse<u64>, Unanswered>> + Send;
}

struct Network<T>(Arc<T>);

struct Peer<T> {
    target: u64,
    transport: Arc<T>,
}

impl<T: Transport> RaftNetworkFactory<Quorum> for Network<T> {
    type Network = Peer<T>;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Peer<T> {
        Peer {
            target,
            transport: self.0.clone(),
        }
    }
}

impl<T: Transport> RaftNetwork<Quorum> for Peer<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Quorum>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.transport
            .append(self.target, rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.transport
            .vote(self.target, rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<Quorum>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<Quorum, Fatal<u64>>> {
        // Unreachable, not a network error: openraft resends after a network error at once,
        // which is a busy loop while the target is down; after Unreachable it backs off.
        self.transport
            .snapshot(self.target, vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

/// Timing of the quorum.
#[derive(Debug, Clone)]
pub struct QuorumSettings {
    /// A follower that hears nothing from the leader for between this and twice this
    /// (by its rank among the voters) starts an election
    /// (`controller.quorum.election.timeout.ms`).
    pub election_timeout_ms: u64,
    /// How often the leader reaches every follower when idle.
    pub heartbeat_interval_ms: u64,
    /// A node snapshots its image once this many bytes of entries have been appended
    /// since its last snapshot (`metadata.log.max.record.bytes.between.snapshots`)…
    pub snapshot_bytes: u64,
    /// …or once this long has passed with any entry appended; 0: never by time
    /// (`metadata.log.max.snapshot.interval.ms`).
    pub snapshot_interval_ms: u64,
    /// The metadata log's segment size: the log is purged a whole segment at a time
    /// (`metadata.log.segment.bytes`).
    pub segment_bytes: u64,
    /// Segments a snapshot covers go while the log is larger than this; -1: no limit
    /// (`metadata.max.retention.bytes`).
    pub retention_bytes: i64,
    /// …or once their newest entry is older than this; -1: no limit
    /// (`metadata.max.retention.ms`).
    pub retention_ms: i64,
}

impl Default for QuorumSettings {
    fn default() -> QuorumSettings {
        QuorumSettings {
            election_timeout_ms: 1000,
            heartbeat_interval_ms: 100,
            snapshot_bytes: 20 * 1024 * 1024,
            snapshot_interval_ms: 60 * 60 * 1000,
            segment_bytes: 1024 * 1024 * 1024,
            retention_bytes: 100 * 1024 * 1024,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// A commit not confirmed within this many election timeouts fails as Unavailable. A
/// leader that lost its term may never hear of its entry again: one replaced by a snapshot
/// from the next leader is neither committed nor truncated, and openraft leaves its writer
/// waiting.
const COMMIT_TIMEOUT_ELECTIONS: u64 = 5;

/// How often a node checks whether a snapshot or a purge is due.
const SNAPSHOT_CHECK_MS: u64 = 1000;

/// Asks Raft for a snapshot whenever one is due by `settings` (KRaft's two triggers:
/// bytes appended since the last one, or time passed with anything appended; the bytes
/// counted are those appended since this node started), and to purge the log segments
/// that the newest snapshot covers and the retention limits let go.
async fn snapshot_when_due(raft: Raft<Quorum>, log: LogStore, settings: QuorumSettings) {
    let mut counted = log.appended_bytes();
    let mut last = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(SNAPSHOT_CHECK_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let appended = log.appended_bytes() - counted;
        let interval = settings.snapshot_interval_ms;
        let due = appended >= settings.snapshot_bytes
            || (interval > 0 && appended > 0 && last.elapsed() >= Duration::from_millis(interval));
        if due {
            if raft.trigger().snapshot().await.is_err() {
                return; // Raft has stopped.
            }
            counted += appended;
            last = tokio::time::Instant::now();
        }
        let snapshot = raft.metrics().borrow().snapshot;
        if let Some(upto) = snapshot.and_then(|s| log.purgeable(s.index))
            && raft.trigger().purge_log(upto).await.is_err()
        {
            return;
        }
    }
}

/// One voter of the metadata quorum.
pub struct QuorumNode {
    id: u64,
    voters: BTreeMap<u64, String>,
    raft: Raft<Quorum>,
    published: watch::Receiver<Published>,
    log: LogStore,
    snapshots: tokio::task::JoinHandle<()>,
    /// How long a commit may wait for its entry to be committed.
    commit_timeout: Duration,
}

impl Drop for QuorumNode {
    fn drop(&mut self) {
        self.snapshots.abort();
    }
}

impl QuorumNode {
    /// Opens the node's log in `dir` and starts it as one of `voters` (ID → controller
    /// address); it takes part in elections at once.
    ///
    /// Each voter waits a different time before standing for election: the timeout plus
    /// its rank among the voters times timeout / voters. Equal waits that start together
    /// (after a split vote, or on a simulated clock) would split every vote after it.
    pub async fn start<T: Transport>(
        id: u64,
        voters: &BTreeMap<u64, String>,
        settings: &QuorumSettings,
        storage: Arc<dyn Storage>,
        dir: &Path,
        transport: T,
        clock: fn() -> i64,
    ) -> Result<QuorumNode, QuorumError> {
        let rank = voters.keys().position(|&v| v == id).unwrap_or(0) as u64;
        let timeout = settings.election_timeout_ms;
        let election_timeout = timeout + rank * timeout / voters.len().max(1) as u64;
        let config = Config {
            cluster_name: "spool".into(),
            election_timeout_min: election_timeout,
            election_timeout_max: election_timeout + 1,
            heartbeat_interval: settings.heartbeat_interval_ms,
            // Snapshots and purges are asked for by `snapshot_when_due`.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Config::default()
        }
        .validate()
        .map_err(|e| QuorumError::Unavailable(e.to_string()))?;
        let log_config = store::metadata_log_config(
            settings.segment_bytes,
            settings.retention_bytes,
            settings.retention_ms,
        );
        let log = LogStore::open(storage.clone(), dir, log_config, clock)
            .map_err(|e| QuorumError::Storage(e.to_string()))?;
        let (machine, published) =
            ImageMachine::open(storage, dir).map_err(|e| QuorumError::Storage(e.to_string()))?;
        log.tell_commits_to(machine.clone());
        if let Some(purged) = log.last_purged()
            && machine.last_applied() < Some(purged)
        {
            return Err(QuorumError::Storage(format!(
                "the metadata log in {} starts after entry {}, but no readable snapshot \
                 covers it",
                dir.display(),
                purged.index
            )));
        }
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network(Arc::new(transport)),
            log.clone(),
            machine,
        )
        .await
        .map_err(|e| QuorumError::Unavailable(e.to_string()))?;
        let snapshots = tokio::spawn(snapshot_when_due(
            raft.clone(),
            log.clone(),
            settings.clone(),
        ));
        Ok(QuorumNode {
            id,
            voters: voters.clone(),
            raft,
            published,
            log,
            snapshots,
            commit_timeout: Duration::from_millis(COMMIT_TIMEOUT_ELECTIONS * timeout),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Forms the quorum of the configured voters if this node has never been part of one;
    /// a node that has is left as it is.
    pub async fn bootstrap(&self) -> Result<(), QuorumError> {
        if !self.log.is_pristine() {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> = self
            .voters
            .iter()
            .map(|(&id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(QuorumError::Unavailable(e.to_string())),
        }
    }

    /// The Raft handle, for the controller listener to pass requests to.
    pub fn raft(&self) -> &Raft<Quorum> {
        &self.raft
    }

    /// Stops the node and closes its log cleanly.
    pub async fn shutdown(self) -> Result<(), QuorumError> {
        self.snapshots.abort();
        self.raft
            .shutdown()
            .await
            .map_err(|e| QuorumError::Unavailable(e.to_string()))?;
        self.log
            .close()
            .map_err(|e| QuorumError::Storage(e.to_string()))
    }
}

impl MetadataLog for QuorumNode {
    async fn commit(&self, records: Vec<MetadataRecord>) -> Result<i64, QuorumError> {
        let write = self.raft.client_write(Change(records));
        let Ok(written) = tokio::time::timeout(self.commit_timeout, write).await else {
            return Err(QuorumError::Unavailable(format!(
                "the entry was not committed within {} ms",
                self.commit_timeout.as_millis()
            )));
        };
        match written {
            Ok(written) => Ok(written.log_id.index as i64),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(QuorumError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(e) => Err(QuorumError::Unavailable(e.to_string())),
        }
    }

    fn published(&self) -> watch::Receiver<Published> {
        self.published.clone()
    }

    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader == Some(self.id)).then_some(metrics.current_term)
    }

    async fn barrier(&self) -> Result<i64, QuorumError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.published.borrow().offset),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                forward,
            ))) => Err(QuorumError::NotLeader {
                leader: forward.leader_id,
            }),
            Err(e) => Err(QuorumError::Unavailable(e.to_string())),
        }
    }
}

/// An answer from a remote node's Raft, as the transport passes it back.
pub fn remote_error(target: u64, error: impl std::fmt::Display) -> Unanswered {
    Unanswered {
        target,
        reason: error.to_string(),
        timed_out: false,
    }
}

#[cfg(test)]
pub(crate) mod tests;
