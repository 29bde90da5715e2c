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
    settings: QuorumSettings,
}

impl Cluster {
    pub(crate) async fn start(ids: &[u64]) -> Cluster {
        Cluster::start_with(ids, QuorumSettings::default()).await
    }

    async fn start_with(ids: &[u64], settings: QuorumSettings) -> Cluster {
        let mut cluster = Cluster {
            net: LocalNet::default(),
            disks: ids.iter().map(|&id| (id, MemStorage::new())).collect(),
            nodes: BTreeMap::new(),
            settings,
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
        self.try_boot(id).await.unwrap();
    }

    async fn try_boot(&mut self, id: u64) -> Result<(), QuorumError> {
        let disk = self.disks[&id].clone();
        let node = QuorumNode::start(
            id,
            &self.voters(),
            &self.settings,
            Arc::new(disk),
            Path::new(DIR),
            self.net.endpoint(id),
            clock,
        )
        .await?;
        self.net.register(id, node.raft().clone());
        node.bootstrap().await?;
        self.nodes.insert(id, Arc::new(node));
        Ok(())
    }

    /// The snapshot files on a node's disk.
    fn checkpoints(&self, id: u64) -> Vec<String> {
        let mut names: Vec<String> = self.disks[&id]
            .list(Path::new(DIR))
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(store::CHECKPOINT_SUFFIX) && n.contains('-'))
            .collect();
        names.sort();
        names
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

    /// Waits until the nodes other than `cut_off` elect one of them.
    async fn leader_without(&self, cut_off: u64) -> u64 {
        for _ in 0..300 {
            let found = self
                .nodes
                .values()
                .filter(|n| n.id != cut_off)
                .find(|n| n.raft.metrics().borrow().current_leader == Some(n.id));
            if let Some(node) = found {
                return node.id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the majority elected no leader");
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
    let new = cluster.leader_without(old).await;
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

/// Snapshots after a few hundred bytes of entries, rolls the log every kilobyte and keeps
/// no segment a snapshot covers: a few dozen commits snapshot and purge.
fn snapshotting() -> QuorumSettings {
    QuorumSettings {
        snapshot_bytes: 300,
        segment_bytes: 1024,
        retention_bytes: 0,
        ..QuorumSettings::default()
    }
}

/// Commits `count` topics named `{prefix}-{i}`; returns the last offset.
async fn commit_many(cluster: &Cluster, leader: u64, prefix: &str, count: usize) -> i64 {
    let mut offset = 0;
    for i in 0..count {
        offset = cluster.commit_topic(leader, &format!("{prefix}-{i}")).await;
    }
    offset
}

/// Waits until every node has a snapshot file and a log that starts after offset 0.
async fn wait_for_purge(cluster: &Cluster, ids: &[u64]) {
    for _ in 0..100 {
        if ids.iter().all(|&id| {
            !cluster.checkpoints(id).is_empty() && cluster.nodes[&id].log.start_offset() > 0
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state: Vec<_> = ids
        .iter()
        .map(|&id| {
            (
                id,
                cluster.checkpoints(id),
                cluster.nodes[&id].log.start_offset(),
            )
        })
        .collect();
    panic!("no snapshot and purge on every node: {state:?}");
}

#[tokio::test(start_paused = true)]
async fn snapshots_go_to_disk_the_log_below_them_goes_and_a_restart_rebuilds_from_them() {
    let mut cluster = Cluster::start_with(&[1, 2, 3], snapshotting()).await;
    let leader = cluster.leader().await;
    let offset = commit_many(&cluster, leader, "t", 60).await;
    wait_for_purge(&cluster, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        let files = cluster.checkpoints(id);
        assert_eq!(files.len(), 1, "older snapshots are removed: {files:?}");
        // Whole segments went: the first kept one starts past the first entries.
        let segments = cluster.disks[&id].list(Path::new(DIR)).unwrap();
        assert!(
            !segments.contains(&format!("{:020}.log", 0)),
            "node {id} kept its first segment: {segments:?}"
        );
    }
    for id in [1, 2, 3] {
        cluster.crash(id).await;
    }
    for id in [1, 2, 3] {
        cluster.boot(id).await;
        // Nothing is published before a leader says what is committed: the snapshot
        // alone could be stale.
        let published = cluster.nodes[&id].published().borrow().clone();
        assert_eq!(
            published.offset, -1,
            "node {id} published before catching up"
        );
    }
    let leader = cluster.leader().await;
    let next = cluster.commit_topic(leader, "after").await;
    assert!(next > offset);
    let mut expected: Vec<String> = (0..60).map(|i| format!("t-{i}")).collect();
    expected.push("after".into());
    expected.sort();
    for id in [1, 2, 3] {
        assert_eq!(cluster.topics_at(id, next).await, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_voter_behind_the_purged_log_installs_a_snapshot_and_keeps_it() {
    let mut cluster = Cluster::start_with(&[1, 2, 3], snapshotting()).await;
    let leader = cluster.leader().await;
    let away = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster.crash(away).await;
    let offset = commit_many(&cluster, leader, "t", 60).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != away).collect();
    wait_for_purge(&cluster, &others).await;

    // Meanwhile the leader keeps failing to send it a snapshot, backing off between tries.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // What it missed is no longer in any log: it gets a snapshot, and writes it down.
    cluster.boot(away).await;
    assert_eq!(cluster.topics_at(away, offset).await.len(), 60);
    assert!(!cluster.checkpoints(away).is_empty());
    // Its log now starts after the snapshot, and takes the entries that follow it.
    let next = cluster.commit_topic(leader, "next").await;
    assert_eq!(cluster.topics_at(away, next).await.len(), 61);
    cluster.crash(away).await;
    let kept = cluster.checkpoints(away);
    cluster.boot(away).await;
    let last = cluster.commit_topic(leader, "last").await;
    assert_eq!(cluster.topics_at(away, last).await.len(), 62);
    // It restarted from its own snapshot: the log it has starts after it.
    assert!(!kept.is_empty());
    assert!(cluster.nodes[&away].log.start_offset() > 0);
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_leader_replaced_by_a_snapshot_answers_its_pending_commit() {
    let cluster = Cluster::start_with(&[1, 2, 3], snapshotting()).await;
    let old = cluster.leader().await;
    cluster.commit_topic(old, "orders").await;
    cluster.net.isolate(old, true);
    let node = cluster.nodes[&old].clone();
    let pending = tokio::spawn(async move { node.commit(vec![topic("lost")]).await });

    // The others elect a leader, go on, snapshot and purge past the old leader's log.
    let new = cluster.leader_without(old).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let offset = commit_many(&cluster, new, "t", 60).await;
    wait_for_purge(&cluster, &others).await;

    // Healed, it gets a snapshot that replaces its uncommitted entry; its writer hears.
    cluster.net.isolate(old, false);
    assert_eq!(cluster.topics_at(old, offset).await.len(), 61);
    let answer = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the pending commit was never answered")
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");
}

#[tokio::test(start_paused = true)]
async fn a_damaged_snapshot_is_refused_when_the_log_no_longer_covers_what_it_held() {
    let mut cluster = Cluster::start_with(&[1, 2, 3], snapshotting()).await;
    let leader = cluster.leader().await;
    commit_many(&cluster, leader, "t", 60).await;
    wait_for_purge(&cluster, &[1, 2, 3]).await;
    let victim = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster.crash(victim).await;
    for name in cluster.checkpoints(victim) {
        let path = Path::new(DIR).join(name);
        let mut bytes = cluster.disks[&victim].contents(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        cluster.disks[&victim].set_contents(&path, bytes);
    }
    match cluster.try_boot(victim).await {
        Err(QuorumError::Storage(message)) => {
            assert!(message.contains("no readable snapshot"), "{message}")
        }
        other => panic!("a node without the entries its log lacks started: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_damaged_snapshot_is_skipped_when_the_log_still_holds_everything() {
    let settings = QuorumSettings {
        retention_bytes: -1,
        ..snapshotting()
    };
    let mut cluster = Cluster::start_with(&[1, 2, 3], settings).await;
    let leader = cluster.leader().await;
    let offset = commit_many(&cluster, leader, "t", 30).await;
    let victim = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    for _ in 0..100 {
        if !cluster.checkpoints(victim).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cluster.nodes[&victim].log.start_offset(), 0);
    cluster.crash(victim).await;
    let names = cluster.checkpoints(victim);
    assert!(!names.is_empty(), "no snapshot was written");
    for name in names {
        let path = Path::new(DIR).join(name);
        cluster.disks[&victim].set_contents(&path, b"SPOOLSNP garbage".to_vec());
    }
    cluster.boot(victim).await;
    assert_eq!(cluster.topics_at(victim, offset).await.len(), 30);
}

use openraft::RaftLogReader;
use spool_log::Storage;
