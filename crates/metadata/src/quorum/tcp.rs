//! The quorum between processes: Raft messages over TCP between the voters' controller
//! listeners.
//!
//! A request frame is `size i32, correlation i32, kind i8, body` and its answer
//! `size i32, correlation i32, status i8, body`: status 0 carries the answer in the form of
//! [`super::codec::rpc`], status 1 a UTF-8 reason the remote Raft refused. Frames over
//! [`MAX_FRAME`] are refused before they are read.
//!
//! A node keeps one connection per voter it sends to, opened when first needed and
//! dropped on any error, so a voter that restarts is reached again with the next message.
//! A message unanswered within the timeout counts as lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::Raft;
use openraft::Vote;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, watch};

use super::codec::{CodecError, rpc};
use super::{Quorum, Transport, Unanswered, remote_error};
use crate::net::{BoxStream, Listener, Network};
use crate::remote;
use crate::service::{ControllerHandle, Reply, Request};

/// The largest frame either side reads: a snapshot of a large image fits.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

const VOTE: i8 = 1;
const APPEND: i8 = 2;
const SNAPSHOT: i8 = 3;
/// A request for the active controller (see [`crate::remote`]).
const CONTROLLER: i8 = 4;

const ANSWERED: i8 = 0;
const REFUSED: i8 = 1;

/// Reads one frame (after its size) or `None` when the peer closed between frames.
async fn read_frame(stream: &mut BoxStream) -> std::io::Result<Option<Bytes>> {
    let size = match stream.read_i32().await {
        Ok(size) => size,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other(format!("frame of {size} bytes refused")))?;
    let mut frame = vec![0; size];
    stream.read_exact(&mut frame).await?;
    Ok(Some(Bytes::from(frame)))
}

async fn write_frame(
    stream: &mut BoxStream,
    correlation: i32,
    tag: i8,
    body: &[u8],
) -> std::io::Result<()> {
    let size =
        i32::try_from(4 + 1 + body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut buf = BytesMut::with_capacity(4 + 4 + 1 + body.len());
    buf.put_i32(size);
    buf.put_i32(correlation);
    buf.put_i8(tag);
    buf.put_slice(body);
    stream.write_all(&buf).await
}

/// Splits a frame into its correlation, tag and body.
fn split(mut frame: Bytes) -> Result<(i32, i8, Bytes), CodecError> {
    if frame.remaining() < 5 {
        return Err(CodecError("frame shorter than its header".into()));
    }
    let correlation = frame.get_i32();
    let tag = frame.get_i8();
    Ok((correlation, tag, frame))
}

/// Serves, on `listener` until `shutdown` turns true, the Raft messages other voters send
/// to `raft`, and the controller requests other nodes' brokers send to `controller` (this
/// node's controller task: it answers NOT_CONTROLLER unless this node leads).
pub async fn serve(
    raft: Raft<Quorum>,
    controller: Option<ControllerHandle>,
    listener: Box<dyn Listener>,
    mut shutdown: watch::Receiver<bool>,
) {
    let controller = controller.map(|c| c.local());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let raft = raft.clone();
                    let controller = controller.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(raft, controller, stream, shutdown).await {
                            tracing::debug!(%peer, error = %e, "controller connection closed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "controller listener accept failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    raft: Raft<Quorum>,
    controller: Option<ControllerHandle>,
    mut stream: BoxStream,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut stream) => frame?,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let (correlation, kind, body) =
            split(frame).map_err(|e| std::io::Error::other(e.to_string()))?;
        let answer = answer(&raft, controller.as_ref(), kind, body).await;
        match answer {
            Ok(body) => write_frame(&mut stream, correlation, ANSWERED, &body).await?,
            Err(reason) => {
                write_frame(&mut stream, correlation, REFUSED, reason.as_bytes()).await?
            }
        }
    }
}

/// Passes one message to the local Raft; its answer, or why there is none.
async fn answer(
    raft: &Raft<Quorum>,
    controller: Option<&ControllerHandle>,
    kind: i8,
    body: Bytes,
) -> Result<Bytes, String> {
    match kind {
        CONTROLLER => {
            let controller = controller.ok_or("no controller on this listener")?;
            let request = remote::decode_request(body).map_err(|e| e.to_string())?;
            let reply = controller.ask(request.clone()).await;
            remote::encode_reply(&request, &reply).map_err(|e| e.to_string())
        }
        VOTE => {
            let request = rpc::decode_vote_request(body).map_err(|e| e.to_string())?;
            let response = raft.vote(request).await.map_err(|e| e.to_string())?;
            Ok(rpc::encode_vote_response(&response))
        }
        APPEND => {
            let request = rpc::decode_append_request(body).map_err(|e| e.to_string())?;
            let response = raft
                .append_entries(request)
                .await
                .map_err(|e| e.to_string())?;
            Ok(rpc::encode_append_response(&response))
        }
        SNAPSHOT => {
            let (vote, snapshot) = rpc::decode_snapshot(body).map_err(|e| e.to_string())?;
            let response = raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| e.to_string())?;
            Ok(rpc::encode_snapshot_response(&response))
        }
        other => Err(format!("unknown message kind {other}")),
    }
}

