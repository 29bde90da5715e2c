//! The controller driven step by step: each call's records are committed as one entry
//! (applied to the image, given the next offset) before the next call, as the quorum
//! runtime does.

use super::*;
use crate::BrokerMeta;
use proptest::prelude::*;
use spool_protocol::messages::alter_partition_request::{BrokerState, PartitionData, TopicData};
use spool_protocol::messages::broker_registration_request::Listener;
use spool_protocol::messages::elect_leaders_request::TopicPartitions;

const CLUSTER: &str = "spool-test-cluster";
const TIMEOUT: i64 = 9000;

struct Cluster {
    image: MetadataImage,
    controller: Controller,
    next_offset: i64,
    now_ms: i64,
}

impl Cluster {
    fn new() -> Cluster {
        let mut controller = Controller::new(ControllerConfig {
            cluster_id: CLUSTER.into(),
            session_timeout_ms: TIMEOUT,
            default_replication_factor: 3,
            ..ControllerConfig::default()
        });
        let image = MetadataImage::default();
        controller.activate(
            &image,
            At {
                now_ms: 0,
                next_offset: 0,
            },
        );
        Cluster {
            image,
            controller,
            next_offset: 0,
            now_ms: 0,
        }
    }

    fn at(&self) -> At {
        At {
            now_ms: self.now_ms,
            next_offset: self.next_offset,
        }
    }

    /// The offset of the last committed record: what a broker that has seen everything
    /// reports.
    fn last_offset(&self) -> i64 {
        self.next_offset - 1
    }

    fn commit<T>(&mut self, outcome: Outcome<T>) -> T {
        self.apply(outcome.records);
        outcome.reply
    }

    fn apply(&mut self, records: Vec<MetadataRecord>) {
        for record in &records {
            self.image.apply(record);
        }
        if !records.is_empty() {
            self.next_offset += 1;
        }
    }

    fn register_as(
        &mut self,
        id: i32,
        incarnation: u128,
        rack: Option<&str>,
    ) -> BrokerRegistrationResponse {
        let request = BrokerRegistrationRequest {
            broker_id: id,
            cluster_id: CLUSTER.into(),
            incarnation_id: Uuid::from_u128(incarnation),
            listeners: vec![Listener {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092 + id as u16,
                ..Default::default()
            }],
            rack: rack.map(str::to_string),
            ..Default::default()
        };
        let outcome = self
            .controller
            .register_broker(&self.image, &request, self.at());
        self.commit(outcome)
    }

    fn heartbeat_with(
        &mut self,
        id: i32,
        epoch: i64,
        reached: i64,
        want_fence: bool,
        want_shut_down: bool,
    ) -> BrokerHeartbeatResponse {
        let request = BrokerHeartbeatRequest {
            broker_id: id,
            broker_epoch: epoch,
            current_metadata_offset: reached,
            want_fence,
            want_shut_down,
            ..Default::default()
        };
        let outcome = self.controller.heartbeat(&self.image, &request, self.at());
        self.commit(outcome)
    }

    /// A heartbeat from a broker that has seen every committed record.
    fn heartbeat(&mut self, id: i32) -> BrokerHeartbeatResponse {
        let epoch = self.broker(id).epoch;
        self.heartbeat_with(id, epoch, self.last_offset(), false, false)
    }

    /// Registers and unfences a broker.
    fn join(&mut self, id: i32, rack: Option<&str>) -> i64 {
        let reply = self.register_as(id, id as u128 + 1000, rack);
        assert_eq!(reply.error_code, 0);
        let heartbeat = self.heartbeat(id);
        assert!(!heartbeat.is_fenced && heartbeat.is_caught_up);
        reply.broker_epoch
    }

    fn broker(&self, id: i32) -> BrokerMeta {
        self.image.broker(id).cloned().unwrap()
    }

    fn create(&mut self, name: &str, partitions: i32, factor: i16) -> Result<(), Refusal> {
        let configs = BTreeMap::new();
        let records = self.controller.create_topic(
            &self.image,
            &NewTopic {
                name,
                partitions,
                replication_factor: factor,
                assignments: &[],
                configs: &configs,
            },
        )?;
        self.apply(records);
        Ok(())
    }

    fn create_placed(&mut self, name: &str, assignments: &[Vec<i32>]) -> Result<(), Refusal> {
        let configs = BTreeMap::new();
        let records = self.controller.create_topic(
            &self.image,
            &NewTopic {
                name,
                partitions: -1,
                replication_factor: -1,
                assignments,
                configs: &configs,
            },
        )?;
        self.apply(records);
        Ok(())
    }

    fn partition(&self, topic: &str, index: i32) -> PartitionMeta {
        self.image.topic(topic).unwrap().partitions[index as usize].clone()
    }

