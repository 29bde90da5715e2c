//! [`Client`]: the cluster as a client sees it. It knows the bootstrap brokers, keeps the
//! latest metadata (brokers, topics, partition leaders) and one connection per broker,
//! and sends typed requests to a given broker or to any that answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use spool_protocol::Uuid;
use spool_protocol::messages::{MetadataRequest, Request, metadata_request};

use tokio_rustls::TlsConnector;

use crate::connection::{BoxStream, Connection, connect_tcp};
use crate::error::{Error, Result};
use crate::transport::{self, SaslSettings, SecurityProtocol, TlsSettings};

/// How a [`Client`] reaches the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of one or more brokers to learn the cluster from.
    pub bootstrap: Vec<String>,
    /// The client ID brokers see in every request (quotas and logs use it).
    pub client_id: String,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Plain TCP, TLS, a SASL login, or both (`security.protocol`).
    pub security_protocol: SecurityProtocol,
    /// How TLS connections are checked (SSL and SASL_SSL).
    pub tls: TlsSettings,
    /// The login on SASL_PLAINTEXT and SASL_SSL.
    pub sasl: Option<SaslSettings>,
}

impl ClientConfig {
    /// A configuration for the comma-separated `brokers` list with default timeouts.
    pub fn new(brokers: &str) -> ClientConfig {
        ClientConfig {
            bootstrap: brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(String::from)
                .collect(),
            client_id: "spool-client".into(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            security_protocol: SecurityProtocol::Plaintext,
            tls: TlsSettings::default(),
            sasl: None,
        }
    }
}

/// A broker as the metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A partition as the metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// The leader's node ID, -1 when there is none.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
    /// The partition's error code (LEADER_NOT_AVAILABLE, …), 0 when none.
    pub error_code: i16,
}

/// A topic as the metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub topic_id: Uuid,
    pub is_internal: bool,
    /// Partitions in partition order.
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    /// Every partition of the topic, in partition order.
    pub fn topic_partitions(&self) -> Vec<crate::consumer::TopicPartition> {
        self.partitions
            .iter()
            .map(|p| (self.name.clone(), p.partition))
            .collect()
    }
}

/// What the cluster said about itself in its latest metadata answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
}

impl ClusterMetadata {
    /// The leader of `topic`'s `partition`, if the metadata names one that is listed.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<&BrokerInfo> {
        let info = self
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        self.brokers.get(&info.leader)
    }

    /// How many partitions `topic` has, if it is known.
    pub fn partition_count(&self, topic: &str) -> Option<usize> {
        self.topics.get(topic).map(|t| t.partitions.len())
    }
}

/// A handle on the cluster; cheap to clone, shared by admin, producer and consumer.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    metadata: RwLock<Arc<ClusterMetadata>>,
    /// One connection per broker address.
    connections: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
    /// Wraps each connection in TLS (SSL and SASL_SSL).
    tls: Option<TlsConnector>,
}

