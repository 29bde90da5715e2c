//! The active controller (KRaft's quorum controller role): a single-threaded state machine
//! over the metadata image.
//!
//! Every call reads the image as committed so far and returns the records that carry out its
//! decision, with the reply for the requester. The caller appends the records to the metadata
//! log and applies them to the image once they are committed, *before* it makes the next
//! call, so no decision is ever taken twice on the same state. Calls that may touch many
//! partitions for one broker (fencing, unregistering) handle one broker per call for the
//! same reason.
//!
//! Besides the image, the controller keeps only the brokers' sessions (when each last
//! heartbeated, which metadata offset it must reach); they are not in the log, and a
//! controller that becomes active gives every registered broker a fresh session.
//!
//! Nothing here reads a clock or does I/O: the time and the offset the records will be
//! committed at come in as [`At`], so tests and the simulator drive it step by step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use spool_protocol::ErrorCode;
use spool_protocol::Uuid;
use spool_protocol::internal::register_broker_record::BrokerEndpoint;
use spool_protocol::internal::{
    AccessControlEntryRecord, BrokerRegistrationChangeRecord, ClientQuotaRecord, ConfigRecord,
    PartitionChangeRecord, ProducerIdsRecord, RegisterBrokerRecord, RemoveAccessControlEntryRecord,
    RemoveTopicRecord, RemoveUserScramCredentialRecord, UnregisterBrokerRecord,
    UserScramCredentialRecord,
};
use spool_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use spool_protocol::messages::alter_partition_response;
use spool_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, AlterPartitionRequest,
    AlterPartitionResponse, BrokerHeartbeatRequest, BrokerHeartbeatResponse,
    BrokerRegistrationRequest, BrokerRegistrationResponse, ElectLeadersRequest,
    ElectLeadersResponse, UnregisterBrokerResponse,
};

use crate::reassignment;
use crate::{
    BrokerMeta, MetadataImage, MetadataRecord, NO_LEADER, NO_LEADER_CHANGE, PartitionMeta,
    TopicMeta, create_topic_records,
};

/// A request refused: the error code and the message for the requester.
pub type Refusal = (ErrorCode, String);

/// `ElectLeaders.election_type`: move leadership to the first replica.
pub const PREFERRED_ELECTION: i8 = 0;
/// `ElectLeaders.election_type`: give a leaderless partition any live replica, even one
/// that is not in sync (it may lose acknowledged records).
pub const UNCLEAN_ELECTION: i8 = 1;

/// Producer IDs handed to a broker at a time (Kafka's block size).
pub const PRODUCER_ID_BLOCK: i64 = 1000;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Brokers of another cluster are refused (INCONSISTENT_CLUSTER_ID).
    pub cluster_id: String,
    /// `broker.session.timeout.ms`: a broker that has not heartbeated for this long is
    /// fenced.
    pub session_timeout_ms: i64,
    /// `default.replication.factor`, for topics created with replication factor -1.
    pub default_replication_factor: i16,
    /// `leader.imbalance.per.broker.percentage`: [`Controller::rebalance_leaders`] moves
    /// leadership back to a broker once more than this share of the partitions it prefers
    /// are led by others.
    pub leader_imbalance_per_broker_percentage: u32,
    /// The broker of this node (combined mode) and the incarnation running now: a
    /// registration of that broker by another incarnation is a past life of this process,
    /// so it gets no session when this controller activates.
    pub local_broker: Option<(i32, Uuid)>,
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            cluster_id: String::new(),
            session_timeout_ms: 1500,
            default_replication_factor: 1,
            leader_imbalance_per_broker_percentage: 10,
            local_broker: None,
        }
    }
}

/// When a call happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub now_ms: i64,
    /// The metadata offset the call's records will be committed at: they go into the
    /// metadata log as one entry.
    pub next_offset: i64,
}

/// What a call decided: the records to commit, then the reply to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    pub records: Vec<MetadataRecord>,
    pub reply: T,
}

/// A topic to create.
#[derive(Debug, Clone, Copy)]
pub struct NewTopic<'a> {
    pub name: &'a str,
    /// Ignored when `assignments` is given.
    pub partitions: i32,
    /// -1 for `default.replication_factor`; ignored when `assignments` is given.
    pub replication_factor: i16,
    /// The replicas of each partition in order, when the request places them itself.
    pub assignments: &'a [Vec<i32>],
    pub configs: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Session {
    last_heartbeat_ms: i64,
    /// The broker is unfenced only once its metadata has reached this offset (its
    /// registration, or this controller's activation).
    catch_up_offset: i64,
    /// In controlled shutdown: it may stop once its metadata has reached this offset (the
    /// records that moved its leadership away).
    shutdown_offset: Option<i64>,
}

impl Session {
    /// A session starting at `at` for a broker that must catch up with everything
    /// committed so far.
    fn starting(at: At) -> Session {
        Session {
            last_heartbeat_ms: at.now_ms,
            catch_up_offset: at.next_offset - 1,
            shutdown_offset: None,
        }
    }
}

pub struct Controller {
    config: ControllerConfig,
    sessions: HashMap<i32, Session>,
}