    /// Heartbeats from every broker but `silent`, every second, for `ms`; then ticks
    /// until the controller has nothing more to do.
    fn run_for(&mut self, ms: i64, silent: &[i32]) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms = (self.now_ms + 1000).min(end);
            let ids: Vec<i32> = self.image.brokers().map(|b| b.id).collect();
            for id in ids {
                if !silent.contains(&id) {
                    self.heartbeat(id);
                }
            }
            self.tick_all();
        }
    }

    fn tick_all(&mut self) {
        loop {
            let records = self.controller.tick(&self.image, self.at());
            if records.is_empty() {
                break;
            }
            self.apply(records);
        }
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        index: i32,
        new_isr: &[i32],
    ) -> alter_partition_response::PartitionData {
        let p = self.partition(topic, index);
        let request = self.isr_request(topic, &p, p.leader, new_isr);
        let reply = self.alter(&request, 3);
        reply.topics[0].partitions[0].clone()
    }

    fn isr_request(
        &self,
        topic: &str,
        p: &PartitionMeta,
        requester: i32,
        new_isr: &[i32],
    ) -> AlterPartitionRequest {
        AlterPartitionRequest {
            broker_id: requester,
            broker_epoch: self.image.broker(requester).map_or(-1, |b| b.epoch),
            topics: vec![TopicData {
                topic_id: self.image.topic(topic).unwrap().id,
                topic_name: topic.into(),
                partitions: vec![PartitionData {
                    partition_index: p.index,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    new_isr_with_epochs: new_isr
                        .iter()
                        .map(|&b| BrokerState {
                            broker_id: b,
                            broker_epoch: self.image.broker(b).map_or(-1, |m| m.epoch),
                            ..Default::default()
                        })
                        .collect(),
                    new_isr: new_isr.to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn alter(&mut self, request: &AlterPartitionRequest, version: i16) -> AlterPartitionResponse {
        let outcome = self
            .controller
            .alter_partition(&self.image, request, version);
        let reply = self.commit(outcome);
        // The reply goes back over the wire at the request's version.
        let mut wire = bytes::BytesMut::new();
        spool_protocol::Message::encode(&reply, &mut wire, version)
            .expect("the reply fits its version");
        reply
    }

    fn elect(
        &mut self,
        election_type: i8,
        partitions: Option<Vec<(&str, Vec<i32>)>>,
    ) -> ElectLeadersResponse {
        let request = ElectLeadersRequest {
            election_type,
            topic_partitions: partitions.map(|list| {
                list.into_iter()
                    .map(|(topic, partitions)| TopicPartitions {
                        topic: topic.into(),
                        partitions,
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let outcome = self.controller.elect_leaders(&self.image, &request);
        self.commit(outcome)
    }

    /// Structural invariants that hold after every committed step.
    fn check(&self) {
        for topic in self.image.topics() {
            for p in &topic.partitions {
                let name = format!("{}-{}", topic.name, p.index);
                assert!(!p.isr.is_empty(), "{name}: empty ISR");
                assert!(
                    p.isr.iter().all(|b| p.replicas.contains(b)),
                    "{name}: ISR outside replicas {p:?}"
                );
                if p.leader != NO_LEADER {
                    assert!(
                        p.isr.contains(&p.leader),
                        "{name}: leader out of the ISR {p:?}"
                    );
                    assert!(
                        usable(&self.image, p.leader),
                        "{name}: leader {} not usable",
                        p.leader
                    );
                }
                if p.isr.len() > 1 {
                    for b in &p.isr {
                        assert!(
                            self.image.broker(*b).is_some_and(|m| !m.fenced),
                            "{name}: fenced broker {b} in a shared ISR {p:?}"
                        );
                    }
                }
            }
        }
    }
}

fn leaders(cluster: &Cluster, topic: &str) -> Vec<i32> {
    cluster
        .image
        .topic(topic)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.leader)
        .collect()
}

#[test]
fn a_broker_registers_fenced_and_is_unfenced_once_its_metadata_catches_up() {
    let mut c = Cluster::new();
    let registration_offset = c.next_offset;
    let reply = c.register_as(1, 7, Some("a"));
    assert_eq!(reply.error_code, 0);
    assert_eq!(reply.broker_epoch, 1);
    let broker = c.broker(1);
    assert!(broker.fenced);
    assert_eq!(broker.rack.as_deref(), Some("a"));
    assert_eq!(broker.endpoints[0].port, 9093);

    // Behind its own registration: stays fenced.
    let reply = c.heartbeat_with(1, 1, registration_offset - 1, false, false);
    assert_eq!(
        (reply.error_code, reply.is_caught_up, reply.is_fenced),
        (0, false, true)
    );
    assert!(c.broker(1).fenced);

    let reply = c.heartbeat_with(1, 1, registration_offset, false, false);
    assert_eq!(
        (reply.is_caught_up, reply.is_fenced, reply.should_shut_down),
        (true, false, false)
    );
    assert!(!c.broker(1).fenced);
}

#[test]
fn registration_and_heartbeats_are_refused_with_kafkas_errors() {
    let mut c = Cluster::new();
    let epoch = c.join(1, None);

    let mut foreign = BrokerRegistrationRequest {
        broker_id: 2,
        cluster_id: "another".into(),
        ..Default::default()
    };
    let outcome = c.controller.register_broker(&c.image, &foreign, c.at());
    assert!(outcome.records.is_empty());
    assert_eq!(
        outcome.reply.error_code,
        ErrorCode::InconsistentClusterId.code()
    );
    foreign.cluster_id = CLUSTER.into();
    foreign.broker_id = -3;
    let outcome = c.controller.register_broker(&c.image, &foreign, c.at());
    assert_eq!(outcome.reply.error_code, ErrorCode::InvalidRequest.code());

    // A second process with the same ID while the first still heartbeats.
    c.now_ms += TIMEOUT;
    let reply = c.register_as(1, 99, None);
    assert_eq!(
        reply.error_code,
        ErrorCode::DuplicateBrokerRegistration.code()
    );
    assert_eq!(c.broker(1).epoch, epoch);

    // Heartbeats from an unknown broker, and from an old epoch.
    let reply = c.heartbeat_with(5, 1, 0, false, false);
    assert_eq!(reply.error_code, ErrorCode::BrokerIdNotRegistered.code());
    let reply = c.heartbeat_with(1, epoch + 1, 0, false, false);
    assert_eq!(reply.error_code, ErrorCode::StaleBrokerEpoch.code());

    // Once the first's session has lapsed, the newcomer takes the ID with a higher epoch,
    // and the old incarnation's heartbeats are stale.
    c.now_ms += 1;
    let reply = c.register_as(1, 99, None);
    assert_eq!(reply.error_code, 0);
    assert!(reply.broker_epoch > epoch);
    assert!(c.broker(1).fenced, "a new incarnation starts fenced");
    let reply = c.heartbeat_with(1, epoch, c.last_offset(), false, false);
    assert_eq!(reply.error_code, ErrorCode::StaleBrokerEpoch.code());
}

#[test]
fn a_broker_that_stops_heartbeating_is_fenced_and_its_partitions_elect_from_the_isr() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create("orders", 6, 3).unwrap();
    c.check();
    assert_eq!(leaders(&c, "orders"), vec![1, 2, 3, 1, 2, 3]);
    let before = c.partition("orders", 0);
    assert_eq!(before.isr.len(), 3);

    // Broker 1 goes silent; nothing happens until its session lapses.
    c.run_for(TIMEOUT, &[1]);
    assert!(!c.broker(1).fenced);
    assert_eq!(c.controller.next_deadline(&c.image), Some(TIMEOUT + 1));
    c.run_for(1000, &[1]);
    assert!(c.broker(1).fenced);
    c.check();
    for p in &c.image.topic("orders").unwrap().partitions {
        assert!(!p.isr.contains(&1), "{p:?}");
        assert_ne!(p.leader, 1);
    }
    let after = c.partition("orders", 0);
    assert_eq!(
        after.leader, before.replicas[1],
        "the next in-sync replica leads"
    );
    assert_eq!(after.leader_epoch, before.leader_epoch + 1);
    assert!(after.partition_epoch > before.partition_epoch);
    // A partition it only followed keeps its leader and epoch.
    let followed = c.partition("orders", 1);
    assert_eq!((followed.leader, followed.leader_epoch), (2, 0));

    // It comes back: unfenced once caught up, but leadership stays where it is until a
    // preferred election; it rejoins ISRs only through its leaders.
    let reply = c.heartbeat(1);
    assert!(!reply.is_fenced);
    assert_eq!(c.partition("orders", 0).leader, after.leader);
    c.check();
}

#[test]
fn the_last_in_sync_replica_stays_in_the_isr_and_no_out_of_sync_replica_is_elected() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create_placed("ledger", &[vec![1, 2, 3]]).unwrap();
    // Followers 2 and 3 fell behind: the leader shrinks the ISR to itself.
    let reply = c.alter_isr("ledger", 0, &[1]);
    assert_eq!(reply.error_code, 0);
    assert_eq!(reply.isr, vec![1]);
    assert_eq!(reply.partition_epoch, 1);

    c.run_for(TIMEOUT + 1000, &[1]);
    let p = c.partition("ledger", 0);
    assert_eq!(
        (p.leader, p.isr.clone()),
        (NO_LEADER, vec![1]),
        "offline, not unclean"
    );
    assert_eq!(p.leader_epoch, 1);
    c.check();

    // A preferred election cannot help; the returning broker gets its partition back.
    let reply = c.elect(PREFERRED_ELECTION, Some(vec![("ledger", vec![0])]));
    assert_eq!(
        reply.replica_election_results[0].partition_result[0].error_code,
        ErrorCode::PreferredLeaderNotAvailable.code()
    );
    let reply = c.heartbeat(1);
    assert!(!reply.is_fenced);
    let p = c.partition("ledger", 0);
    assert_eq!((p.leader, p.leader_epoch), (1, 2));
    c.check();
}

#[test]
fn an_unclean_election_is_only_done_when_asked_for() {
    let mut c = Cluster::new();
    for id in 1..=2 {
        c.join(id, None);
    }
    c.create_placed("ledger", &[vec![1, 2]]).unwrap();
    c.alter_isr("ledger", 0, &[1]);
    c.run_for(TIMEOUT + 1000, &[1]);
    assert_eq!(c.partition("ledger", 0).leader, NO_LEADER);

    let reply = c.elect(
        UNCLEAN_ELECTION,
        Some(vec![("ledger", vec![0]), ("nope", vec![0])]),
    );
    let results = &reply.replica_election_results;
    assert_eq!(results[0].partition_result[0].error_code, 0);
    assert_eq!(
        results[1].partition_result[0].error_code,
        ErrorCode::UnknownTopicOrPartition.code()
    );
    let p = c.partition("ledger", 0);
    assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    let reply = c.elect(UNCLEAN_ELECTION, Some(vec![("ledger", vec![0])]));
    assert_eq!(
        reply.replica_election_results[0].partition_result[0].error_code,
        ErrorCode::ElectionNotNeeded.code()
    );
    let reply = c.elect(5, None);
    assert_eq!(reply.error_code, ErrorCode::InvalidRequest.code());
    c.check();
}

#[test]
fn every_partition_gets_as_many_distinct_replicas_as_asked() {
    for brokers in 1..=6 {
        let mut c = Cluster::new();
        for id in 1..=brokers {
            c.join(id, None);
        }
        for factor in 1..=brokers as i16 {
            let name = format!("t{factor}");
            c.create(&name, 50, factor).unwrap();
            for p in &c.image.topic(&name).unwrap().partitions {
                let distinct: BTreeSet<i32> = p.replicas.iter().copied().collect();
                assert_eq!(
                    p.replicas.len(),
                    factor as usize,
                    "{brokers} brokers: {p:?}"
                );
                assert_eq!(distinct.len(), factor as usize, "{brokers} brokers: {p:?}");
            }
        }
    }
}

#[test]
fn replicas_are_placed_across_racks_with_leaders_spread_evenly() {
    let mut c = Cluster::new();
    for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
        c.join(id, Some(rack));
    }
    c.create("clicks", 12, 3).unwrap();
    let topic = c.image.topic("clicks").unwrap();
    let mut led = BTreeMap::new();
    for p in &topic.partitions {
        let racks: BTreeSet<_> = p
            .replicas
            .iter()
            .map(|&b| c.broker(b).rack.unwrap())
            .collect();
        assert_eq!(racks.len(), 3, "{p:?} should span every rack");
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, p.replicas[0]);
        *led.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(
        led.values().copied().collect::<Vec<_>>(),
        vec![2; 6],
        "{led:?}"
    );

    // A fenced broker gets no new replicas; a factor above the usable brokers is refused.
    c.run_for(TIMEOUT + 1000, &[6]);
    let (error, message) = c.create("wide", 1, 6).unwrap_err();
    assert_eq!(error, ErrorCode::InvalidReplicationFactor);
    assert!(message.contains("only 5 broker(s)"), "{message}");
    assert_eq!(
        c.create("zero", 1, 0).unwrap_err().0,
        ErrorCode::InvalidReplicationFactor
    );
    c.create("five", 10, 5).unwrap();
    assert!(
        c.image
            .topic("five")
            .unwrap()
            .partitions
            .iter()
            .all(|p| !p.replicas.contains(&6))
    );
    // -1 takes default.replication.factor.
    c.create("default", 1, -1).unwrap();
    assert_eq!(c.partition("default", 0).replicas.len(), 3);
    assert_eq!(
        c.create("default", 1, 1).unwrap_err().0,
        ErrorCode::TopicAlreadyExists
    );
    assert_eq!(
        c.create("none", 0, 1).unwrap_err().0,
        ErrorCode::InvalidPartitions
    );
    c.check();
}

#[test]
fn manual_assignments_are_checked() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.register_as(4, 4, None); // registered, still fenced
    for (assignments, fragment) in [
        (vec![vec![]], "no replicas"),
        (vec![vec![1, 2], vec![3]], "same number"),
        (vec![vec![1, 1]], "duplicate"),
        (vec![vec![1, 9]], "broker 9"),
        (vec![vec![4]], "fenced"),
    ] {
        let (error, message) = c.create_placed("t", &assignments).unwrap_err();
        assert_eq!(error, ErrorCode::InvalidReplicaAssignment);
        assert!(message.contains(fragment), "{message}");
    }
    // A fenced replica may be assigned, but is not in sync and does not lead.
    c.create_placed("t", &[vec![4, 2], vec![3, 1]]).unwrap();
    let p = c.partition("t", 0);
    assert_eq!(
        (p.leader, p.isr.clone(), p.replicas.clone()),
        (2, vec![2], vec![4, 2])
    );
    assert_eq!(c.partition("t", 1).leader, 3);
    c.check();
}

#[test]
fn alter_partition_changes_the_isr_only_for_the_current_leader_and_eligible_replicas() {
    let mut c = Cluster::new();
    for id in 1..=4 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2, 3]]).unwrap();
    let p = c.partition("orders", 0);
    let error_of = |c: &mut Cluster, request: AlterPartitionRequest| {
        let reply = c.alter(&request, 3);
        (
            reply.error_code,
            reply.topics.first().map(|t| t.partitions[0].error_code),
        )
    };

    let mut request = c.isr_request("orders", &p, 1, &[1, 2]);
    request.topics[0].partitions[0].leader_epoch += 1;
    assert_eq!(
        error_of(&mut c, request).1,
        Some(ErrorCode::FencedLeaderEpoch.code())
    );
    let request = c.isr_request("orders", &p, 2, &[1, 2]);
    assert_eq!(
        error_of(&mut c, request).1,
        Some(ErrorCode::InvalidRequest.code())
    );
    let mut request = c.isr_request("orders", &p, 1, &[1, 2]);
    request.topics[0].partitions[0].partition_epoch -= 1;
    assert_eq!(
        error_of(&mut c, request).1,
        Some(ErrorCode::InvalidUpdateVersion.code())
    );
    let request = c.isr_request("orders", &p, 1, &[2, 3]);
    assert_eq!(
        error_of(&mut c, request).1,
        Some(ErrorCode::InvalidRequest.code()),
        "leader left out"
    );
    let mut request = c.isr_request("orders", &p, 1, &[1, 2]);
    request.broker_epoch -= 1;
    assert_eq!(
        error_of(&mut c, request).0,
        ErrorCode::StaleBrokerEpoch.code()
    );
    let mut request = c.isr_request("orders", &p, 1, &[1, 2]);
    request.topics[0].topic_id = Uuid::from_u128(404);
    assert_eq!(
        error_of(&mut c, request).1,
        Some(ErrorCode::UnknownTopicId.code())
    );
    assert_eq!(c.partition("orders", 0), p, "nothing changed");

    // Shrink, then grow back.
    let reply = c.alter_isr("orders", 0, &[1]);
    assert_eq!(
        (reply.error_code, reply.isr.clone(), reply.leader_id),
        (0, vec![1], 1)
    );
    assert_eq!(c.partition("orders", 0).isr, vec![1]);
    // Broker 4 is no replica; a stale incarnation of 2 may not rejoin.
    assert_eq!(
        c.alter_isr("orders", 0, &[1, 4]).error_code,
        ErrorCode::IneligibleReplica.code()
    );
    let q = c.partition("orders", 0);
    let mut request = c.isr_request("orders", &q, 1, &[1, 2]);
    request.topics[0].partitions[0].new_isr_with_epochs[1].broker_epoch -= 1;
    assert_eq!(
        error_of(&mut c, request).1,
        Some(ErrorCode::IneligibleReplica.code())
    );
    // Nor may a fenced one.
    c.run_for(TIMEOUT + 1000, &[3]);
    assert_eq!(
        c.alter_isr("orders", 0, &[1, 3]).error_code,
        ErrorCode::IneligibleReplica.code()
    );
    let reply = c.alter_isr("orders", 0, &[1, 2]);
    assert_eq!((reply.error_code, reply.isr.clone()), (0, vec![1, 2]));
    // Version 0-2 requests carry plain broker IDs and the topic name up to version 1.
    let q = c.partition("orders", 0);
    let mut request = c.isr_request("orders", &q, 1, &[1]);
    request.topics[0].topic_id = Uuid::ZERO;
    let reply = c.alter(&request, 1);
    assert_eq!(reply.topics[0].partitions[0].error_code, 0);
    assert_eq!(c.partition("orders", 0).isr, vec![1]);
    c.check();
}

#[test]
fn controlled_shutdown_moves_leadership_before_the_broker_may_stop() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create("orders", 3, 3).unwrap();
    c.create_placed("solo", &[vec![1]]).unwrap();
    let epoch = c.broker(1).epoch;
    let seen = c.last_offset();
    let reply = c.heartbeat_with(1, epoch, seen, false, true);
    assert!(!reply.should_shut_down && !reply.is_fenced);
    assert!(c.broker(1).in_controlled_shutdown);
    let p = c.partition("orders", 0);
    assert_eq!((p.leader, p.isr.clone()), (2, vec![2, 3]));
    let solo = c.partition("solo", 0);
    assert_eq!((solo.leader, solo.isr.clone()), (NO_LEADER, vec![1]));
    c.check();

    // It has not seen the records that moved its leadership yet.
    let reply = c.heartbeat_with(1, epoch, seen, false, true);
    assert!(!reply.should_shut_down);
    // A shutting-down broker is not given new replicas or leadership.
    c.create("later", 2, 2).unwrap();
    assert!(
        c.image
            .topic("later")
            .unwrap()
            .partitions
            .iter()
            .all(|p| !p.replicas.contains(&1))
    );
    let reply = c.heartbeat_with(1, epoch, c.last_offset(), false, true);
    assert!(reply.should_shut_down && reply.is_fenced);
    assert!(c.broker(1).fenced);

    // Its next incarnation may register straight away.
    let reply = c.register_as(1, 555, None);
    assert_eq!(reply.error_code, 0);
    assert!(!c.broker(1).in_controlled_shutdown);
    let reply = c.heartbeat(1);
    assert!(!reply.is_fenced);
    let solo = c.partition("solo", 0);
    assert_eq!(solo.leader, 1, "its sole partition is back");
    c.check();
}

#[test]
fn a_broker_asking_to_be_fenced_gives_up_its_partitions() {
    let mut c = Cluster::new();
    for id in 1..=2 {
        c.join(id, None);
    }
    c.create("orders", 2, 2).unwrap();
    let epoch = c.broker(1).epoch;
    let reply = c.heartbeat_with(1, epoch, c.last_offset(), true, false);
    assert!(reply.is_fenced);
    assert!(c.broker(1).fenced);
    assert_eq!(leaders(&c, "orders"), vec![2, 2]);
    c.check();
}

#[test]
fn preferred_elections_and_the_rebalance_give_leadership_back() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create("orders", 3, 3).unwrap();
    c.run_for(TIMEOUT + 1000, &[1]);
    assert_eq!(leaders(&c, "orders"), vec![2, 2, 3]);
    c.heartbeat(1);
    // Back in the ISR through its leader.
    c.alter_isr("orders", 0, &[2, 3, 1]);
    c.alter_isr("orders", 1, &[2, 3, 1]);
    c.alter_isr("orders", 2, &[3, 1, 2]);

    let reply = c.elect(PREFERRED_ELECTION, Some(vec![("orders", vec![0, 1, 0])]));
    let results = &reply.replica_election_results[0].partition_result;
    assert_eq!(results.len(), 2, "duplicates are answered once");
    assert_eq!(results[0].error_code, 0);
    assert_eq!(results[1].error_code, ErrorCode::ElectionNotNeeded.code());
    assert_eq!(leaders(&c, "orders"), vec![1, 2, 3]);

    // All partitions: only those that needed an election are listed.
    let reply = c.elect(PREFERRED_ELECTION, None);
    assert!(reply.replica_election_results.is_empty(), "{reply:?}");

    c.run_for(TIMEOUT + 1000, &[3]);
    c.heartbeat(3);
    c.alter_isr("orders", 2, &[1, 2, 3]);
    assert_eq!(leaders(&c, "orders"), vec![1, 2, 1]);
    let records = c.controller.rebalance_leaders(&c.image);
    c.apply(records);
    assert_eq!(leaders(&c, "orders"), vec![1, 2, 3]);
    assert!(c.controller.rebalance_leaders(&c.image).is_empty());
    c.check();
}

