//! Three voters in one process on simulated time and in-memory disks: elections, commits,
//! a crashed leader, a cut-off leader, and restarts that lose everything not synced.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use spool_log::MemStorage;
use spool_protocol::Uuid;
use spool_protocol::internal::TopicRecord;

use super::local::LocalNet;
use super::*;

const DIR: &str = "/data/__cluster_metadata-0";

fn clock() -> i64 {
    0
}

pub(crate) struct Cluster {
    pub(crate) net: LocalNet,
    disks: BTreeMap<u64, MemStorage>,
    pub(crate) nodes: BTreeMap<u64, Arc<QuorumNode>>,
}

impl Cluster {
    pub(crate) async fn start(ids: &[u64]) -> Cluster {
        let mut cluster = Cluster {
            net: LocalNet::default(),
            disks: ids.iter().map(|&id| (id, MemStorage::new())).collect(),
            nodes: BTreeMap::new(),
        };
        for &id in ids {
            cluster.boot(id).await;
        }
        cluster
    }

    fn voters(&self) -> BTreeMap<u64, String> {
        self.disks
            .keys()
            .map(|&id| (id, format!("node-{id}")))
            .collect()
    }

    pub(crate) async fn boot(&mut self, id: u64) {
        let disk = self.disks[&id].clone();
        let node = QuorumNode::start(
            id,
            &self.voters(),
            &QuorumSettings::default(),
            Arc::new(disk),
            Path::new(DIR),
            self.net.endpoint(id),
            clock,
        )
        .await
        .unwrap();
        self.net.register(id, node.raft().clone());
        node.bootstrap().await.unwrap();
        self.nodes.insert(id, Arc::new(node));
    }

    /// Kills a node: whatever its disk had not synced is lost.
    pub(crate) async fn crash(&mut self, id: u64) {
        self.net.remove(id);
        if let Some(node) = self.nodes.remove(&id) {
            let _ = node.raft.shutdown().await;
        }
        self.disks[&id].crash();
    }