impl Controller {
    pub fn new(config: ControllerConfig) -> Controller {
        Controller {
            config,
            sessions: HashMap::new(),
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// This controller becomes the active one: every registered broker gets a full session
    /// from now, and must catch up with everything committed so far.
    ///
    /// The exception is a past incarnation of this node's own broker: it is certainly gone,
    /// so its session has already lapsed (the next tick fences it, and the running
    /// incarnation may register at once).
    pub fn activate(&mut self, image: &MetadataImage, at: At) {
        let timeout = self.config.session_timeout_ms;
        let local = self.config.local_broker;
        self.sessions = image
            .brokers()
            .map(|b| {
                let mut session = Session::starting(at);
                if b.in_controlled_shutdown {
                    session.shutdown_offset = Some(session.catch_up_offset);
                }
                if local
                    .is_some_and(|(id, incarnation)| id == b.id && incarnation != b.incarnation_id)
                {
                    session.last_heartbeat_ms = at.now_ms - timeout - 1;
                }
                (b.id, session)
            })
            .collect();
    }

    /// BrokerRegistration: a broker (re)joins. It gets a new epoch and starts fenced; it is
    /// unfenced by a heartbeat once its metadata has caught up with its registration.
    pub fn register_broker(
        &mut self,
        image: &MetadataImage,
        request: &BrokerRegistrationRequest,
        at: At,
    ) -> Outcome<BrokerRegistrationResponse> {
        let refuse = |error: ErrorCode| Outcome {
            records: Vec::new(),
            reply: BrokerRegistrationResponse {
                error_code: error.code(),
                ..Default::default()
            },
        };
        if request.cluster_id != self.config.cluster_id {
            return refuse(ErrorCode::InconsistentClusterId);
        }
        if request.broker_id < 0 {
            return refuse(ErrorCode::InvalidRequest);
        }
        let id = request.broker_id;
        let mut records = Vec::new();
        if let Some(existing) = image.broker(id) {
            // Another process with this ID still holds a live session.
            if existing.incarnation_id != request.incarnation_id && self.session_alive(id, at) {
                return refuse(ErrorCode::DuplicateBrokerRegistration);
            }
            if !existing.fenced {
                records.extend(moved_off(image, id));
            }
        }
        let epoch = image.next_broker_epoch();
        records.insert(
            0,
            MetadataRecord::RegisterBroker(RegisterBrokerRecord {
                broker_id: id,
                incarnation_id: request.incarnation_id,
                broker_epoch: epoch,
                end_points: request
                    .listeners
                    .iter()
                    .map(|l| BrokerEndpoint {
                        name: l.name.clone(),
                        host: l.host.clone(),
                        port: l.port,
                        security_protocol: l.security_protocol,
                        ..Default::default()
                    })
                    .collect(),
                rack: request.rack.clone(),
                fenced: true,
                in_controlled_shutdown: false,
                ..Default::default()
            }),
        );
        self.sessions.insert(
            id,
            Session {
                last_heartbeat_ms: at.now_ms,
                catch_up_offset: at.next_offset,
                shutdown_offset: None,
            },
        );
        Outcome {
            records,
            reply: BrokerRegistrationResponse {
                error_code: ErrorCode::None.code(),
                broker_epoch: epoch,
                ..Default::default()
            },
        }
    }

    /// BrokerHeartbeat: keeps the broker's session alive, and moves it between fenced,
    /// unfenced and controlled shutdown as it asks and as its metadata catches up.
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        request: &BrokerHeartbeatRequest,
        at: At,
    ) -> Outcome<BrokerHeartbeatResponse> {
        let id = request.broker_id;
        let refuse = |error: ErrorCode| Outcome {
            records: Vec::new(),
            reply: BrokerHeartbeatResponse {
                error_code: error.code(),
                ..Default::default()
            },
        };
        let Some(broker) = image.broker(id) else {
            return refuse(ErrorCode::BrokerIdNotRegistered);
        };
        if broker.epoch != request.broker_epoch {
            return refuse(ErrorCode::StaleBrokerEpoch);
        }
        let session = self.sessions.entry(id).or_insert(Session::starting(at));
        session.last_heartbeat_ms = at.now_ms;
        let reached = request.current_metadata_offset;
        let caught_up = reached >= session.catch_up_offset;
        let change = |fenced, in_controlled_shutdown| {
            registration_change(broker, fenced, in_controlled_shutdown)
        };
        let mut records = Vec::new();
        let mut fenced = broker.fenced;
        let mut should_shut_down = false;
        if request.want_shut_down || broker.in_controlled_shutdown {
            if broker.fenced {
                // A fenced broker leads nothing: it may stop at once.
                should_shut_down = true;
            } else if !broker.in_controlled_shutdown {
                records.push(change(0, 1));
                records.extend(moved_off(image, id));
                session.shutdown_offset = Some(at.next_offset);
            } else if session
                .shutdown_offset
                .is_none_or(|offset| reached >= offset)
            {
                // It has seen its leadership go: fence it and end its session, so that
                // its next incarnation may register at once.
                records.push(change(1, 0));
                fenced = true;
                should_shut_down = true;
            }
            if should_shut_down {
                self.sessions.remove(&id);
            }
        } else if request.want_fence {
            if !broker.fenced {
                records.push(change(1, 0));
                records.extend(moved_off(image, id));
                fenced = true;
            }
        } else if broker.fenced && caught_up {
            records.push(change(-1, 0));
            records.extend(elect_returning(image, id));
            fenced = false;
        }
        Outcome {
            records,
            reply: BrokerHeartbeatResponse {
                error_code: ErrorCode::None.code(),
                is_caught_up: caught_up,
                is_fenced: fenced,
                should_shut_down,
                ..Default::default()
            },
        }
    }

    fn session_alive(&self, id: i32, at: At) -> bool {
        self.sessions
            .get(&id)
            .is_some_and(|s| at.now_ms - s.last_heartbeat_ms <= self.config.session_timeout_ms)
    }

    /// Fences one unfenced broker whose session has lapsed, moving its leadership and ISR
    /// memberships away. Call again (after committing) until it returns nothing.
    pub fn tick(&mut self, image: &MetadataImage, at: At) -> Vec<MetadataRecord> {
        for broker in image.brokers().filter(|b| !b.fenced) {
            let session = self
                .sessions
                .entry(broker.id)
                .or_insert(Session::starting(at));
            if at.now_ms - session.last_heartbeat_ms > self.config.session_timeout_ms {
                let mut records = vec![registration_change(broker, 1, 0)];
                records.extend(moved_off(image, broker.id));
                return records;
            }
        }
        Vec::new()
    }

    /// When [`Controller::tick`] next has something to do: the earliest time an unfenced
    /// broker's session lapses.
    pub fn next_deadline(&self, image: &MetadataImage) -> Option<i64> {
        image
            .brokers()
            .filter(|b| !b.fenced)
            .filter_map(|b| self.sessions.get(&b.id))
            .map(|s| s.last_heartbeat_ms + self.config.session_timeout_ms + 1)
            .min()
    }

    /// UnregisterBroker: forgets a broker, after moving its leadership and ISR memberships
    /// away. Its replicas stay assigned (and offline) until they are reassigned.
    pub fn unregister_broker(
        &mut self,
        image: &MetadataImage,
        broker_id: i32,
    ) -> Outcome<UnregisterBrokerResponse> {
        let Some(broker) = image.broker(broker_id) else {
            return Outcome {
                records: Vec::new(),
                reply: UnregisterBrokerResponse {
                    error_code: ErrorCode::BrokerIdNotRegistered.code(),
                    error_message: Some(format!(
                        "Broker ID {broker_id} is not currently registered"
                    )),
                    ..Default::default()
                },
            };
        };
        let mut records = moved_off(image, broker_id);
        records.push(MetadataRecord::UnregisterBroker(UnregisterBrokerRecord {
            broker_id,
            broker_epoch: broker.epoch,
            ..Default::default()
        }));
        self.sessions.remove(&broker_id);
        Outcome {
            records,
            reply: UnregisterBrokerResponse {
                error_code: ErrorCode::None.code(),
                ..Default::default()
            },
        }
    }

    /// The records that create a topic, its replicas placed on the usable brokers (unfenced,
    /// not shutting down) so that leaders spread evenly and each partition's replicas are on
    /// as many racks as possible; or the replicas the request gives.
    pub fn create_topic(
        &self,
        image: &MetadataImage,
        topic: &NewTopic<'_>,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        if image.topic(topic.name).is_some() {
            return Err((
                ErrorCode::TopicAlreadyExists,
                format!("Topic '{}' already exists.", topic.name),
            ));
        }
        let replicas = if topic.assignments.is_empty() {
            if topic.partitions <= 0 {
                return Err((
                    ErrorCode::InvalidPartitions,
                    "Number of partitions was set to an invalid non-positive value.".into(),
                ));
            }
            let factor = match topic.replication_factor {
                -1 => self.config.default_replication_factor,
                factor => factor,
            };
            let start = image.topics().map(|t| t.partitions.len()).sum::<usize>();
            place_replicas(image, start, topic.partitions, factor)?
        } else {
            check_assignments(image, topic.assignments)?;
            topic.assignments.to_vec()
        };
        let mut records = create_topic_records(topic.name, 0, 0, topic.configs);
        let topic_id = match records.first() {
            Some(MetadataRecord::Topic(t)) => t.topic_id,
            _ => Uuid::ZERO,
        };
        for (index, replicas) in replicas.into_iter().enumerate() {
            records.push(new_partition(image, topic_id, index as i32, replicas));
        }
        Ok(records)
    }

