//! The controller task on a three-voter quorum (in-process, paused clock): brokers
//! register and heartbeat through the active controller, a silent broker is fenced, and
//! the controller moves with quorum leadership.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spool_protocol::ErrorCode;
use spool_protocol::Uuid;
use spool_protocol::messages::{BrokerHeartbeatRequest, BrokerRegistrationRequest};

use super::*;
use crate::quorum::tests::Cluster;
use crate::quorum::{MetadataLog, QuorumNode};
use crate::{MetadataImage, NO_LEADER};

const CLUSTER_ID: &str = "service-test";

struct Brokers {
    quorum: Cluster,
    handles: BTreeMap<u64, ControllerHandle>,
    epochs: BTreeMap<i32, i64>,
}

impl Brokers {
    async fn start() -> Brokers {
        let quorum = Cluster::start(&[1, 2, 3]).await;
        let handles = quorum
            .nodes
            .iter()
            .map(|(&id, node)| (id, spawn(node.clone(), config())))
            .collect();
        Brokers {
            quorum,
            handles,
            epochs: BTreeMap::new(),
        }
    }

    fn any_node(&self) -> &Arc<QuorumNode> {
        self.quorum.nodes.values().next().unwrap()
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.any_node().published().borrow().image.clone()
    }

    /// The offset a broker that follows the log closely has reached.
    fn seen(&self) -> i64 {
        self.quorum
            .nodes
            .values()
            .map(|n| n.published().borrow().offset)
            .max()
            .unwrap_or(-1)
    }

    async fn controller(&self) -> &ControllerHandle {
        let leader = self.quorum.leader().await;
        &self.handles[&leader]
    }

    async fn register(&mut self, id: i32, incarnation: u128) -> i16 {
        let reply = self
            .controller()
            .await
            .register_broker(BrokerRegistrationRequest {
                broker_id: id,
                cluster_id: CLUSTER_ID.into(),
                incarnation_id: Uuid::from_u128(incarnation),
                ..Default::default()
            })
            .await;
        if reply.error_code == 0 {
            self.epochs.insert(id, reply.broker_epoch);
        }
        reply.error_code
    }

    async fn heartbeat(&self, id: i32) -> (i16, bool) {
        let reply = self
            .controller()
            .await
            .heartbeat(BrokerHeartbeatRequest {
                broker_id: id,
                broker_epoch: self.epochs[&id],
                current_metadata_offset: self.seen(),
                ..Default::default()
            })
            .await;
        (reply.error_code, reply.is_fenced)
    }

    /// `ms` of heartbeats every 500 ms from every broker but `silent`.
    async fn live_for(&self, ms: u64, silent: &[i32]) {
        for _ in 0..ms / 500 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for &id in self.epochs.keys() {
                if !silent.contains(&id) {
                    let (error, _) = self.heartbeat(id).await;
                    assert_eq!(error, 0, "heartbeat of {id}");
                }
            }
        }
    }
}

fn config() -> ControllerConfig {
    ControllerConfig {
        cluster_id: CLUSTER_ID.into(),
        session_timeout_ms: 9000,
        default_replication_factor: 3,
        ..ControllerConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_active_controller_serves_brokers_and_moves_with_quorum_leadership() {
    let mut cluster = Brokers::start().await;
    for id in 1..=3 {
        assert_eq!(cluster.register(id, id as u128).await, 0);
        let (error, fenced) = cluster.heartbeat(id).await;
        assert_eq!(
            (error, fenced),
            (0, false),
            "broker {id} unfenced once caught up"
        );
    }
    // Followers of the quorum refuse.
    let leader = cluster.quorum.leader().await;
    let follower = cluster
        .handles
        .keys()
        .copied()
        .find(|&id| id != leader)
        .unwrap();
    let refused = cluster.handles[&follower]
        .change(AdminChange::CreateTopic(TopicRequest {
            name: "orders".into(),
            partitions: 3,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: BTreeMap::new(),
        }))
        .await;
    assert_eq!(refused.unwrap_err().0, ErrorCode::NotController);
    cluster
        .controller()
        .await
        .change(AdminChange::CreateTopic(TopicRequest {
            name: "orders".into(),
            partitions: 3,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: BTreeMap::new(),
        }))
        .await
        .unwrap();
    let image = cluster.image();
    let orders = image.topic("orders").unwrap();
    assert!(orders.partitions.iter().all(|p| p.isr.len() == 3));

    // Broker 1 goes silent: fenced after its session, its leadership moved.
    cluster.live_for(11_000, &[1]).await;
    let image = cluster.image();
    assert!(image.broker(1).unwrap().fenced);
    for p in &image.topic("orders").unwrap().partitions {
        assert!(
            p.leader != 1 && p.leader != NO_LEADER && !p.isr.contains(&1),
            "{p:?}"
        );
    }

    // The quorum leader dies: another node's controller takes over, with fresh sessions.
    cluster.quorum.crash(leader).await;
    cluster.handles.remove(&leader);
    cluster.live_for(1000, &[1]).await;
    assert_ne!(cluster.quorum.leader().await, leader);
    // Broker 1's old registration still holds a session under the new controller.
    assert_eq!(
        cluster.register(1, 100).await,
        ErrorCode::DuplicateBrokerRegistration.code()
    );
    cluster.live_for(10_000, &[1]).await;
    assert_eq!(cluster.register(1, 100).await, 0);
    let (error, fenced) = cluster.heartbeat(1).await;
    assert_eq!((error, fenced), (0, false));
    assert!(!cluster.image().broker(1).unwrap().fenced);
}