    pub(crate) async fn leader(&self) -> u64 {
        for _ in 0..200 {
            let leaders: Vec<u64> = self
                .nodes
                .values()
                .filter_map(|n| {
                    let metrics = n.raft.metrics().borrow().clone();
                    (metrics.current_leader == Some(n.id)).then_some(n.id)
                })
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no single leader elected");
    }

    async fn commit_topic(&self, leader: u64, name: &str) -> i64 {
        self.nodes[&leader].commit(vec![topic(name)]).await.unwrap()
    }

    /// Waits until `id` has applied `offset`, then lists its topics.
    async fn topics_at(&self, id: u64, offset: i64) -> Vec<String> {
        let mut published = self.nodes[&id].published();
        tokio::time::timeout(
            Duration::from_secs(30),
            published.wait_for(|p| p.offset >= offset),
        )
        .await
        .unwrap_or_else(|_| panic!("node {id} did not reach {offset}"))
        .unwrap();
        let image = published.borrow().image.clone();
        image.topics().map(|t| t.name.clone()).collect()
    }
}

fn topic(name: &str) -> MetadataRecord {
    MetadataRecord::Topic(TopicRecord {
        name: name.into(),
        topic_id: Uuid::from_u128(name.len() as u128 + name.as_bytes()[0] as u128 * 1000),
        ..Default::default()
    })
}

#[tokio::test(start_paused = true)]
async fn three_voters_elect_one_leader_and_every_node_applies_what_it_commits() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let offset = cluster.commit_topic(leader, "orders").await;
    assert!(offset >= 1, "after the membership entry: {offset}");
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.topics_at(id, offset).await,
            vec!["orders".to_string()]
        );
    }
    // A follower refuses and names the leader.
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    match cluster.nodes[&follower].commit(vec![topic("clicks")]).await {
        Err(QuorumError::NotLeader { leader: named }) => assert_eq!(named, Some(leader)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert_eq!(cluster.nodes[&follower].leader(), Some(leader));
}

#[tokio::test(start_paused = true)]
async fn a_crashed_leader_is_replaced_and_rejoins_with_nothing_committed_lost() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let first = cluster.leader().await;
    let offset = cluster.commit_topic(first, "orders").await;
    cluster.crash(first).await;

    let second = cluster.leader().await;
    assert_ne!(second, first);
    let later = cluster.commit_topic(second, "clicks").await;
    assert!(later > offset);

    // The old leader restarts from what its disk kept and catches up.
    cluster.boot(first).await;
    let topics = cluster.topics_at(first, later).await;
    assert_eq!(topics, vec!["clicks".to_string(), "orders".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_leader_commits_nothing_and_drops_its_uncommitted_tail_on_healing() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let old = cluster.leader().await;
    let committed = cluster.commit_topic(old, "orders").await;
    cluster.net.isolate(old, true);

    // Its write cannot reach a majority.
    let stuck = tokio::time::timeout(
        Duration::from_secs(5),
        cluster.nodes[&old].commit(vec![topic("lost")]),
    )
    .await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "an isolated leader committed: {stuck:?}"
    );

    // The majority elects a leader and goes on.
    let mut polls = 0;
    let new = loop {
        let found = cluster
            .nodes
            .values()
            .filter(|n| n.id != old)
            .find(|n| n.raft.metrics().borrow().current_leader == Some(n.id))
            .map(|n| n.id);
        if let Some(id) = found {
            break id;
        }
        polls += 1;
        assert!(polls < 300, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = cluster.commit_topic(new, "clicks").await;
    assert!(after > committed);

    cluster.net.isolate(old, false);
    let topics = cluster.topics_at(old, after).await;
    assert_eq!(
        topics,
        vec!["clicks".to_string(), "orders".to_string()],
        "`lost` is gone"
    );
    // Its log agrees with the new leader's from there on.
    let mut reader = cluster.nodes[&old].log.clone();
    let mut leader_reader = cluster.nodes[&new].log.clone();
    let mine = reader.try_get_log_entries(0..=after as u64).await.unwrap();
    let theirs = leader_reader
        .try_get_log_entries(0..=after as u64)
        .await
        .unwrap();
    let ids =
        |entries: &[openraft::Entry<Quorum>]| entries.iter().map(|e| e.log_id).collect::<Vec<_>>();
    assert_eq!(ids(&mine), ids(&theirs));
}

#[tokio::test(start_paused = true)]
async fn every_voter_restarting_at_once_recovers_the_image_from_the_log() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    cluster.commit_topic(leader, "orders").await;
    let offset = cluster.commit_topic(leader, "clicks").await;
    for id in [1, 2, 3] {
        cluster.crash(id).await;
    }
    for id in [1, 2, 3] {
        cluster.boot(id).await;
    }
    let leader = cluster.leader().await;
    let next = cluster.commit_topic(leader, "audit").await;
    assert!(next > offset);
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.topics_at(id, next).await,
            vec![
                "audit".to_string(),
                "clicks".to_string(),
                "orders".to_string()
            ]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_rebuilds_the_same_image() {
    let cluster = Cluster::start(&[1]).await;
    let leader = cluster.leader().await;
    cluster.commit_topic(leader, "orders").await;
    let offset = cluster.commit_topic(leader, "clicks").await;
    cluster.topics_at(leader, offset).await;
    let node = &cluster.nodes[&leader];
    node.raft.trigger().snapshot().await.unwrap();
    let mut polls = 0;
    let snapshot = loop {
        if let Some(snapshot) = node.raft.metrics().borrow().snapshot {
            break snapshot;
        }
        polls += 1;
        assert!(polls < 300, "no snapshot was built");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(snapshot.index as i64, offset);
    let image = node.published().borrow().image.clone();
    let mut rebuilt = MetadataImage::default();
    for record in image.to_records() {
        rebuilt.apply(&record);
    }
    assert_eq!(
        format!("{:?}", rebuilt.to_records()),
        format!("{:?}", image.to_records())
    );
}

use openraft::RaftLogReader;