    /// DeleteTopics: the record that removes a topic.
    pub fn delete_topic(
        &self,
        image: &MetadataImage,
        name: &str,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let topic = image.topic(name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                "This server does not host this topic-partition.".to_string(),
            )
        })?;
        Ok(vec![MetadataRecord::RemoveTopic(RemoveTopicRecord {
            topic_id: topic.id,
            ..Default::default()
        })])
    }

    /// CreatePartitions: the records that grow a topic to `count` partitions, the new
    /// replicas placed like a new topic's (as many as partition 0 has), or as given.
    pub fn create_partitions(
        &self,
        image: &MetadataImage,
        name: &str,
        count: i32,
        assignments: &[Vec<i32>],
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let (topic, current) = check_partition_growth(image, name, count)?;
        let factor = topic.partitions.first().map_or(1, |p| p.replicas.len());
        let replicas = if assignments.is_empty() {
            let start = image.topics().map(|t| t.partitions.len()).sum::<usize>();
            let factor = i16::try_from(factor).unwrap_or(i16::MAX);
            place_replicas(image, start, count - current, factor)?
        } else {
            if assignments.len() != (count - current) as usize {
                return Err((
                    ErrorCode::InvalidReplicaAssignment,
                    format!(
                        "Attempted to add {} additional partition(s), but only {} assignment(s) \
                         were specified.",
                        count - current,
                        assignments.len()
                    ),
                ));
            }
            if assignments.iter().any(|a| a.len() != factor) {
                return Err((
                    ErrorCode::InvalidReplicaAssignment,
                    format!(
                        "The manual partition assignment includes a partition with {} \
                         replica(s), but this is not consistent with previous partitions, \
                         which have {factor} replica(s).",
                        assignments
                            .iter()
                            .map(Vec::len)
                            .find(|&n| n != factor)
                            .unwrap_or(0)
                    ),
                ));
            }
            check_assignments(image, assignments)?;
            assignments.to_vec()
        };
        Ok(replicas
            .into_iter()
            .zip(current..)
            .map(|(replicas, index)| new_partition(image, topic.id, index, replicas))
            .collect())
    }

    /// IncrementalAlterConfigs / AlterConfigs: the records that make a topic's or broker's
    /// configs `configs` (checked by the caller): one per key set, changed or removed.
    pub fn alter_configs(
        &self,
        image: &MetadataImage,
        resource_type: i8,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let current = image.resource_configs(resource_type, name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("Topic {name} does not exist."),
            )
        })?;
        let record = |key: &str, value: Option<&String>| {
            MetadataRecord::Config(ConfigRecord {
                resource_type,
                resource_name: name.to_string(),
                name: key.to_string(),
                value: value.cloned(),
                ..Default::default()
            })
        };
        let mut records: Vec<MetadataRecord> = configs
            .iter()
            .filter(|(key, value)| current.get(*key) != Some(*value))
            .map(|(key, value)| record(key, Some(value)))
            .collect();
        records.extend(
            current
                .keys()
                .filter(|key| !configs.contains_key(*key))
                .map(|key| record(key, None)),
        );
        Ok(records)
    }

    /// AlterUserScramCredentials: a record per credential set, and one per credential
    /// removed that exists.
    pub fn alter_scram_credentials(
        &self,
        image: &MetadataImage,
        upsertions: &[UserScramCredentialRecord],
        deletions: &[RemoveUserScramCredentialRecord],
    ) -> Vec<MetadataRecord> {
        let removed = deletions
            .iter()
            .filter(|d| image.scram_credential(&d.name, d.mechanism).is_some())
            .cloned()
            .map(MetadataRecord::RemoveUserScramCredential);
        removed
            .chain(
                upsertions
                    .iter()
                    .cloned()
                    .map(MetadataRecord::UserScramCredential),
            )
            .collect()
    }

    /// CreateAcls / DeleteAcls: a record per binding added whose ID is new, and one per
    /// binding removed that exists.
    pub fn alter_acls(
        &self,
        image: &MetadataImage,
        creations: &[AccessControlEntryRecord],
        deletions: &[RemoveAccessControlEntryRecord],
    ) -> Vec<MetadataRecord> {
        let existing: std::collections::BTreeSet<_> = image.acls().map(|acl| acl.id).collect();
        let removed = deletions
            .iter()
            .filter(|d| existing.contains(&d.id))
            .cloned()
            .map(MetadataRecord::RemoveAccessControlEntry);
        let added = creations
            .iter()
            .filter(|c| !existing.contains(&c.id))
            .cloned()
            .map(MetadataRecord::AccessControlEntry);
        removed.chain(added).collect()
    }

    /// AlterClientQuotas: a record per quota set, and one per quota removed that exists.
    pub fn alter_client_quotas(
        &self,
        image: &MetadataImage,
        changes: &[ClientQuotaRecord],
    ) -> Vec<MetadataRecord> {
        changes
            .iter()
            .filter(|c| {
                !c.remove
                    || image
                        .client_quota(&crate::quota_entity(c))
                        .is_some_and(|quotas| quotas.contains_key(&c.key))
            })
            .cloned()
            .map(MetadataRecord::ClientQuota)
            .collect()
    }

    /// AllocateProducerIds: the next block of producer IDs for a registered broker.
    pub fn allocate_producer_ids(
        &self,
        image: &MetadataImage,
        broker_id: i32,
        broker_epoch: i64,
    ) -> Outcome<Result<std::ops::Range<i64>, ErrorCode>> {
        let refuse = |error: ErrorCode| Outcome {
            records: Vec::new(),
            reply: Err(error),
        };
        match image.broker(broker_id) {
            None => return refuse(ErrorCode::BrokerIdNotRegistered),
            Some(b) if b.epoch != broker_epoch => return refuse(ErrorCode::StaleBrokerEpoch),
            Some(_) => {}
        }
        let start = image.next_producer_id();
        let end = start + PRODUCER_ID_BLOCK;
        Outcome {
            records: vec![MetadataRecord::ProducerIds(ProducerIdsRecord {
                broker_id,
                broker_epoch,
                next_producer_id: end,
                ..Default::default()
            })],
            reply: Ok(start..end),
        }
    }

    /// AlterPartition: a leader shrinks or grows its partitions' ISR.
    pub fn alter_partition(
        &self,
        image: &MetadataImage,
        request: &AlterPartitionRequest,
        version: i16,
    ) -> Outcome<AlterPartitionResponse> {
        let mut reply = AlterPartitionResponse::default();
        let requester_current = image
            .broker(request.broker_id)
            .is_some_and(|b| request.broker_epoch == -1 || b.epoch == request.broker_epoch);
        if !requester_current {
            reply.error_code = ErrorCode::StaleBrokerEpoch.code();
            return Outcome {
                records: Vec::new(),
                reply,
            };
        }
        let mut records = Vec::new();
        let mut seen = BTreeSet::new();
        for topic_data in &request.topics {
            let topic = if version >= 2 {
                image.topic_by_id(&topic_data.topic_id)
            } else {
                image.topic(&topic_data.topic_name)
            };
            // Topics are named up to version 1, identified from version 2.
            let mut topic_reply = if version >= 2 {
                alter_partition_response::TopicData {
                    topic_id: topic_data.topic_id,
                    ..Default::default()
                }
            } else {
                alter_partition_response::TopicData {
                    topic_name: topic_data.topic_name.clone(),
                    ..Default::default()
                }
            };
            for data in &topic_data.partitions {
                let mut partition_reply = alter_partition_response::PartitionData {
                    partition_index: data.partition_index,
                    ..Default::default()
                };
                let new_isr: Vec<(i32, i64)> = if version >= 3 {
                    data.new_isr_with_epochs
                        .iter()
                        .map(|b| (b.broker_id, b.broker_epoch))
                        .collect()
                } else {
                    data.new_isr.iter().map(|&b| (b, -1)).collect()
                };
                let partition = topic.and_then(|t| {
                    t.partitions
                        .iter()
                        .find(|p| p.index == data.partition_index)
                        .map(|p| (t, p))
                });
                let checked = match partition {
                    None if topic.is_none() && version >= 2 => Err(ErrorCode::UnknownTopicId),
                    None => Err(ErrorCode::UnknownTopicOrPartition),
                    Some((t, p)) if !seen.insert((t.id, p.index)) => Err(ErrorCode::InvalidRequest),
                    Some((_, p)) => check_isr_change(image, request.broker_id, data, p, &new_isr),
                };
                match checked {
                    Err(error) => partition_reply.error_code = error.code(),
                    Ok(()) => {
                        let (t, p) = match partition {
                            Some(found) => found,
                            None => continue,
                        };
                        let isr: Vec<i32> = new_isr.iter().map(|&(b, _)| b).collect();
                        let mut next = p.clone();
                        if isr != p.isr {
                            // An ISR that holds every target replica completes a
                            // reassignment in the same change.
                            let record = reassignment::with_completion(
                                image,
                                p,
                                change(t.id, p.index, Some(isr.clone()), NO_LEADER_CHANGE),
                            );
                            if let MetadataRecord::PartitionChange(r) = &record {
                                next.apply(r);
                            }
                            records.push(record);
                        }
                        partition_reply.leader_id = next.leader;
                        partition_reply.leader_epoch = next.leader_epoch;
                        partition_reply.isr = next.isr;
                        partition_reply.partition_epoch = next.partition_epoch;
                    }
                }
                topic_reply.partitions.push(partition_reply);
            }
            reply.topics.push(topic_reply);
        }
        Outcome { records, reply }
    }

    /// ElectLeaders: preferred election moves leadership to each partition's first replica
    /// when it is in sync; unclean election gives a leaderless partition a live replica
    /// even when none in sync is left. With no partitions named it covers every partition
    /// and leaves out those that need no election.
    pub fn elect_leaders(
        &self,
        image: &MetadataImage,
        request: &ElectLeadersRequest,
    ) -> Outcome<ElectLeadersResponse> {
        let mut reply = ElectLeadersResponse::default();
        if request.election_type != PREFERRED_ELECTION && request.election_type != UNCLEAN_ELECTION
        {
            reply.error_code = ErrorCode::InvalidRequest.code();
            return Outcome {
                records: Vec::new(),
                reply,
            };
        }
        let named = request.topic_partitions.is_some();
        let wanted: Vec<(String, Vec<i32>)> = match &request.topic_partitions {
            Some(topics) => topics
                .iter()
                .map(|t| (t.topic.clone(), t.partitions.clone()))
                .collect(),
            None => image
                .topics()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.partitions.iter().map(|p| p.index).collect(),
                    )
                })
                .collect(),
        };
        let mut records = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, partitions) in wanted {
            let mut result = ReplicaElectionResult {
                topic: name.clone(),
                ..Default::default()
            };
            for index in partitions {
                if !seen.insert((name.clone(), index)) {
                    continue;
                }
                let found = image.topic(&name).and_then(|t| {
                    t.partitions
                        .iter()
                        .find(|p| p.index == index)
                        .map(|p| (t, p))
                });
                let decided = match found {
                    None => Err((
                        ErrorCode::UnknownTopicOrPartition,
                        format!("The partition {name}-{index} does not exist."),
                    )),
                    Some((t, p)) => elect(image, t, p, request.election_type),
                };
                let (error, message) = match decided {
                    Ok(record) => {
                        records.push(record);
                        (ErrorCode::None, None)
                    }
                    Err((ErrorCode::ElectionNotNeeded, _)) if !named => continue,
                    Err((error, message)) => (error, Some(message)),
                };
                result.partition_result.push(PartitionResult {
                    partition_id: index,
                    error_code: error.code(),
                    error_message: message,
                    ..Default::default()
                });
            }
            if !result.partition_result.is_empty() {
                reply.replica_election_results.push(result);
            }
        }
        Outcome { records, reply }
    }

    /// AlterPartitionReassignments (KIP-455): starts (or replaces) the reassignment of each
    /// partition named with replicas, cancels it for each named without. See
    /// [`reassignment`].
    pub fn alter_partition_reassignments(
        &self,
        image: &MetadataImage,
        request: &AlterPartitionReassignmentsRequest,
    ) -> Outcome<AlterPartitionReassignmentsResponse> {
        let mut reply = AlterPartitionReassignmentsResponse {
            allow_replication_factor_change: request.allow_replication_factor_change,
            ..Default::default()
        };
        let mut records = Vec::new();
        let mut seen = BTreeSet::new();
        for topic in &request.topics {
            let mut topic_reply = ReassignableTopicResponse {
                name: topic.name.clone(),
                ..Default::default()
            };
            for wanted in &topic.partitions {
                let index = wanted.partition_index;
                let found = image.topic(&topic.name).and_then(|t| {
                    t.partitions
                        .iter()
                        .find(|p| p.index == index)
                        .map(|p| (t, p))
                });
                let decided = match found {
                    _ if !seen.insert((topic.name.clone(), index)) => Err((
                        ErrorCode::InvalidRequest,
                        format!("The partition {}-{index} is named twice.", topic.name),
                    )),
                    None => Err((
                        ErrorCode::UnknownTopicOrPartition,
                        format!("The partition {}-{index} does not exist.", topic.name),
                    )),
                    Some((t, p)) => match &wanted.replicas {
                        Some(target) => reassignment::start(
                            image,
                            (t.id, &t.name),
                            p,
                            target,
                            request.allow_replication_factor_change,
                        ),
                        None => reassignment::cancel(image, (t.id, &t.name), p).map(Some),
                    },
                };
                let (error, message) = match decided {
                    Ok(record) => {
                        records.extend(record);
                        (ErrorCode::None, None)
                    }
                    Err((error, message)) => (error, Some(message)),
                };
                topic_reply.partitions.push(ReassignablePartitionResponse {
                    partition_index: index,
                    error_code: error.code(),
                    error_message: message,
                    ..Default::default()
                });
            }
            reply.responses.push(topic_reply);
        }
        Outcome { records, reply }
    }

    /// `auto.leader.rebalance.enable`: gives each broker back the leadership of the
    /// partitions it prefers (is the first replica of) once more than
    /// `leader.imbalance.per.broker.percentage` of them are led by others and it is in sync.
    pub fn rebalance_leaders(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        // By preferred broker: how many partitions it prefers, and those led by others.
        let mut preferred: BTreeMap<i32, (u32, Vec<Placed<'_>>)> = BTreeMap::new();
        for topic in image.topics() {
            for p in &topic.partitions {
                let Some(&first) = p.replicas.first() else {
                    continue;
                };
                let entry = preferred.entry(first).or_default();
                entry.0 += 1;
                if p.leader != first {
                    entry.1.push((topic, p));
                }
            }
        }
        let mut records = Vec::new();
        for (total, elsewhere) in preferred.into_values() {
            let share = elsewhere.len() as u64 * 100;
            if share
                <= u64::from(total) * u64::from(self.config.leader_imbalance_per_broker_percentage)
            {
                continue;
            }
            for (topic, p) in elsewhere {
                if let Ok(record) = elect(image, topic, p, PREFERRED_ELECTION) {
                    records.push(record);
                }
            }
        }
        records
    }
}

