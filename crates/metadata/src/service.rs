//! The controller at work: one task per node that, while the node leads the metadata
//! quorum, takes requests one at a time, asks the [`Controller`] what to do, commits the
//! records, and answers once they are applied. On any other node it answers
//! NOT_CONTROLLER, so brokers look for the active one.
//!
//! When the node becomes leader the task first waits until everything the previous leader
//! committed is applied here, then activates a fresh controller over that image (full
//! sessions for every broker). Between requests it fences brokers whose sessions lapsed.
//! Time is tokio's, so tests on a paused clock drive sessions without waiting.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, AlterPartitionRequest,
    AlterPartitionResponse, BrokerHeartbeatRequest, BrokerHeartbeatResponse,
    BrokerRegistrationRequest, BrokerRegistrationResponse, ElectLeadersRequest,
    ElectLeadersResponse, UnregisterBrokerResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::MetadataRecord;
use crate::controller::{At, Controller, ControllerConfig, NewTopic, Outcome, Refusal};
use crate::quorum::{MetadataLog, Published, QuorumError};
use spool_protocol::internal::{
    AccessControlEntryRecord, ClientQuotaRecord, RemoveAccessControlEntryRecord,
    RemoveUserScramCredentialRecord, UserScramCredentialRecord,
};

/// A topic to create, owned so it can travel to the controller task.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRequest {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub assignments: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

/// A request to the active controller, as it travels to the controller task (and, from
/// another node, over the controller listener: see [`crate::remote`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Register(BrokerRegistrationRequest),
    Heartbeat(BrokerHeartbeatRequest),
    /// The request and the version it came in (the version changes how it is read).
    AlterPartition(AlterPartitionRequest, i16),
    ElectLeaders(ElectLeadersRequest),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest),
    Unregister(i32),
    Admin(AdminChange),
    /// The next block of producer IDs for the broker with this ID and epoch.
    AllocateProducerIds(i32, i64),
}

/// The controller's answer to a [`Request`] of the same kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Register(BrokerRegistrationResponse),
    Heartbeat(BrokerHeartbeatResponse),
    AlterPartition(AlterPartitionResponse),
    ElectLeaders(ElectLeadersResponse),
    AlterPartitionReassignments(AlterPartitionReassignmentsResponse),
    Unregister(UnregisterBrokerResponse),
    /// The offset of the metadata entry that holds the change (of the newest one when
    /// nothing had to change), or why the change was refused.
    Admin(Result<i64, Refusal>),
    AllocateProducerIds(Result<Range<i64>, ErrorCode>),
}

/// The answer of a node that is not the active controller.
trait NotController {
    fn not_controller() -> Self;
}

macro_rules! not_controller_by_error_code {
    ($($response:ty),+) => {$(
        impl NotController for $response {
            fn not_controller() -> Self {
                Self {
                    error_code: ErrorCode::NotController.code(),
                    ..Default::default()
                }
            }
        }
    )+};
}

not_controller_by_error_code!(
    BrokerRegistrationResponse,
    BrokerHeartbeatResponse,
    AlterPartitionResponse,
    ElectLeadersResponse,
    AlterPartitionReassignmentsResponse,
    UnregisterBrokerResponse
);

impl NotController for Result<i64, Refusal> {
    fn not_controller() -> Self {
        Err((
            ErrorCode::NotController,
            "This node is not the active controller.".into(),
        ))
    }
}

impl NotController for Result<Range<i64>, ErrorCode> {
    fn not_controller() -> Self {
        Err(ErrorCode::NotController)
    }
}

impl Request {
    /// The answer when the controller took too long: REQUEST_TIMED_OUT for an
    /// administrative change (it may still be committed), else NOT_CONTROLLER.
    pub fn timed_out(&self) -> Reply {
        match self {
            Request::Admin(_) => Reply::Admin(Err((
                ErrorCode::RequestTimedOut,
                "The metadata change was not committed in time.".into(),
            ))),
            other => other.not_controller(),
        }
    }

    /// The answer of a node that is not the active controller (or cannot reach it).
    pub fn not_controller(&self) -> Reply {
        match self {
            Request::Register(_) => Reply::Register(NotController::not_controller()),
            Request::Heartbeat(_) => Reply::Heartbeat(NotController::not_controller()),
            Request::AlterPartition(..) => Reply::AlterPartition(NotController::not_controller()),
            Request::ElectLeaders(_) => Reply::ElectLeaders(NotController::not_controller()),
            Request::AlterPartitionReassignments(_) => {
                Reply::AlterPartitionReassignments(NotController::not_controller())
            }
            Request::Unregister(_) => Reply::Unregister(NotController::not_controller()),
            Request::Admin(_) => Reply::Admin(NotController::not_controller()),
            Request::AllocateProducerIds(..) => {
                Reply::AllocateProducerIds(NotController::not_controller())
            }
        }
    }
}