#[test]
fn a_new_active_controller_gives_every_broker_a_full_session() {
    let mut c = Cluster::new();
    for id in 1..=2 {
        c.join(id, None);
    }
    c.create("orders", 2, 2).unwrap();
    c.now_ms = 5000;
    let mut successor = Controller::new(c.controller.config().clone());
    successor.activate(&c.image, c.at());
    c.controller = successor;
    c.run_for(TIMEOUT, &[1]);
    assert!(
        !c.broker(1).fenced,
        "the session counts from the activation"
    );
    c.run_for(1000, &[1]);
    assert!(c.broker(1).fenced);
    // A broker must catch up with what the successor found before it is unfenced.
    let epoch = c.broker(1).epoch;
    let reply = c.heartbeat_with(1, epoch, 0, false, false);
    assert!(reply.is_fenced && !reply.is_caught_up);
    c.check();
}

#[test]
fn a_past_incarnation_of_this_nodes_broker_gets_no_session_from_a_new_controller() {
    let mut c = Cluster::new();
    c.join(1, None);
    c.join(2, None);
    c.create("orders", 2, 2).unwrap();
    // Node 1 restarts (its broker has a new incarnation) and its controller activates.
    let mut restarted = Controller::new(ControllerConfig {
        local_broker: Some((1, Uuid::from_u128(7))),
        ..c.controller.config().clone()
    });
    restarted.activate(&c.image, c.at());
    c.controller = restarted;
    c.tick_all();
    assert!(c.broker(1).fenced, "the past incarnation is fenced at once");
    assert!(!c.broker(2).fenced, "other brokers keep a full session");
    assert!(leaders(&c, "orders").iter().all(|&l| l == 2));
    let reply = c.register_as(1, 7, None);
    assert_eq!(
        reply.error_code, 0,
        "the running incarnation registers at once"
    );
    c.check();
}

