//! This node's place in the cluster: its voter of the metadata quorum, its controller task,
//! and its broker's life as the controller sees it.
//!
//! - At start the node opens its quorum log and forms (or rejoins) the quorum of
//!   `controller.quorum.voters`; a node configured alone is a quorum of one.
//! - A data directory written before the quorum existed holds plain metadata records in
//!   `__cluster_metadata-0`; they are set aside at start and committed again as the first
//!   entry of the new quorum log (see [`set_aside_legacy_log`] and [`migrate_legacy_log`]).
//! - The broker registers with the active controller, heartbeats every
//!   `broker.heartbeat.interval.ms`, and serves clients once the controller has unfenced
//!   it. It leaves by controlled shutdown: the controller moves its leadership away first.
//! - Every committed image is applied to the broker by [`run_publisher`]: partition logs
//!   are opened, reconfigured and removed as the image says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use spool_log::{LogError, PartitionLog, Storage};
use spool_metadata::controller::ControllerConfig;
use spool_metadata::net::{self, Network};
use spool_metadata::quorum::local::Alone;
use spool_metadata::quorum::store::QUORUM_STATE_FILE;
use spool_metadata::quorum::tcp::{self, TcpTransport};
use spool_metadata::quorum::{MetadataLog, QuorumNode, QuorumSettings};
use spool_metadata::service::{self, ControllerHandle, Forwarder};
use spool_metadata::{METADATA_TOPIC, MetadataStore, random_uuid};
use spool_protocol::messages::broker_registration_request::Listener;
use spool_protocol::messages::{BrokerHeartbeatRequest, BrokerRegistrationRequest};
use spool_protocol::{ErrorCode, Uuid};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::BrokerConfig;
use crate::state::{BrokerError, BrokerState, blocking, now_ms, when_unique};

/// Where a metadata log from before the quorum is kept until it has been migrated. Not a
/// partition folder name, so the log manager leaves it alone.
pub const LEGACY_METADATA_DIR: &str = "__cluster_metadata-legacy";

/// How long a node alone in its quorum may take to register and be unfenced before
/// start-up fails. A node of a cluster waits as long as the quorum takes to form (its
/// other voters may not have started yet), saying so every [`WAITING_NOTICE`].
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const WAITING_NOTICE: Duration = Duration::from_secs(10);
/// How long a broker in controlled shutdown waits for the controller's permission.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for the controller task to let go of the quorum.
const QUORUM_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Between tries while joining or leaving.
const RETRY: Duration = Duration::from_millis(50);

