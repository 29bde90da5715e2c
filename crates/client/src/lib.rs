//! `spool-client`: an async Kafka client for Spool and any Kafka-compatible broker, built
//! on `spool-protocol`'s message types. It is what Spool's CLI and tools are built on.
//!
//! - [`Client`] knows the cluster: bootstrap brokers, metadata, one connection per broker
//!   (requests pipelined on it, versions negotiated with ApiVersions), secured with TLS
//!   and a SASL login (PLAIN, SCRAM) as [`SecurityProtocol`] says ([`transport`]).
//! - [`Admin`] manages topics, partitions, configs, replica reassignments, offsets,
//!   groups, ACLs, SCRAM users and quotas.
//! - [`Producer`] batches records per partition (linger, batch size, compression), picks
//!   partitions as the Java client does ([`partitioner`]) and, with `acks=all`, is
//!   idempotent: retries are not written twice.
//! - [`Consumer`] reads assigned partitions from an offset, a time, the start or the end,
//!   or subscribes to topics as a member of a consumer group.
//!
//! ```no_run
//! use spool_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
//!
//! # async fn run() -> spool_client::Result<()> {
//! let client = Client::connect(ClientConfig::new("127.0.0.1:9092")).await?;
//! let producer = Producer::new(client, ProducerConfig::default());
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").key("k1")).await?;
//! let written = delivery.wait().await?;
//! println!("partition {} offset {}", written.partition, written.offset);
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod client;
mod connection;
pub mod consumer;
pub mod error;
pub mod groups;
mod membership;
pub mod partitioner;
pub mod producer;
pub mod security;
pub mod transport;

pub use admin::{
    Admin, ConfigChange, ConfigEntry, ConfigResource, NewTopic, OffsetSpec, Reassignment,
};
pub use client::{BrokerInfo, Client, ClientConfig, ClusterMetadata, PartitionInfo, TopicInfo};
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, OffsetReset, TopicPartition,
};
pub use error::{Error, Result};
pub use groups::{GroupDescription, GroupListing, GroupMember, PartitionLag};
pub use producer::{Acks, Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use security::{
    AclBinding, AclFilter, AclOperation, AclPermission, PatternType, QuotaChange, QuotaEntity,
    QuotaMatch, ResourceType, ScramCredential, ScramMechanism,
};
/// The wire protocol's types, for requests this crate has no call for.
pub use spool_protocol as protocol;
pub use spool_protocol::ErrorCode;
pub use spool_protocol::compression::Compression;
pub use transport::{SaslMechanism, SaslSettings, SecurityProtocol, TlsSettings};
