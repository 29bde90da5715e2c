//! Spool's broker: it serves the Kafka protocol over TCP on top of the partition logs.
//!
//! [`state::BrokerState`] holds the settings, this node's place in the metadata quorum
//! ([`node`]) and the partition logs; [`server::serve`] runs the listener, one task per
//! connection; [`api`] has one module per Kafka API. The binary (`spool server`) wires them
//! to the command line.

pub mod acl;
pub mod admin_api;
pub mod api;
pub mod auth;
pub mod config;
pub mod coordinator_log;
pub mod fetch_session;
pub mod flusher;
pub mod group;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod quota;
pub mod read_replica;
pub mod replica;
pub mod replica_fetcher;
pub mod secure_net;
pub mod server;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod topic_configs;
pub mod txn;
pub mod wakeups;

/// The metadata records and image, under the name the broker's modules use.
pub use spool_metadata as metadata;

pub use config::{BrokerConfig, ConfigError};
pub use state::{BrokerError, BrokerState};