/// Whether topic `name` may grow to `count` partitions; the topic and its current count.
pub fn check_partition_growth<'a>(
    image: &'a MetadataImage,
    name: &str,
    count: i32,
) -> Result<(&'a TopicMeta, i32), Refusal> {
    let topic = image.topic(name).ok_or_else(|| {
        (
            ErrorCode::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        )
    })?;
    let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
    if count <= current {
        return Err((
            ErrorCode::InvalidPartitions,
            format!(
                "Topic currently has {current} partitions, which is higher than the requested \
                 {count}."
            ),
        ));
    }
    Ok((topic, current))
}

/// A partition and its topic.
type Placed<'a> = (&'a TopicMeta, &'a PartitionMeta);

/// A broker may lead (and join an ISR) if it is registered, unfenced and not shutting down.
fn usable(image: &MetadataImage, id: i32) -> bool {
    image
        .broker(id)
        .is_some_and(|b| !b.fenced && !b.in_controlled_shutdown)
}

/// A change to `broker`'s registration: `fenced` 1 fences, -1 unfences, 0 leaves it;
/// `in_controlled_shutdown` 1 enters controlled shutdown.
fn registration_change(
    broker: &BrokerMeta,
    fenced: i8,
    in_controlled_shutdown: i8,
) -> MetadataRecord {
    MetadataRecord::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
        broker_id: broker.id,
        broker_epoch: broker.epoch,
        fenced,
        in_controlled_shutdown,
        ..Default::default()
    })
}