#[test]
fn topics_are_deleted_grown_and_reconfigured_with_kafkas_errors() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create("orders", 2, 2).unwrap();
    let refused = c.controller.delete_topic(&c.image, "nope").unwrap_err();
    assert_eq!(refused.0, ErrorCode::UnknownTopicOrPartition);

    let grow = |c: &Cluster, count, assignments: &[Vec<i32>]| {
        c.controller
            .create_partitions(&c.image, "orders", count, assignments)
    };
    assert_eq!(
        grow(&c, 2, &[]).unwrap_err().0,
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        grow(&c, 4, &[vec![1, 2]]).unwrap_err().0,
        ErrorCode::InvalidReplicaAssignment,
        "one assignment for two new partitions"
    );
    assert_eq!(
        grow(&c, 3, &[vec![1]]).unwrap_err().0,
        ErrorCode::InvalidReplicaAssignment,
        "fewer replicas than the topic's"
    );
    assert_eq!(
        grow(&c, 3, &[vec![1, 9]]).unwrap_err().0,
        ErrorCode::InvalidReplicaAssignment,
        "an unknown broker"
    );
    let records = grow(&c, 4, &[]).unwrap();
    c.apply(records);
    let records = grow(&c, 5, &[vec![3, 1]]).unwrap();
    c.apply(records);
    let orders = c.image.topic("orders").unwrap();
    assert_eq!(orders.partitions.len(), 5);
    assert!(orders.partitions.iter().all(|p| p.replicas.len() == 2));
    assert_eq!(c.partition("orders", 4).replicas, vec![3, 1]);
    assert_eq!(c.partition("orders", 4).leader, 3);

    let set = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let records = c
        .controller
        .alter_configs(
            &c.image,
            crate::TOPIC_RESOURCE_TYPE,
            "orders",
            &set(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]),
        )
        .unwrap();
    assert_eq!(records.len(), 2);
    c.apply(records);
    let records = c
        .controller
        .alter_configs(
            &c.image,
            crate::TOPIC_RESOURCE_TYPE,
            "orders",
            &set(&[("retention.ms", "1000")]),
        )
        .unwrap();
    assert_eq!(records.len(), 1, "only the removal of cleanup.policy");
    c.apply(records);
    assert_eq!(
        c.image.topic("orders").unwrap().configs,
        set(&[("retention.ms", "1000")])
    );

    let records = c.controller.delete_topic(&c.image, "orders").unwrap();
    c.apply(records);
    assert!(c.image.topic("orders").is_none());
    c.check();
}

