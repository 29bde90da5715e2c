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

use openraft::error::{
    ClientWriteError, Fatal, InitializeError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::{BasicNode, Config, Raft, Vote};
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
        AsyncRuntime = openraft::TokioRuntime,
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
        self.transport
            .snapshot(self.target, vote, snapshot)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
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
}

impl Default for QuorumSettings {
    fn default() -> QuorumSettings {
        QuorumSettings {
            election_timeout_ms: 1000,
            heartbeat_interval_ms: 100,
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
            // The whole log is kept; snapshots serve voters that were away.
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Config::default()
        }
        .validate()
        .map_err(|e| QuorumError::Unavailable(e.to_string()))?;
        let log =
            LogStore::open(storage, dir, clock).map_err(|e| QuorumError::Storage(e.to_string()))?;
        let (machine, published) = ImageMachine::new();
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network(Arc::new(transport)),
            log.clone(),
            machine,
        )
        .await
        .map_err(|e| QuorumError::Unavailable(e.to_string()))?;
        Ok(QuorumNode {
            id,
            voters: voters.clone(),
            raft,
            published,
            log,
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
        match self.raft.client_write(Change(records)).await {
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
