//! Quorum nodes of one process connected directly, with faults on demand: a node can be
//! cut off from the others, in both directions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::Raft;
use openraft::Vote;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;

use super::{Quorum, Transport, Unanswered, remote_error};

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Raft<Quorum>>,
    isolated: HashSet<u64>,
}

/// The in-process network: register each node's Raft, then give each node its
/// [`LocalNet::endpoint`].
#[derive(Clone, Default)]
pub struct LocalNet {
    inner: Arc<Mutex<Inner>>,
}

impl LocalNet {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The transport node `from` uses.
    pub fn endpoint(&self, from: u64) -> LocalEndpoint {
        LocalEndpoint {
            from,
            net: self.clone(),
        }
    }

    pub fn register(&self, id: u64, raft: Raft<Quorum>) {
        self.lock().nodes.insert(id, raft);
    }

    /// The node is gone (crashed or stopped): messages to it go unanswered.
    pub fn remove(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts `id` off from every other node, or heals it.
    pub fn isolate(&self, id: u64, isolated: bool) {
        let mut inner = self.lock();
        if isolated {
            inner.isolated.insert(id);
        } else {
            inner.isolated.remove(&id);
        }
    }

    fn route(&self, from: u64, target: u64) -> Result<Raft<Quorum>, Unanswered> {
        let inner = self.lock();
        if inner.isolated.contains(&from) || inner.isolated.contains(&target) {
            return Err(remote_error(target, "network partition"));
        }
        inner
            .nodes
            .get(&target)
            .cloned()
            .ok_or_else(|| remote_error(target, "not running"))
    }
}

/// One node's view of the [`LocalNet`].
pub struct LocalEndpoint {
    from: u64,
    net: LocalNet,
}

impl Transport for LocalEndpoint {
    async fn vote(
        &self,
        target: u64,
        request: VoteRequest<u64>,
    ) -> Result<VoteResponse<u64>, Unanswered> {
        let raft = self.net.route(self.from, target)?;
        raft.vote(request)
            .await
            .map_err(|e| remote_error(target, e))
    }

    async fn append(
        &self,
        target: u64,
        request: AppendEntriesRequest<Quorum>,
    ) -> Result<AppendEntriesResponse<u64>, Unanswered> {
        let raft = self.net.route(self.from, target)?;
        raft.append_entries(request)
            .await
            .map_err(|e| remote_error(target, e))
    }

    async fn snapshot(
        &self,
        target: u64,
        vote: Vote<u64>,
        snapshot: Snapshot<Quorum>,
    ) -> Result<SnapshotResponse<u64>, Unanswered> {
        let raft = self.net.route(self.from, target)?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| remote_error(target, e))
    }
}

/// The transport of the only voter of a quorum: there is nobody to reach.
pub struct Alone;

impl Transport for Alone {
    async fn vote(
        &self,
        target: u64,
        _request: VoteRequest<u64>,
    ) -> Result<VoteResponse<u64>, Unanswered> {
        Err(remote_error(target, "no other voter is configured"))
    }

    async fn append(
        &self,
        target: u64,
        _request: AppendEntriesRequest<Quorum>,
    ) -> Result<AppendEntriesResponse<u64>, Unanswered> {
        Err(remote_error(target, "no other voter is configured"))
    }

    async fn snapshot(
        &self,
        target: u64,
        _vote: Vote<u64>,
        _snapshot: Snapshot<Quorum>,
    ) -> Result<SnapshotResponse<u64>, Unanswered> {
        Err(remote_error(target, "no other voter is configured"))
    }
}