#[test]
fn producer_id_blocks_follow_each_other_for_registered_brokers_only() {
    let mut c = Cluster::new();
    let epoch = c.join(1, None);
    let first = c
        .commit(c.controller.allocate_producer_ids(&c.image, 1, epoch))
        .unwrap();
    let second = c
        .commit(c.controller.allocate_producer_ids(&c.image, 1, epoch))
        .unwrap();
    assert_eq!(first, 0..PRODUCER_ID_BLOCK);
    assert_eq!(second, PRODUCER_ID_BLOCK..2 * PRODUCER_ID_BLOCK);
    let stale = c.controller.allocate_producer_ids(&c.image, 1, epoch - 1);
    assert_eq!(stale.reply, Err(ErrorCode::StaleBrokerEpoch));
    let unknown = c.controller.allocate_producer_ids(&c.image, 5, 0);
    assert_eq!(unknown.reply, Err(ErrorCode::BrokerIdNotRegistered));
}

#[test]
fn unregistering_forgets_the_broker_after_moving_its_partitions() {
    let mut c = Cluster::new();
    for id in 1..=2 {
        c.join(id, None);
    }
    c.create("orders", 2, 2).unwrap();
    let outcome = c.controller.unregister_broker(&c.image, 9);
    assert_eq!(
        outcome.reply.error_code,
        ErrorCode::BrokerIdNotRegistered.code()
    );
    let reply = {
        let outcome = c.controller.unregister_broker(&c.image, 1);
        c.commit(outcome)
    };
    assert_eq!(reply.error_code, 0);
    assert!(c.image.broker(1).is_none());
    assert_eq!(leaders(&c, "orders"), vec![2, 2]);
    // A broker with that ID registers afresh at once.
    assert_eq!(c.register_as(1, 77, None).error_code, 0);
    c.check();
}