fn change(topic_id: Uuid, partition: i32, isr: Option<Vec<i32>>, leader: i32) -> MetadataRecord {
    MetadataRecord::PartitionChange(PartitionChangeRecord {
        partition_id: partition,
        topic_id,
        isr,
        leader,
        ..Default::default()
    })
}

/// The changes that take `broker` out of every ISR (except as the last member: the ISR
/// keeps the last replica known to have everything) and give each partition it leads the
/// next usable in-sync replica, or no leader.
fn moved_off(image: &MetadataImage, broker: i32) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics() {
        for p in &topic.partitions {
            let in_isr = p.isr.contains(&broker);
            if !in_isr && p.leader != broker {
                continue;
            }
            let isr: Vec<i32> = if in_isr && p.isr.len() > 1 {
                p.isr.iter().copied().filter(|&b| b != broker).collect()
            } else {
                p.isr.clone()
            };
            let leader = if p.leader == broker {
                p.replicas
                    .iter()
                    .copied()
                    .find(|&r| r != broker && isr.contains(&r) && usable(image, r))
                    .unwrap_or(NO_LEADER)
            } else {
                NO_LEADER_CHANGE
            };
            let isr_change = (isr != p.isr).then_some(isr);
            if isr_change.is_some() || leader != NO_LEADER_CHANGE {
                records.push(change(topic.id, p.index, isr_change, leader));
            }
        }
    }
    records
}