/// The quorum voter and controller of this node, and the broker's registration.
pub struct Node {
    pub quorum: Arc<QuorumNode>,
    pub controller: ControllerHandle,
    /// This process's incarnation of the broker.
    pub incarnation: Uuid,
    broker_epoch: AtomicI64,
    /// Set once controlled shutdown begins: heartbeats stop asking to be unfenced.
    leaving: AtomicBool,
    /// Stops the controller listener, and the listener's task.
    listener: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Node {
    /// Opens the quorum log in the data directory and joins the quorum of
    /// `controller.quorum.voters` (alone when there are none). `listener` is the bound
    /// controller listener, which serves the other voters and their brokers; the other
    /// voters are reached over `net`.
    pub async fn start(
        config: &BrokerConfig,
        storage: Arc<dyn Storage>,
        listener: Option<Box<dyn net::Listener>>,
        net: &Arc<dyn Network>,
    ) -> Result<Node, BrokerError> {
        let id = node_id(config)?;
        let settings = QuorumSettings {
            election_timeout_ms: config.controller_quorum_election_timeout_ms,
            snapshot_bytes: config.metadata_log_max_record_bytes_between_snapshots,
            snapshot_interval_ms: config.metadata_log_max_snapshot_interval_ms,
            segment_bytes: config.metadata_log_segment_bytes,
            retention_bytes: config.metadata_max_retention_bytes,
            retention_ms: config.metadata_max_retention_ms,
            ..QuorumSettings::default()
        };
        let dir = metadata_dir(&config.data_dir);
        let voters: BTreeMap<u64, String> = config
            .controller_quorum_voters
            .iter()
            .filter_map(|v| Some((u64::try_from(v.id).ok()?, v.address())))
            .collect();
        let quorum = if voters.is_empty() {
            let alone = BTreeMap::from([(id, String::new())]);
            QuorumNode::start(
                id,
                &alone,
                &settings,
                Arc::clone(&storage),
                &dir,
                Alone,
                now_ms,
            )
            .await?
        } else {
            // Raft messages wait at most an election timeout for their answer.
            let timeout = Duration::from_millis(settings.election_timeout_ms.max(500));
            let transport = TcpTransport::new(&voters, timeout, Arc::clone(net));
            QuorumNode::start(
                id,
                &voters,
                &settings,
                Arc::clone(&storage),
                &dir,
                transport,
                now_ms,
            )
            .await?
        };
        quorum.bootstrap().await?;
        let quorum = Arc::new(quorum);
        let incarnation = random_uuid();
        let mut controller = service::spawn(
            Arc::clone(&quorum),
            ControllerConfig {
                cluster_id: config.cluster_id.clone(),
                session_timeout_ms: config.broker_session_timeout_ms,
                default_replication_factor: config.default_replication_factor,
                local_broker: Some((config.node_id, incarnation)),
                ..ControllerConfig::default()
            },
        );
        let listener = listener.map(|socket| {
            let (stop, stopped) = watch::channel(false);
            let serving = tokio::spawn(tcp::serve(
                quorum.raft().clone(),
                Some(controller.local()),
                socket,
                stopped,
            ));
            (stop, serving)
        });
        if !voters.is_empty() {
            let raft = quorum.raft().clone();
            let sessions = Duration::from_millis(
                u64::try_from(config.broker_session_timeout_ms / 3).unwrap_or(1000),
            );
            controller = controller.with_forwarder(Forwarder {
                me: id,
                leader: Box::new(move || raft.metrics().borrow().current_leader),
                sessions: TcpTransport::new(&voters, sessions.max(RETRY), Arc::clone(net)),
                changes: TcpTransport::new(
                    &voters,
                    service::REQUEST_TIMEOUT + Duration::from_secs(5),
                    Arc::clone(net),
                ),
            });
        }
        let node = Node {
            quorum,
            controller,
            incarnation,
            broker_epoch: AtomicI64::new(-1),
            leaving: AtomicBool::new(false),
            listener,
        };
        migrate_legacy_log(&node.quorum, storage, &config.data_dir).await?;
        Ok(node)
    }

    /// Whether the broker has begun its controlled shutdown.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// The epoch the controller gave this broker's registration (-1 before it has one).
    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    /// Stops the quorum voter once nothing else holds it (the controller task lets go
    /// when its handle is dropped).
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        let Node {
            quorum,
            controller,
            listener,
            ..
        } = self;
        if let Some((stop, serving)) = listener {
            let _ = stop.send(true);
            let _ = serving.await;
        }
        drop(controller);
        match when_unique(quorum, QUORUM_RELEASE_TIMEOUT).await {
            Ok(node) => Ok(node.shutdown().await?),
            Err(_) => {
                tracing::warn!(
                    "the metadata quorum is still in use; stopping without closing its log"
                );
                Ok(())
            }
        }
    }
}

fn node_id(config: &BrokerConfig) -> Result<u64, BrokerError> {
    u64::try_from(config.node_id).map_err(|_| {
        BrokerError::Cluster(format!("node.id must be 0 or more, not {}", config.node_id))
    })
}

fn metadata_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(format!("{METADATA_TOPIC}-0"))
}

/// Takes the metadata log out of the logs found at start. A log of plain metadata records
/// (written before the quorum: records but no quorum state) is moved to
/// [`LEGACY_METADATA_DIR`] for [`migrate_legacy_log`]; a quorum log is closed so that the
/// quorum can open it. Blocking.
pub fn set_aside_legacy_log(
    storage: &Arc<dyn Storage>,
    data_dir: &Path,
    log: Option<PartitionLog>,
) -> Result<(), BrokerError> {
    let Some(log) = log else {
        return Ok(());
    };
    let dir = metadata_dir(data_dir);
    let legacy = log.log_end_offset() > 0 && !storage.exists(&dir.join(QUORUM_STATE_FILE));
    log.close()?;
    if legacy {
        let aside = data_dir.join(LEGACY_METADATA_DIR);
        if storage.exists(&aside) {
            return Err(BrokerError::Cluster(format!(
                "both {} and {} hold metadata from before the quorum; keep one",
                dir.display(),
                aside.display()
            )));
        }
        storage.rename(&dir, &aside).map_err(LogError::from)?;
        storage.sync_dir(data_dir).map_err(LogError::from)?;
        tracing::info!("metadata log from before the quorum set aside for migration");
    }
    Ok(())
}