type Command = (Request, oneshot::Sender<Reply>);

/// A change an administrator (or a broker on a client's behalf) asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminChange {
    CreateTopic(TopicRequest),
    DeleteTopic(String),
    CreatePartitions {
        name: String,
        count: i32,
        /// The new partitions' replicas, or empty to place them.
        assignments: Vec<Vec<i32>>,
    },
    /// Sets a topic's or broker's configs to exactly these.
    AlterConfigs {
        resource_type: i8,
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Sets and removes SCRAM credentials (checked by the broker that asks).
    AlterScramCredentials {
        upsertions: Vec<UserScramCredentialRecord>,
        deletions: Vec<RemoveUserScramCredentialRecord>,
    },
    /// Adds and removes ACL bindings (checked, and given IDs, by the broker that asks).
    AlterAcls {
        creations: Vec<AccessControlEntryRecord>,
        deletions: Vec<RemoveAccessControlEntryRecord>,
    },
    /// Sets and removes client quotas (checked by the broker that asks).
    AlterClientQuotas(Vec<ClientQuotaRecord>),
}

/// Sends requests to the active controller; cheap to clone. The node's own controller
/// task serves them while this node leads the quorum; otherwise they are forwarded to the
/// active controller's listener, if a [`Forwarder`] is set.
#[derive(Clone)]
pub struct ControllerHandle {
    commands: mpsc::Sender<Command>,
    forwarder: Option<Arc<Forwarder>>,
}

/// Reaches the active controller on another node.
pub struct Forwarder {
    /// This node's ID.
    pub me: u64,
    /// The active controller, as far as this node knows.
    pub leader: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    /// For registrations and heartbeats, which must not wait behind a slow change (a
    /// late heartbeat gets the broker fenced); with a timeout well under the session.
    pub sessions: crate::quorum::tcp::TcpTransport,
    /// For everything else; with a timeout longer than [`REQUEST_TIMEOUT`], so that the
    /// controller's own answer arrives first.
    pub changes: crate::quorum::tcp::TcpTransport,
}

/// Asks, and takes the reply of the request's kind; NOT_CONTROLLER for a reply of another
/// kind (which a well-behaved controller never sends).
macro_rules! expect_reply {
    ($self:ident, $request:expr, $variant:ident) => {{
        match $self.ask($request).await {
            Reply::$variant(reply) => reply,
            _ => NotController::not_controller(),
        }
    }};
}

impl ControllerHandle {
    /// The same controller task without forwarding: what the controller listener uses,
    /// so that a request never travels on from the node it was sent to.
    pub fn local(&self) -> ControllerHandle {
        ControllerHandle {
            commands: self.commands.clone(),
            forwarder: None,
        }
    }

    /// Forwards requests to the active controller when it is on another node.
    pub fn with_forwarder(self, forwarder: Forwarder) -> ControllerHandle {
        ControllerHandle {
            forwarder: Some(Arc::new(forwarder)),
            ..self
        }
    }