/// The changes that give `broker`, just unfenced, the leadership of the partitions left
/// without a leader whose ISR it is in.
fn elect_returning(image: &MetadataImage, broker: i32) -> Vec<MetadataRecord> {
    image
        .topics()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .filter(|(_, p)| p.leader == NO_LEADER && p.isr.contains(&broker))
        .map(|(t, p)| change(t.id, p.index, None, broker))
        .collect()
}

fn elect(
    image: &MetadataImage,
    topic: &TopicMeta,
    p: &PartitionMeta,
    election_type: i8,
) -> Result<MetadataRecord, Refusal> {
    let name = format!("{}-{}", topic.name, p.index);
    if election_type == PREFERRED_ELECTION {
        let preferred = p.replicas.first().copied().unwrap_or(NO_LEADER);
        if p.leader == preferred {
            return Err((
                ErrorCode::ElectionNotNeeded,
                format!("Leader election not needed for partition {name}."),
            ));
        }
        if !p.isr.contains(&preferred) || !usable(image, preferred) {
            return Err((
                ErrorCode::PreferredLeaderNotAvailable,
                format!("The preferred replica of {name} is not available or not in sync."),
            ));
        }
        return Ok(change(topic.id, p.index, None, preferred));
    }
    if p.leader != NO_LEADER {
        return Err((
            ErrorCode::ElectionNotNeeded,
            format!("Partition {name} has a leader."),
        ));
    }
    if let Some(&in_sync) = p
        .replicas
        .iter()
        .find(|&&r| p.isr.contains(&r) && usable(image, r))
    {
        return Ok(change(topic.id, p.index, None, in_sync));
    }
    match p.replicas.iter().find(|&&r| usable(image, r)) {
        Some(&any) => {
            let unclean = change(topic.id, p.index, Some(vec![any]), any);
            Ok(reassignment::with_completion(image, p, unclean))
        }
        None => Err((
            ErrorCode::EligibleLeadersNotAvailable,
            format!("No replica of {name} is available."),
        )),
    }
}