/// Commits the records of a metadata log set aside by [`set_aside_legacy_log`] as one
/// entry of the quorum log, if the quorum holds nothing yet, then removes the old log.
/// Safe to repeat after a crash at any point.
async fn migrate_legacy_log(
    quorum: &QuorumNode,
    storage: Arc<dyn Storage>,
    data_dir: &Path,
) -> Result<(), BrokerError> {
    let aside = data_dir.join(LEGACY_METADATA_DIR);
    if !storage.exists(&aside) {
        return Ok(());
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while quorum.leader_term().is_none() {
        if Instant::now() > deadline {
            return Err(BrokerError::Cluster(
                "cannot migrate the old metadata log: this node did not become the active \
                 controller (migrate with the node alone in its quorum)"
                    .into(),
            ));
        }
        tokio::time::sleep(RETRY).await;
    }
    quorum.barrier().await?;
    let reading = Arc::clone(&storage);
    let dir = aside.clone();
    let image = blocking(move || {
        let (log, _) = PartitionLog::open(reading, &dir, Default::default(), now_ms())?;
        let store = MetadataStore::replay(log)?;
        let image = store.image().clone();
        store.close()?;
        Ok(image)
    })
    .await?;
    let records = image.to_records();
    if quorum.published().borrow().image.to_records().is_empty() && !records.is_empty() {
        let count = records.len();
        let offset = quorum.commit(records).await?;
        tracing::info!(
            records = count,
            offset,
            "metadata migrated into the quorum log"
        );
    }
    let data_dir = data_dir.to_path_buf();
    blocking(move || {
        spool_log::storage::remove_dir_with_files(storage.as_ref(), &aside)
            .and_then(|()| storage.sync_dir(&data_dir))
            .map_err(|e| BrokerError::Log(e.into()))
    })
    .await
}

/// Applies every image the quorum publishes to the broker, in order, until the quorum
/// stops or the broker is gone.
pub async fn run_publisher(state: Weak<BrokerState>) {
    let Some(mut published) = state.upgrade().map(|s| s.node.quorum.published()) else {
        return;
    };
    loop {
        let current = published.borrow_and_update().clone();
        let Some(broker) = state.upgrade() else {
            return;
        };
        if current.offset > broker.applied_offset() {
            let applying = Arc::clone(&broker);
            let image = Arc::clone(&current.image);
            if let Err(e) = blocking(move || applying.apply_image(image, now_ms())).await {
                tracing::error!(offset = current.offset, error = %e, "applying metadata failed");
            }
            crate::replica_fetcher::ensure_fetchers(&broker);
            broker.set_applied(current.offset);
        }
        drop(broker);
        if published.changed().await.is_err() {
            return;
        }
    }
}

fn registration(state: &BrokerState) -> BrokerRegistrationRequest {
    BrokerRegistrationRequest {
        broker_id: state.config.node_id,
        cluster_id: state.config.cluster_id.clone(),
        incarnation_id: state.node.incarnation,
        listeners: state
            .endpoints
            .iter()
            .map(|e| Listener {
                name: e.name.clone(),
                host: e.host.clone(),
                port: e.port,
                security_protocol: state.config.security_protocol_id(&e.name),
                ..Default::default()
            })
            .collect(),
        rack: state.config.broker_rack.clone(),
        previous_broker_epoch: state.node.broker_epoch(),
        ..Default::default()
    }
}

/// Registers the broker with the active controller, retrying (until `deadline`, if any)
/// while there is none or while another incarnation's session is alive.
async fn register(state: &BrokerState, deadline: Option<Instant>) -> Result<(), BrokerError> {
    loop {
        let reply = state
            .node
            .controller
            .register_broker(registration(state))
            .await;
        match ErrorCode::from_wire(reply.error_code) {
            ErrorCode::None => {
                state
                    .node
                    .broker_epoch
                    .store(reply.broker_epoch, Ordering::Release);
                return Ok(());
            }
            ErrorCode::NotController | ErrorCode::DuplicateBrokerRegistration
                if !passed(deadline) =>
            {
                tokio::time::sleep(RETRY).await;
            }
            error => {
                return Err(BrokerError::Cluster(format!(
                    "the controller refused to register broker {}: {error:?}",
                    state.config.node_id
                )));
            }
        }
    }
}

fn heartbeat_request(state: &BrokerState, want_shut_down: bool) -> BrokerHeartbeatRequest {
    BrokerHeartbeatRequest {
        broker_id: state.config.node_id,
        broker_epoch: state.node.broker_epoch(),
        current_metadata_offset: state.applied_offset(),
        want_fence: false,
        want_shut_down,
        ..Default::default()
    }
}

/// Registers and heartbeats until the controller unfences the broker, then waits until
/// the broker has applied the metadata the unfencing committed: after this the broker may
/// serve clients.
pub async fn join(state: &BrokerState) -> Result<(), BrokerError> {
    let voters = state.config.controller_quorum_voters.len();
    let deadline = (voters <= 1).then(|| Instant::now() + JOIN_TIMEOUT);
    tokio::select! {
        joined = join_until(state, deadline) => joined,
        never = waiting_notices(voters) => match never {},
    }
}

/// Says every [`WAITING_NOTICE`] that the broker still waits for the controller; never
/// ends.
async fn waiting_notices(voters: usize) -> std::convert::Infallible {
    let mut waited = Duration::ZERO;
    loop {
        tokio::time::sleep(WAITING_NOTICE).await;
        waited += WAITING_NOTICE;
        tracing::warn!(
            waited_s = waited.as_secs(),
            voters,
            "still waiting to join: the controller quorum needs a majority of its voters"
        );
    }
}

/// Whether `deadline` (none: no limit) has passed.
fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() > d)
}