/// One step of the random walk in the property test.
#[derive(Debug, Clone)]
enum Step {
    /// Time passes: the brokers not listed as silent heartbeat.
    Run {
        ms: i64,
        silent: Vec<i32>,
    },
    /// A broker restarts as a new incarnation.
    Restart(i32),
    Shutdown(i32),
    Shrink {
        partition: i32,
        drop: i32,
    },
    Grow {
        partition: i32,
        add: i32,
    },
    Preferred,
    Rebalance,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (prop::sample::select(vec![1000i64, 5000, 10_000]), prop::collection::vec(1..=4i32, 0..2))
            .prop_map(|(ms, silent)| Step::Run { ms, silent }),
        1 => (1..=4i32).prop_map(Step::Restart),
        1 => (1..=4i32).prop_map(Step::Shutdown),
        2 => (0..4i32, 1..=4i32).prop_map(|(partition, drop)| Step::Shrink { partition, drop }),
        2 => (0..4i32, 1..=4i32).prop_map(|(partition, add)| Step::Grow { partition, add }),
        1 => Just(Step::Preferred),
        1 => Just(Step::Rebalance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the brokers do, every committed state keeps the partition invariants, and
    /// leader and partition epochs never go back.
    #[test]
    fn random_broker_lives_keep_the_partition_invariants(steps in prop::collection::vec(step(), 1..40)) {
        let mut c = Cluster::new();
        for id in 1..=4 {
            c.join(id, None);
        }
        c.create("t", 4, 3).unwrap();
        let mut incarnation = 10_000u128;
        let mut epochs: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Run { ms, silent } => c.run_for(ms, &silent),
                Step::Restart(id) => {
                    incarnation += 1;
                    c.now_ms += TIMEOUT + 1;
                    c.tick_all();
                    if c.register_as(id, incarnation, None).error_code == 0 {
                        c.heartbeat(id);
                    }
                }
                Step::Shutdown(id) => {
                    let epoch = c.broker(id).epoch;
                    let seen = c.last_offset();
                    c.heartbeat_with(id, epoch, seen, false, true);
                    let reply = c.heartbeat_with(id, epoch, c.last_offset(), false, true);
                    if reply.should_shut_down {
                        incarnation += 1;
                        c.register_as(id, incarnation, None);
                        c.heartbeat(id);
                    }
                }
                Step::Shrink { partition, drop } => {
                    let p = c.partition("t", partition);
                    let isr: Vec<i32> = p.isr.iter().copied().filter(|&b| b != drop).collect();
                    if p.leader != NO_LEADER && !isr.is_empty() {
                        c.alter_isr("t", partition, &isr);
                    }
                }
                Step::Grow { partition, add } => {
                    let p = c.partition("t", partition);
                    let mut isr = p.isr.clone();
                    if p.leader != NO_LEADER && !isr.contains(&add) {
                        isr.push(add);
                        let reply = c.alter_isr("t", partition, &isr);
                        let eligible = p.replicas.contains(&add) && usable(&c.image, add);
                        prop_assert_eq!(reply.error_code == 0, eligible, "{:?} + {}", p, add);
                    }
                }
                Step::Preferred => {
                    c.elect(PREFERRED_ELECTION, None);
                }
                Step::Rebalance => {
                    let records = c.controller.rebalance_leaders(&c.image);
                    c.apply(records);
                }
            }
            c.check();
            for p in &c.image.topic("t").unwrap().partitions {
                let last = epochs.insert(p.index, (p.leader_epoch, p.partition_epoch));
                if let Some((leader_epoch, partition_epoch)) = last {
                    prop_assert!(p.leader_epoch >= leader_epoch && p.partition_epoch >= partition_epoch);
                }
            }
        }
    }
}