/// A new partition with these replicas: the usable ones in sync, the first of them leading.
fn new_partition(
    image: &MetadataImage,
    topic_id: Uuid,
    index: i32,
    replicas: Vec<i32>,
) -> MetadataRecord {
    let isr: Vec<i32> = replicas
        .iter()
        .copied()
        .filter(|&r| usable(image, r))
        .collect();
    MetadataRecord::Partition(spool_protocol::internal::PartitionRecord {
        partition_id: index,
        topic_id,
        leader: isr.first().copied().unwrap_or(NO_LEADER),
        replicas,
        isr,
        leader_epoch: 0,
        partition_epoch: 0,
        ..Default::default()
    })
}

/// Places `factor` replicas for each of `count` partitions on the usable brokers. The
/// brokers are listed rack by rack in turn; partition `start + i`'s leader is the next one
/// in that list, and its followers are taken after it (a step that grows with each round
/// over the list, so followers vary), preferring racks the partition does not use yet.
pub fn place_replicas(
    image: &MetadataImage,
    start: usize,
    count: i32,
    factor: i16,
) -> Result<Vec<Vec<i32>>, Refusal> {
    let mut racks: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for broker in image.brokers().filter(|b| usable(image, b.id)) {
        racks
            .entry(broker.rack.as_deref().unwrap_or(""))
            .or_default()
            .push(broker.id);
    }
    let mut brokers = Vec::new();
    let mut rack_of = HashMap::new();
    for round in 0.. {
        let before = brokers.len();
        for (rack, ids) in &racks {
            if let Some(&id) = ids.get(round) {
                brokers.push(id);
                rack_of.insert(id, *rack);
            }
        }
        if brokers.len() == before {
            break;
        }
    }
    let n = brokers.len();
    if factor <= 0 || factor as usize > n {
        return Err((
            ErrorCode::InvalidReplicationFactor,
            format!(
                "Unable to replicate the partition {factor} time(s): The target replication \
                 factor of {factor} cannot be reached because only {n} broker(s) are registered."
            ),
        ));
    }
    let factor = factor as usize;
    let mut placed = Vec::with_capacity(count.max(0) as usize);
    for i in 0..count.max(0) as usize {
        let k = start + i;
        let first = k % n;
        let step = if n > 1 { 1 + (k / n) % (n - 1) } else { 0 };
        let followers: Vec<i32> = (0..n)
            .map(|j| brokers[(first + step + j) % n])
            .filter(|&b| b != brokers[first])
            .collect();
        let mut replicas = vec![brokers[first]];
        let mut racks_used: BTreeSet<&str> = BTreeSet::from([rack_of[&brokers[first]]]);
        for &b in &followers {
            if replicas.len() < factor && racks_used.insert(rack_of[&b]) {
                replicas.push(b);
            }
        }
        for &b in &followers {
            if replicas.len() < factor && !replicas.contains(&b) {
                replicas.push(b);
            }
        }
        placed.push(replicas);
    }
    Ok(placed)
}