impl Client {
    /// Connects to the cluster: asks the bootstrap brokers, in turn, for the list of
    /// brokers.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        if config.bootstrap.is_empty() {
            return Err(Error::Invalid("no brokers to connect to".into()));
        }
        if config.security_protocol.uses_sasl() && config.sasl.is_none() {
            return Err(Error::Invalid(
                "a SASL security protocol needs a mechanism, a user name and a password".into(),
            ));
        }
        let tls = if config.security_protocol.uses_tls() {
            Some(transport::tls_connector(&config.tls)?)
        } else {
            None
        };
        let client = Client {
            inner: Arc::new(Inner {
                config,
                metadata: RwLock::new(Arc::new(ClusterMetadata::default())),
                connections: tokio::sync::Mutex::new(HashMap::new()),
                tls,
            }),
        };
        client.refresh_metadata(Some(&[])).await?;
        Ok(client)
    }

    /// A client with this one's configuration and metadata but connections of its own.
    /// A broker answers one connection's requests in order, so a request it holds (a
    /// JoinGroup waiting out a rebalance) delays everything sent after it on that
    /// connection; a group member keeps its requests off everyone else's this way.
    pub fn with_own_connections(&self) -> Client {
        Client {
            inner: Arc::new(Inner {
                config: self.inner.config.clone(),
                metadata: RwLock::new(self.metadata()),
                connections: tokio::sync::Mutex::new(HashMap::new()),
                tls: self.inner.tls.clone(),
            }),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The latest metadata.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        Arc::clone(
            &self
                .inner
                .metadata
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Asks the cluster for fresh metadata about `topics` (all topics when `None`) and
    /// returns it. Topics not asked about keep what was known of them.
    pub async fn refresh_metadata(
        &self,
        topics: Option<&[String]>,
    ) -> Result<Arc<ClusterMetadata>> {
        self.refresh_metadata_creating(topics, false).await
    }

    /// Like [`Client::refresh_metadata`], letting brokers with `auto.create.topics.enable`
    /// create the topics named (as producers ask).
    pub async fn refresh_metadata_creating(
        &self,
        topics: Option<&[String]>,
        allow_auto_topic_creation: bool,
    ) -> Result<Arc<ClusterMetadata>> {
        let request = MetadataRequest {
            topics: topics.map(|names| {
                names
                    .iter()
                    .map(|name| metadata_request::MetadataRequestTopic {
                        name: Some(name.clone()),
                        ..Default::default()
                    })
                    .collect()
            }),
            allow_auto_topic_creation,
            ..Default::default()
        };
        let response = self.send_any(request).await?;
        let brokers = response
            .brokers
            .iter()
            .map(|b| {
                let info = BrokerInfo {
                    node_id: b.node_id,
                    host: b.host.clone(),
                    port: u16::try_from(b.port).unwrap_or(0),
                    rack: b.rack.clone(),
                };
                (b.node_id, info)
            })
            .collect();
        let mut fresh = BTreeMap::new();
        for topic in &response.topics {
            let Some(name) = topic.name.clone() else {
                continue;
            };
            if topic.error_code != 0 {
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.clone(),
                    isr: p.isr_nodes.clone(),
                    offline_replicas: p.offline_replicas.clone(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let info = TopicInfo {
                name: name.clone(),
                topic_id: topic.topic_id,
                is_internal: topic.is_internal,
                partitions,
            };
            fresh.insert(name, info);
        }
        let mut metadata = self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = ClusterMetadata {
            cluster_id: response.cluster_id.clone(),
            controller_id: response.controller_id,
            brokers,
            topics: match topics {
                None => BTreeMap::new(),
                Some(_) => metadata.topics.clone(),
            },
        };
        if let Some(asked) = topics {
            for name in asked {
                next.topics.remove(name);
            }
        }
        next.topics.extend(fresh);
        *metadata = Arc::new(next);
        Ok(Arc::clone(&metadata))
    }

    /// Metadata for `topic`, asking the cluster when it is not known yet. An unknown topic
    /// is UNKNOWN_TOPIC_OR_PARTITION.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo> {
        if let Some(info) = self.metadata().topics.get(topic) {
            return Ok(info.clone());
        }
        let metadata = self.refresh_metadata(Some(&[topic.to_string()])).await?;
        metadata
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| unknown_topic(topic))
    }

    /// Sends `request` to the broker with node ID `node_id`.
    pub async fn send_to<R: Request>(&self, node_id: i32, request: R) -> Result<R::Response> {
        self.send_to_capped(node_id, request, None).await
    }

    /// Sends `request` to `node_id` at a version no higher than `max_version`.
    pub(crate) async fn send_to_capped<R: Request>(
        &self,
        node_id: i32,
        request: R,
        max_version: Option<i16>,
    ) -> Result<R::Response> {
        let connection = self.connection_to(node_id).await?;
        let answered = connection.send(request, max_version).await;
        self.forget_if_broken(&connection).await;
        answered.map(|(response, _)| response)
    }

    /// Sends `request` to `node_id` and waits up to `wait` for the answer, however long
    /// the request timeout is.
    pub(crate) async fn send_to_waiting<R: Request>(
        &self,
        node_id: i32,
        request: R,
        wait: Duration,
    ) -> Result<R::Response> {
        let connection = self.connection_to(node_id).await?;
        let answered = connection.send_waiting(request, None, wait).await;
        self.forget_if_broken(&connection).await;
        answered.map(|(response, _)| response)
    }

    /// Writes `request` to `node_id` and returns, once written, a future of its answer;
    /// requests written in turn to one broker are handled by it in that order.
    pub(crate) async fn send_ordered<R: Request>(
        &self,
        node_id: i32,
        request: R,
        max_version: Option<i16>,
    ) -> Result<impl Future<Output = Result<R::Response>> + Send + 'static> {
        let connection = self.connection_to(node_id).await?;
        let written = Arc::clone(&connection)
            .send_ordered(request, max_version)
            .await;
        self.forget_if_broken(&connection).await;
        written
    }

    /// Sends a request the broker does not answer (Produce with acks=0) to `node_id`.
    pub(crate) async fn send_unanswered<R: Request>(
        &self,
        node_id: i32,
        request: R,
        max_version: Option<i16>,
    ) -> Result<()> {
        let connection = self.connection_to(node_id).await?;
        let sent = connection.send_unanswered(request, max_version).await;
        self.forget_if_broken(&connection).await;
        sent
    }

    /// Sends `request` to the first broker that answers: known brokers first, then the
    /// bootstrap list.
    pub async fn send_any<R: Request + Clone>(&self, request: R) -> Result<R::Response> {
        let mut addresses: Vec<String> = self
            .metadata()
            .brokers
            .values()
            .map(BrokerInfo::address)
            .collect();
        for address in &self.inner.config.bootstrap {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        }
        let mut last = None;
        for address in addresses {
            match self.connection(&address, None).await {
                Ok(connection) => {
                    let answered = connection.send(request.clone(), None).await;
                    self.forget_if_broken(&connection).await;
                    match answered {
                        Ok((response, _)) => return Ok(response),
                        Err(e) if e.is_retriable() => last = Some(e),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("no brokers to connect to".into())))
    }

    async fn connection_to(&self, node_id: i32) -> Result<Arc<Connection>> {
        let broker = match self.metadata().brokers.get(&node_id) {
            Some(broker) => broker.clone(),
            None => {
                let metadata = self.refresh_metadata(Some(&[])).await?;
                metadata.brokers.get(&node_id).cloned().ok_or_else(|| {
                    Error::Invalid(format!("broker {node_id} is not in the cluster's metadata"))
                })?
            }
        };
        self.connection(&broker.address(), Some(node_id)).await
    }

    /// The open connection to `address`, or a new one.
    async fn connection(&self, address: &str, node_id: Option<i32>) -> Result<Arc<Connection>> {
        let mut connections = self.inner.connections.lock().await;
        if let Some(open) = connections.get(address)
            && !open.is_broken()
        {
            return Ok(Arc::clone(open));
        }
        let config = &self.inner.config;
        let name = match node_id {
            Some(id) => format!("{id} ({address})"),
            None => address.to_string(),
        };
        let tcp = connect_tcp(address, config.connect_timeout).await?;
        let stream: BoxStream = match &self.inner.tls {
            Some(connector) => transport::secure(connector, address, tcp).await?,
            None => Box::new(tcp),
        };
        let connection = Connection::start(
            name,
            stream,
            config.client_id.clone(),
            config.request_timeout,
        )
        .await?;
        if let Some(sasl) = config.sasl.as_ref()
            && config.security_protocol.uses_sasl()
        {
            transport::login(&connection, sasl).await?;
        }
        let connection = Arc::new(connection);
        connections.insert(address.to_string(), Arc::clone(&connection));
        Ok(connection)
    }

    async fn forget_if_broken(&self, connection: &Arc<Connection>) {
        if connection.is_broken() {
            let mut connections = self.inner.connections.lock().await;
            connections.retain(|_, open| !Arc::ptr_eq(open, connection));
        }
    }
}

pub(crate) fn unknown_topic(topic: &str) -> Error {
    Error::Kafka {
        code: spool_protocol::ErrorCode::UnknownTopicOrPartition,
        context: format!("topic {topic}"),
        message: None,
    }
}