    /// Sends a request to the active controller and waits for its answer; NOT_CONTROLLER
    /// when there is none, it cannot be reached, or it lost leadership on the way.
    pub async fn ask(&self, request: Request) -> Reply {
        if let Some(forwarder) = &self.forwarder {
            match (forwarder.leader)() {
                Some(leader) if leader != forwarder.me => {
                    let transport = match request {
                        Request::Register(_) | Request::Heartbeat(_) => &forwarder.sessions,
                        _ => &forwarder.changes,
                    };
                    return match transport.ask(leader, &request).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            tracing::debug!(leader, error = %e, "active controller unreachable");
                            if e.timed_out {
                                request.timed_out()
                            } else {
                                request.not_controller()
                            }
                        }
                    };
                }
                _ => {}
            }
        }
        let (tx, rx) = oneshot::channel();
        let refused = request.not_controller();
        let timed_out = request.timed_out();
        if self.commands.send((request, tx)).await.is_err() {
            return refused;
        }
        // A leader cut off from the other voters cannot commit: the request waits for a
        // majority that may never come.
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(answer) => answer.unwrap_or(refused),
            Err(_) => timed_out,
        }
    }

    pub async fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> BrokerRegistrationResponse {
        expect_reply!(self, Request::Register(request), Register)
    }

    pub async fn heartbeat(&self, request: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
        expect_reply!(self, Request::Heartbeat(request), Heartbeat)
    }

    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
        version: i16,
    ) -> AlterPartitionResponse {
        expect_reply!(
            self,
            Request::AlterPartition(request, version),
            AlterPartition
        )
    }

    pub async fn elect_leaders(&self, request: ElectLeadersRequest) -> ElectLeadersResponse {
        expect_reply!(self, Request::ElectLeaders(request), ElectLeaders)
    }

    pub async fn alter_partition_reassignments(
        &self,
        request: AlterPartitionReassignmentsRequest,
    ) -> AlterPartitionReassignmentsResponse {
        expect_reply!(
            self,
            Request::AlterPartitionReassignments(request),
            AlterPartitionReassignments
        )
    }

    pub async fn unregister_broker(&self, broker_id: i32) -> UnregisterBrokerResponse {
        expect_reply!(self, Request::Unregister(broker_id), Unregister)
    }

    /// Carries out an administrative change; the offset of the metadata entry that holds
    /// it (or of the newest one, when nothing had to change).
    pub async fn change(&self, change: AdminChange) -> Result<i64, Refusal> {
        expect_reply!(self, Request::Admin(change), Admin)
    }

    /// The next block of producer IDs for the broker with this registration.
    pub async fn allocate_producer_ids(
        &self,
        broker_id: i32,
        broker_epoch: i64,
    ) -> Result<Range<i64>, ErrorCode> {
        expect_reply!(
            self,
            Request::AllocateProducerIds(broker_id, broker_epoch),
            AllocateProducerIds
        )
    }
}

/// How long a request waits for the controller task's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the task looks for lapsed sessions and leadership changes when idle.
const TICK: Duration = Duration::from_millis(100);
/// How long a new leader waits to apply what earlier leaders committed before it tries
/// again.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the controller task of a node whose metadata log is `log`. It runs until every
/// handle is dropped.
pub fn spawn<L: MetadataLog + 'static>(log: Arc<L>, config: ControllerConfig) -> ControllerHandle {
    let (commands, rx) = mpsc::channel(256);
    tokio::spawn(run(log, config, rx));
    ControllerHandle {
        commands,
        forwarder: None,
    }
}

struct Active {
    term: u64,
    controller: Controller,
}

async fn run<L: MetadataLog>(
    log: Arc<L>,
    config: ControllerConfig,
    mut rx: mpsc::Receiver<Command>,
) {
    let start = Instant::now();
    let now_ms = move || start.elapsed().as_millis() as i64;
    let mut active: Option<Active> = None;
    let mut last_tick = Instant::now();
    loop {
        let command = match tokio::time::timeout(TICK, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(command)) => Some(command),
            Err(_) => None,
        };
        // Leadership first: a new term starts a fresh controller once caught up.
        match log.leader_term() {
            None => active = None,
            Some(term) if active.as_ref().is_some_and(|a| a.term == term) => {}
            Some(term) => {
                active = None;
                // A barrier can wait on an entry a lost leadership never commits.
                let caught_up = tokio::time::timeout(BARRIER_TIMEOUT, log.barrier()).await;
                if matches!(caught_up, Ok(Ok(_))) {
                    let mut controller = Controller::new(config.clone());
                    let (published, at) = head(log.as_ref(), now_ms());
                    controller.activate(&published.image, at);
                    tracing::info!(term, offset = published.offset, "active controller");
                    active = Some(Active { term, controller });
                }
            }
        }
        let Some(current) = active.as_mut() else {
            if let Some(command) = command {
                refuse(command);
            }
            continue;
        };
        let mut lost = false;
        if let Some(command) = command {
            lost = serve(log.as_ref(), &mut current.controller, command, now_ms()).await;
        }
        // Sessions are checked at least every tick, however busy the task is.
        if !lost && last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            lost = tick(log.as_ref(), &mut current.controller, now_ms()).await;
        }
        if lost {
            active = None;
        }
    }
}

/// The image as committed so far, and the moment of a decision on it: now, with its
/// records going into the next entry.
fn head<L: MetadataLog>(log: &L, now_ms: i64) -> (Published, At) {
    let published = log.published().borrow().clone();
    let at = At {
        now_ms,
        next_offset: published.offset + 1,
    };
    (published, at)
}

fn refuse((request, tx): Command) {
    // A requester that went away needs no answer.
    let _ = tx.send(request.not_controller());
}