fn check_assignments(image: &MetadataImage, assignments: &[Vec<i32>]) -> Result<(), Refusal> {
    let invalid = |message: String| Err((ErrorCode::InvalidReplicaAssignment, message));
    let factor = assignments.first().map_or(0, Vec::len);
    for (index, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() {
            return invalid(format!(
                "The manual partition assignment includes a partition ({index}) with no replicas."
            ));
        }
        if replicas.len() != factor {
            return invalid(
                "All partitions in the manual partition assignment must have the same number \
                 of replicas."
                    .into(),
            );
        }
        let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
        if distinct.len() != replicas.len() {
            return invalid(format!(
                "The manual partition assignment includes the partition {index} with duplicate \
                 replicas."
            ));
        }
        if let Some(unknown) = replicas.iter().find(|&&r| image.broker(r).is_none()) {
            return invalid(format!(
                "The manual partition assignment includes broker {unknown}, but no such broker \
                 is registered."
            ));
        }
        if !replicas.iter().any(|&r| usable(image, r)) {
            return invalid(format!(
                "All brokers specified in the manual partition assignment for partition {index} \
                 are fenced or in controlled shutdown."
            ));
        }
    }
    Ok(())
}

/// Whether the leader `requester` may set `p`'s ISR to `new_isr` (with the broker epochs
/// it knows, -1 for none).
fn check_isr_change(
    image: &MetadataImage,
    requester: i32,
    data: &spool_protocol::messages::alter_partition_request::PartitionData,
    p: &PartitionMeta,
    new_isr: &[(i32, i64)],
) -> Result<(), ErrorCode> {
    if data.leader_epoch != p.leader_epoch {
        return Err(ErrorCode::FencedLeaderEpoch);
    }
    if requester != p.leader {
        return Err(ErrorCode::InvalidRequest);
    }
    if data.partition_epoch != p.partition_epoch {
        return Err(ErrorCode::InvalidUpdateVersion);
    }
    let distinct: BTreeSet<i32> = new_isr.iter().map(|&(b, _)| b).collect();
    if distinct.len() != new_isr.len() || !distinct.contains(&p.leader) {
        return Err(ErrorCode::InvalidRequest);
    }
    for &(b, epoch) in new_isr {
        // Members already in the ISR may stay; a new one must be a live replica, and the
        // incarnation the leader saw catch up.
        if p.isr.contains(&b) {
            continue;
        }
        let current = image
            .broker(b)
            .is_some_and(|broker| epoch == -1 || broker.epoch == epoch);
        if !p.replicas.contains(&b) || !usable(image, b) || !current {
            return Err(ErrorCode::IneligibleReplica);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