fn reassign(
    c: &mut Cluster,
    topic: &str,
    index: i32,
    replicas: Option<&[i32]>,
    allow_rf_change: bool,
) -> (ErrorCode, Option<String>) {
    use spool_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    let request = AlterPartitionReassignmentsRequest {
        allow_replication_factor_change: allow_rf_change,
        topics: vec![ReassignableTopic {
            name: topic.into(),
            partitions: vec![ReassignablePartition {
                partition_index: index,
                replicas: replicas.map(<[i32]>::to_vec),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let outcome = c
        .controller
        .alter_partition_reassignments(&c.image, &request);
    let reply = c.commit(outcome);
    let p = &reply.responses[0].partitions[0];
    (ErrorCode::from_wire(p.error_code), p.error_message.clone())
}

/// Moving {1,2,3} to {2,3,4}: broker 4 is added and 1 marked for removal; leadership
/// (on 1) moves to 2 once 4 has joined the ISR, and the reassignment completes then.
#[test]
fn a_reassignment_adds_the_new_replicas_then_drops_the_old_once_they_are_in_sync() {
    let mut c = Cluster::new();
    for id in 1..=4 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2, 3]]).unwrap();
    assert_eq!(
        reassign(&mut c, "orders", 0, Some(&[2, 3, 4]), true).0,
        ErrorCode::None
    );
    let p = c.partition("orders", 0);
    assert_eq!(p.replicas, vec![2, 3, 4, 1]);
    assert_eq!(p.adding_replicas, vec![4]);
    assert_eq!(p.removing_replicas, vec![1]);
    assert_eq!((p.leader, p.leader_epoch), (1, 0));
    assert_eq!(p.isr, vec![1, 2, 3]);
    assert_eq!(p.target_replicas(), vec![2, 3, 4]);
    assert_eq!(p.original_replicas(), vec![2, 3, 1]);

    // Broker 4 catches up: the leader adds it to the ISR, which completes the move.
    let reply = c.alter_isr("orders", 0, &[1, 2, 3, 4]);
    assert_eq!(reply.error_code, 0);
    let p = c.partition("orders", 0);
    assert_eq!(p.replicas, vec![2, 3, 4]);
    assert_eq!(p.isr, vec![2, 3, 4]);
    assert!(!p.is_reassigning());
    assert_eq!((p.leader, p.leader_epoch), (2, 1));
    assert_eq!(
        (reply.leader_id, reply.leader_epoch, reply.isr.clone()),
        (2, 1, vec![2, 3, 4]),
        "the old leader learns it no longer leads"
    );
    assert_eq!(reply.partition_epoch, p.partition_epoch);
}

#[test]
fn a_reassignment_can_be_cancelled_replaced_and_listed_back() {
    let mut c = Cluster::new();
    for id in 1..=5 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2, 3]]).unwrap();
    assert_eq!(
        reassign(&mut c, "orders", 0, None, true).0,
        ErrorCode::NoReassignmentInProgress
    );
    reassign(&mut c, "orders", 0, Some(&[1, 2, 4]), true);
    // Replaced before 4 caught up: now from {1,2,3} to {1,2,5}, and 4 is dropped.
    let p = c.partition("orders", 0);
    assert_eq!(p.adding_replicas, vec![4]);
    assert_eq!(
        reassign(&mut c, "orders", 0, Some(&[1, 2, 5]), true).0,
        ErrorCode::None
    );
    let p = c.partition("orders", 0);
    assert_eq!(p.replicas, vec![1, 2, 5, 3]);
    assert_eq!(p.adding_replicas, vec![5]);
    assert_eq!(p.removing_replicas, vec![3]);
    // Cancelled: back to where it began.
    assert_eq!(reassign(&mut c, "orders", 0, None, true).0, ErrorCode::None);
    let p = c.partition("orders", 0);
    assert_eq!(p.replicas, vec![1, 2, 3]);
    assert!(!p.is_reassigning());
    assert_eq!(p.isr, vec![1, 2, 3]);
    assert_eq!(p.leader, 1);
}

