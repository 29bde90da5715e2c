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
use std::sync::Arc;
use std::time::Duration;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{
    AlterPartitionRequest, AlterPartitionResponse, BrokerHeartbeatRequest, BrokerHeartbeatResponse,
    BrokerRegistrationRequest, BrokerRegistrationResponse, ElectLeadersRequest,
    ElectLeadersResponse, UnregisterBrokerResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::MetadataRecord;
use crate::controller::{At, Controller, ControllerConfig, NewTopic, Outcome, Refusal};
use crate::quorum::{MetadataLog, Published, QuorumError};

/// A topic to create, owned so it can travel to the controller task.
#[derive(Debug, Clone)]
pub struct TopicRequest {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub assignments: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

enum Command {
    Register(
        BrokerRegistrationRequest,
        oneshot::Sender<BrokerRegistrationResponse>,
    ),
    Heartbeat(
        BrokerHeartbeatRequest,
        oneshot::Sender<BrokerHeartbeatResponse>,
    ),
    AlterPartition(
        AlterPartitionRequest,
        i16,
        oneshot::Sender<AlterPartitionResponse>,
    ),
    ElectLeaders(ElectLeadersRequest, oneshot::Sender<ElectLeadersResponse>),
    Unregister(i32, oneshot::Sender<UnregisterBrokerResponse>),
    CreateTopic(TopicRequest, oneshot::Sender<Result<(), Refusal>>),
}

/// Sends requests to the node's controller task; cheap to clone.
#[derive(Clone)]
pub struct ControllerHandle {
    commands: mpsc::Sender<Command>,
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
    UnregisterBrokerResponse
);

impl NotController for Result<(), Refusal> {
    fn not_controller() -> Self {
        Err((
            ErrorCode::NotController,
            "This node is not the active controller.".into(),
        ))
    }
}

impl ControllerHandle {
    /// Sends a command and waits for its answer; NOT_CONTROLLER if the task dropped it
    /// (leadership lost on the way) or is gone.
    async fn ask<T: NotController>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(command(tx)).await.is_err() {
            return T::not_controller();
        }
        rx.await.unwrap_or_else(|_| T::not_controller())
    }

    pub async fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> BrokerRegistrationResponse {
        self.ask(|tx| Command::Register(request, tx)).await
    }

    pub async fn heartbeat(&self, request: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
        self.ask(|tx| Command::Heartbeat(request, tx)).await
    }

    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
        version: i16,
    ) -> AlterPartitionResponse {
        self.ask(|tx| Command::AlterPartition(request, version, tx))
            .await
    }

    pub async fn elect_leaders(&self, request: ElectLeadersRequest) -> ElectLeadersResponse {
        self.ask(|tx| Command::ElectLeaders(request, tx)).await
    }

    pub async fn unregister_broker(&self, broker_id: i32) -> UnregisterBrokerResponse {
        self.ask(|tx| Command::Unregister(broker_id, tx)).await
    }

    pub async fn create_topic(&self, topic: TopicRequest) -> Result<(), Refusal> {
        self.ask(|tx| Command::CreateTopic(topic, tx)).await
    }
}

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
    ControllerHandle { commands }
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

fn refuse(command: Command) {
    fn answer<T: NotController>(tx: oneshot::Sender<T>) {
        // A requester that went away needs no answer.
        let _ = tx.send(T::not_controller());
    }
    match command {
        Command::Register(_, tx) => answer(tx),
        Command::Heartbeat(_, tx) => answer(tx),
        Command::AlterPartition(_, _, tx) => answer(tx),
        Command::ElectLeaders(_, tx) => answer(tx),
        Command::Unregister(_, tx) => answer(tx),
        Command::CreateTopic(_, tx) => answer(tx),
    }
}

/// Commits `records` (if any). Returns false when they could not be committed: this node
/// no longer leads, and the decision is void.
async fn commit<L: MetadataLog>(
    log: &L,
    controller: &mut Controller,
    records: Vec<MetadataRecord>,
    at: At,
) -> bool {
    if records.is_empty() {
        return true;
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
            true
        }
        Err(QuorumError::NotLeader { .. }) | Err(QuorumError::Unavailable(_)) => false,
        Err(e @ QuorumError::Storage(_)) => {
            tracing::error!(error = %e, "metadata commit failed");
            false
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
    macro_rules! decide {
        ($outcome:expr, $tx:expr) => {{
            let Outcome { records, reply } = $outcome;
            if commit(log, controller, records, at).await {
                let _ = $tx.send(reply);
                false
            } else {
                true
            }
        }};
    }
    match command {
        Command::Register(request, tx) => {
            decide!(controller.register_broker(image, &request, at), tx)
        }
        Command::Heartbeat(request, tx) => decide!(controller.heartbeat(image, &request, at), tx),
        Command::AlterPartition(request, version, tx) => {
            decide!(controller.alter_partition(image, &request, version), tx)
        }
        Command::ElectLeaders(request, tx) => {
            decide!(controller.elect_leaders(image, &request), tx)
        }
        Command::Unregister(broker_id, tx) => {
            decide!(controller.unregister_broker(image, broker_id), tx)
        }
        Command::CreateTopic(topic, tx) => {
            let decided = controller.create_topic(
                image,
                &NewTopic {
                    name: &topic.name,
                    partitions: topic.partitions,
                    replication_factor: topic.replication_factor,
                    assignments: &topic.assignments,
                    configs: &topic.configs,
                },
            );
            match decided {
                Ok(records) => decide!(
                    Outcome {
                        records,
                        reply: Ok(())
                    },
                    tx
                ),
                Err(refusal) => {
                    let _ = tx.send(Err(refusal));
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
        if !commit(log, controller, records, at).await {
            return true;
        }
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