/// Commits `records` (if any) and returns the offset of their entry (of the newest entry
/// when there are none). `None` when they could not be committed: this node no longer
/// leads, and the decision is void.
async fn commit<L: MetadataLog>(
    log: &L,
    controller: &mut Controller,
    records: Vec<MetadataRecord>,
    at: At,
) -> Option<i64> {
    if records.is_empty() {
        return Some(at.next_offset - 1);
    }
    match log.commit(records).await {
        Ok(offset) => {
            if offset != at.next_offset {
                // Something else was written in between: make every broker catch up with
                // the log as it is now rather than trust offsets promised before.
                tracing::warn!(
                    offset,
                    expected = at.next_offset,
                    "metadata entry at an unexpected offset"
                );
                let (published, now) = head(log, at.now_ms);
                controller.activate(&published.image, now);
            }
            Some(offset)
        }
        Err(QuorumError::NotLeader { .. }) | Err(QuorumError::Unavailable(_)) => None,
        Err(e @ QuorumError::Storage(_)) => {
            tracing::error!(error = %e, "metadata commit failed");
            None
        }
    }
}

/// Runs one request. Returns true when leadership was lost on the way.
async fn serve<L: MetadataLog>(
    log: &L,
    controller: &mut Controller,
    command: Command,
    now_ms: i64,
) -> bool {
    let (published, at) = head(log, now_ms);
    let image = published.image.as_ref();
    let (request, tx) = command;
    macro_rules! decide {
        ($outcome:expr, $variant:ident) => {{
            let Outcome { records, reply } = $outcome;
            if commit(log, controller, records, at).await.is_some() {
                let _ = tx.send(Reply::$variant(reply));
                false
            } else {
                true
            }
        }};
    }
    match request {
        Request::Register(request) => {
            decide!(controller.register_broker(image, &request, at), Register)
        }
        Request::Heartbeat(request) => {
            decide!(controller.heartbeat(image, &request, at), Heartbeat)
        }
        Request::AlterPartition(request, version) => decide!(
            controller.alter_partition(image, &request, version),
            AlterPartition
        ),
        Request::ElectLeaders(request) => {
            decide!(controller.elect_leaders(image, &request), ElectLeaders)
        }
        Request::AlterPartitionReassignments(request) => decide!(
            controller.alter_partition_reassignments(image, &request),
            AlterPartitionReassignments
        ),
        Request::Unregister(broker_id) => {
            decide!(controller.unregister_broker(image, broker_id), Unregister)
        }
        Request::AllocateProducerIds(broker_id, broker_epoch) => decide!(
            controller.allocate_producer_ids(image, broker_id, broker_epoch),
            AllocateProducerIds
        ),
        Request::Admin(change) => {
            let decided = match &change {
                AdminChange::CreateTopic(topic) => controller.create_topic(
                    image,
                    &NewTopic {
                        name: &topic.name,
                        partitions: topic.partitions,
                        replication_factor: topic.replication_factor,
                        assignments: &topic.assignments,
                        configs: &topic.configs,
                    },
                ),
                AdminChange::DeleteTopic(name) => controller.delete_topic(image, name),
                AdminChange::CreatePartitions {
                    name,
                    count,
                    assignments,
                } => controller.create_partitions(image, name, *count, assignments),
                AdminChange::AlterConfigs {
                    resource_type,
                    name,
                    configs,
                } => controller.alter_configs(image, *resource_type, name, configs),
                AdminChange::AlterScramCredentials {
                    upsertions,
                    deletions,
                } => Ok(controller.alter_scram_credentials(image, upsertions, deletions)),
                AdminChange::AlterAcls {
                    creations,
                    deletions,
                } => Ok(controller.alter_acls(image, creations, deletions)),
                AdminChange::AlterClientQuotas(changes) => {
                    Ok(controller.alter_client_quotas(image, changes))
                }
            };
            match decided {
                Ok(records) => match commit(log, controller, records, at).await {
                    Some(offset) => {
                        let _ = tx.send(Reply::Admin(Ok(offset)));
                        false
                    }
                    None => true,
                },
                Err(refusal) => {
                    let _ = tx.send(Reply::Admin(Err(refusal)));
                    false
                }
            }
        }
    }
}

/// Fences the brokers whose sessions lapsed, one commit per broker.
async fn tick<L: MetadataLog>(log: &L, controller: &mut Controller, now_ms: i64) -> bool {
    loop {
        let (published, at) = head(log, now_ms);
        let records = controller.tick(&published.image, at);
        if records.is_empty() {
            return false;
        }
        if commit(log, controller, records, at).await.is_none() {
            return true;
        }
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