struct Connection {
    stream: BoxStream,
    /// The last correlation number used.
    next: i32,
    /// A message was sent and its answer not yet read.
    in_flight: bool,
}

struct Peer {
    address: String,
    stream: Mutex<Option<Connection>>,
}

/// How a voter reaches the others over TCP.
pub struct TcpTransport {
    peers: BTreeMap<u64, Peer>,
    timeout: Duration,
    net: Arc<dyn Network>,
}

impl TcpTransport {
    /// `voters` maps each voter to its controller listener's `host:port`; a message waits
    /// at most `timeout` for its answer (snapshots ten times as long). Connections are
    /// opened over `net`.
    pub fn new(
        voters: &BTreeMap<u64, String>,
        timeout: Duration,
        net: Arc<dyn Network>,
    ) -> TcpTransport {
        TcpTransport {
            peers: voters
                .iter()
                .map(|(&id, address)| {
                    (
                        id,
                        Peer {
                            address: address.clone(),
                            stream: Mutex::new(None),
                        },
                    )
                })
                .collect(),
            timeout,
            net,
        }
    }

    async fn call(
        &self,
        target: u64,
        kind: i8,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Unanswered> {
        let peer = self
            .peers
            .get(&target)
            .ok_or_else(|| remote_error(target, "not a configured voter"))?;
        // The wait for the connection counts toward the timeout: messages to one voter
        // go one at a time.
        let exchange = async {
            let mut slot = peer.stream.lock().await;
            // A connection whose last exchange was abandoned half-way (its caller timed
            // out) may still carry that answer: it is not reused.
            if slot.as_ref().is_some_and(|c| c.in_flight) {
                *slot = None;
            }
            if slot.is_none() {
                let stream = self.net.connect(&peer.address).await?;
                *slot = Some(Connection {
                    stream,
                    next: 0,
                    in_flight: false,
                });
            }
            let Some(connection) = slot.as_mut() else {
                return Err(std::io::Error::other("no connection"));
            };
            connection.next = connection.next.wrapping_add(1);
            let correlation = connection.next;
            connection.in_flight = true;
            let answered = async {
                write_frame(&mut connection.stream, correlation, kind, &body).await?;
                let frame = read_frame(&mut connection.stream)
                    .await?
                    .ok_or_else(|| std::io::Error::other("connection closed"))?;
                let (answered, status, body) =
                    split(frame).map_err(|e| std::io::Error::other(e.to_string()))?;
                if answered != correlation {
                    return Err(std::io::Error::other("answer to another message"));
                }
                Ok((status, body))
            }
            .await;
            match answered {
                Ok(answer) => {
                    connection.in_flight = false;
                    Ok(answer)
                }
                Err(e) => {
                    *slot = None;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((ANSWERED, body))) => Ok(body),
            Ok(Ok((_, reason))) => Err(remote_error(target, String::from_utf8_lossy(&reason))),
            Ok(Err(e)) => Err(remote_error(target, e)),
            Err(_) => Err(Unanswered {
                timed_out: true,
                ..remote_error(target, "no answer in time")
            }),
        }
    }
}

impl TcpTransport {
    /// Sends a request to the controller task of voter `target`.
    pub async fn ask(&self, target: u64, request: &Request) -> Result<Reply, Unanswered> {
        let body = remote::encode_request(request).map_err(|e| remote_error(target, e))?;
        let answer = self.call(target, CONTROLLER, body, self.timeout).await?;
        remote::decode_reply(request, answer).map_err(|e| remote_error(target, e))
    }
}

impl Transport for TcpTransport {
    async fn vote(
        &self,
        target: u64,
        request: VoteRequest<u64>,
    ) -> Result<VoteResponse<u64>, Unanswered> {
        let body = rpc::encode_vote_request(&request);
        let answer = self.call(target, VOTE, body, self.timeout).await?;
        rpc::decode_vote_response(answer).map_err(|e| remote_error(target, e))
    }

    async fn append(
        &self,
        target: u64,
        request: AppendEntriesRequest<Quorum>,
    ) -> Result<AppendEntriesResponse<u64>, Unanswered> {
        let body = rpc::encode_append_request(&request).map_err(|e| remote_error(target, e))?;
        let answer = self.call(target, APPEND, body, self.timeout).await?;
        rpc::decode_append_response(answer).map_err(|e| remote_error(target, e))
    }

    async fn snapshot(
        &self,
        target: u64,
        vote: Vote<u64>,
        snapshot: Snapshot<Quorum>,
    ) -> Result<SnapshotResponse<u64>, Unanswered> {
        let body = rpc::encode_snapshot(&vote, &snapshot).map_err(|e| remote_error(target, e))?;
        let answer = self.call(target, SNAPSHOT, body, self.timeout * 10).await?;
        rpc::decode_snapshot_response(answer).map_err(|e| remote_error(target, e))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use spool_log::DiskStorage;
    use spool_protocol::internal::ProducerIdsRecord;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::MetadataRecord;
    use crate::net::Tcp;
    use crate::quorum::{MetadataLog, QuorumNode, QuorumSettings};

    fn clock() -> i64 {
        0
    }

    /// Three voters in separate data directories, talking over loopback TCP on the real
    /// clock: they elect one leader, and what it commits reaches every image.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_voters_elect_a_leader_and_replicate_over_tcp() {
        let root: PathBuf =
            std::env::temp_dir().join(format!("spool-tcp-quorum-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut listeners = BTreeMap::new();
        let mut voters = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            voters.insert(id, listener.local_addr().unwrap().to_string());
            listeners.insert(id, listener);
        }
        let settings = QuorumSettings {
            election_timeout_ms: 300,
            heartbeat_interval_ms: 50,
            ..QuorumSettings::default()
        };
        let (stop, stopped) = watch::channel(false);
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let node = QuorumNode::start(
                id,
                &voters,
                &settings,
                Arc::new(DiskStorage),
                &root.join(format!("node-{id}")),
                TcpTransport::new(&voters, Duration::from_millis(500), Arc::new(Tcp)),
                clock,
            )
            .await
            .unwrap();
            let listener = Box::new(listener);
            tokio::spawn(serve(node.raft().clone(), None, listener, stopped.clone()));
            node.bootstrap().await.unwrap();
            nodes.insert(id, node);
        }
        let mut leader = None;
        for _ in 0..200 {
            let leaders: Vec<u64> = nodes
                .values()
                .filter(|n| n.leader_term().is_some())
                .map(|n| n.id())
                .collect();
            if leaders.len() == 1 {
                leader = Some(leaders[0]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let leader = leader.expect("one leader within five seconds");
        let follower = nodes.keys().copied().find(|&id| id != leader).unwrap();
        // A frame larger than MAX_FRAME is refused before it is read, and the connection
        // closed; the listener keeps serving the voters.
        let mut hostile = TcpStream::connect(&voters[&follower]).await.unwrap();
        hostile.write_i32(i32::MAX).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), hostile.read_to_end(&mut rest))
            .await
            .expect("the connection is closed");
        assert!(closed.is_ok_and(|n| n == 0));
        let record = MetadataRecord::ProducerIds(ProducerIdsRecord {
            broker_id: 1,
            broker_epoch: 1,
            next_producer_id: 1000,
            ..Default::default()
        });
        let refused = nodes[&follower].commit(vec![record.clone()]).await;
        assert!(
            matches!(refused, Err(crate::quorum::QuorumError::NotLeader { leader: Some(l) }) if l == leader)
        );
        let offset = nodes[&leader].commit(vec![record]).await.unwrap();
        for node in nodes.values() {
            let mut published = node.published();
            let reached = tokio::time::timeout(
                Duration::from_secs(5),
                published.wait_for(|p| p.offset >= offset),
            )
            .await;
            assert!(reached.is_ok(), "node {} applies the entry", node.id());
            assert_eq!(node.published().borrow().image.next_producer_id(), 1000);
        }
        let _ = stop.send(true);
        for (_, node) in nodes {
            node.shutdown().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