#[test]
fn a_reassignment_that_only_removes_or_reorders_completes_at_once() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2, 3]]).unwrap();
    reassign(&mut c, "orders", 0, Some(&[3, 2]), true);
    let p = c.partition("orders", 0);
    assert_eq!(p.replicas, vec![3, 2]);
    assert_eq!(p.isr, vec![2, 3]);
    assert!(!p.is_reassigning());
    assert_eq!(
        p.leader, 3,
        "the leader was removed: the first target replica leads"
    );
    // Unchanged: nothing to do, no record.
    let before = c.next_offset;
    assert_eq!(
        reassign(&mut c, "orders", 0, Some(&[3, 2]), true).0,
        ErrorCode::None
    );
    assert_eq!(c.next_offset, before);
}

/// Dropping a replica bumps the leader epoch even when the leader stays, so that the
/// dropped replica's fetches are fenced; adding one does not.
#[test]
fn a_reassignment_that_drops_a_replica_bumps_the_leader_epoch() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2, 3]]).unwrap();
    reassign(&mut c, "orders", 0, Some(&[1, 2]), true);
    let p = c.partition("orders", 0);
    assert_eq!(
        (p.replicas.clone(), p.leader, p.leader_epoch),
        (vec![1, 2], 1, 1)
    );
    reassign(&mut c, "orders", 0, Some(&[1, 2, 3]), true);
    let p = c.partition("orders", 0);
    assert_eq!(p.adding_replicas, vec![3]);
    assert_eq!((p.leader, p.leader_epoch), (1, 1), "adding keeps the epoch");
    // Cancelled: 3 is dropped again.
    reassign(&mut c, "orders", 0, None, true);
    let p = c.partition("orders", 0);
    assert_eq!(
        (p.replicas.clone(), p.leader, p.leader_epoch),
        (vec![1, 2], 1, 2)
    );
}

#[test]
fn a_reassignment_names_distinct_registered_brokers_and_keeps_the_factor_when_asked() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2]]).unwrap();
    let refused = |c: &mut Cluster, replicas: &[i32], allow: bool| {
        reassign(c, "orders", 0, Some(replicas), allow).0
    };
    assert_eq!(
        refused(&mut c, &[], true),
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        refused(&mut c, &[1, 1], true),
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        refused(&mut c, &[1, 9], true),
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        refused(&mut c, &[1, 2, 3], false),
        ErrorCode::InvalidReplicationFactor
    );
    assert_eq!(
        reassign(&mut c, "nope", 0, Some(&[1]), true).0,
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(c.partition("orders", 0).replicas, vec![1, 2]);
    assert_eq!(refused(&mut c, &[2, 3], false), ErrorCode::None);
}

/// Cancelling (or replacing) would leave replicas none of which is in sync: only broker
/// 3, being added, caught up before 1 and 2 were fenced. Refused, and nothing changes;
/// completing the move is still possible.
#[test]
fn a_reassignment_that_would_leave_no_in_sync_replica_is_refused() {
    let mut c = Cluster::new();
    for id in 1..=4 {
        c.join(id, None);
    }
    c.create_placed("orders", &[vec![1, 2]]).unwrap();
    reassign(&mut c, "orders", 0, Some(&[3, 4]), true);
    assert_eq!(c.alter_isr("orders", 0, &[1, 2, 3]).error_code, 0);
    c.run_for(TIMEOUT + 2000, &[1, 2]);
    let before = c.partition("orders", 0);
    assert_eq!((before.isr.clone(), before.leader), (vec![3], 3));
    assert_eq!(
        reassign(&mut c, "orders", 0, None, true).0,
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        reassign(&mut c, "orders", 0, Some(&[1, 2, 4]), true).0,
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(c.partition("orders", 0), before);
    assert_eq!(
        reassign(&mut c, "orders", 0, Some(&[3]), true).0,
        ErrorCode::None
    );
    assert_eq!(c.partition("orders", 0).replicas, vec![3]);
}

#[test]
fn an_unclean_election_that_puts_every_target_in_sync_completes_the_reassignment() {
    let mut c = Cluster::new();
    for id in 1..=2 {
        c.join(id, None);
    }
    c.create_placed("ledger", &[vec![1]]).unwrap();
    reassign(&mut c, "ledger", 0, Some(&[2]), true);
    c.run_for(TIMEOUT + 1000, &[1]);
    let p = c.partition("ledger", 0);
    assert_eq!((p.leader, p.isr.clone()), (NO_LEADER, vec![1]));
    assert!(p.is_reassigning());

    let reply = c.elect(UNCLEAN_ELECTION, Some(vec![("ledger", vec![0])]));
    assert_eq!(
        reply.replica_election_results[0].partition_result[0].error_code,
        0
    );
    let p = c.partition("ledger", 0);
    assert_eq!(
        (p.leader, p.isr.clone(), p.replicas.clone()),
        (2, vec![2], vec![2])
    );
    assert!(!p.is_reassigning(), "{p:?}");
    c.check();
}