async fn join_until(state: &BrokerState, deadline: Option<Instant>) -> Result<(), BrokerError> {
    register(state, deadline).await?;
    loop {
        let reply = state
            .node
            .controller
            .heartbeat(heartbeat_request(state, false))
            .await;
        match ErrorCode::from_wire(reply.error_code) {
            ErrorCode::None if !reply.is_fenced => break,
            ErrorCode::None | ErrorCode::NotController => {}
            ErrorCode::StaleBrokerEpoch | ErrorCode::BrokerIdNotRegistered => {
                register(state, deadline).await?
            }
            error => {
                return Err(BrokerError::Cluster(format!(
                    "the controller refused a heartbeat: {error:?}"
                )));
            }
        }
        if passed(deadline) {
            return Err(BrokerError::Cluster(
                "the controller did not unfence this broker in time".into(),
            ));
        }
        tokio::time::sleep(RETRY).await;
    }
    let offset = state.node.quorum.published().borrow().offset;
    state.wait_applied(offset).await
}

/// Heartbeats every `broker.heartbeat.interval.ms` until the broker leaves or is gone;
/// registers again when the controller has forgotten this registration.
pub async fn run_heartbeats(state: Weak<BrokerState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if state.node.leaving.load(Ordering::Acquire) {
            return;
        }
        let reply = state
            .node
            .controller
            .heartbeat(heartbeat_request(&state, false))
            .await;
        match ErrorCode::from_wire(reply.error_code) {
            ErrorCode::None | ErrorCode::NotController => {}
            ErrorCode::StaleBrokerEpoch | ErrorCode::BrokerIdNotRegistered => {
                let deadline = Some(Instant::now() + interval);
                if let Err(e) = register(&state, deadline).await {
                    tracing::warn!(error = %e, "registering again failed");
                }
            }
            error => tracing::warn!(?error, "heartbeat refused"),
        }
    }
}

/// Controlled shutdown: asks the controller to move this broker's leadership away and
/// waits (bounded) until it may stop.
pub async fn leave(state: &BrokerState) {
    state.node.leaving.store(true, Ordering::Release);
    let deadline = Instant::now() + LEAVE_TIMEOUT;
    while Instant::now() < deadline {
        let heartbeat = state
            .node
            .controller
            .heartbeat(heartbeat_request(state, true));
        let Ok(reply) = tokio::time::timeout_at(deadline, heartbeat).await else {
            break;
        };
        if reply.error_code == ErrorCode::None.code() && reply.should_shut_down {
            return;
        }
        if reply.error_code != ErrorCode::None.code()
            && reply.error_code != ErrorCode::NotController.code()
        {
            // Not registered (or no longer): nothing to hand over.
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::warn!("controlled shutdown not confirmed in time; stopping anyway");
}
