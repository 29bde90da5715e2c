//! The network seam: how a node opens connections and accepts them.
//!
//! Every connection Spool makes or accepts (the Kafka listeners, the controller listener,
//! Raft messages between voters, broker-to-broker requests) goes through [`Network`] and
//! [`Listener`]. A server uses [`Tcp`] and tokio's listener; the cluster simulation plugs
//! in a simulated network, so the same code runs over either.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// What connecting or accepting returns, later.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// How a node reaches others.
pub trait Network: Send + Sync {
    /// Opens a connection to `address` (`host:port`), with small writes sent at once.
    fn connect<'a>(&'a self, address: &'a str) -> Pending<'a, BoxStream>;

    /// How long a connection's login lasts at the other end (Kafka's
    /// `connections.max.reauth.ms`), when it does not last for ever: a connection is
    /// opened again before then.
    fn session_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A bound listener.
pub trait Listener: Send + Sync {
    /// The next connection, and the address it came from.
    fn accept(&self) -> Pending<'_, (BoxStream, SocketAddr)>;
}

/// The operating system's TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Network for Tcp {
    fn connect<'a>(&'a self, address: &'a str) -> Pending<'a, BoxStream> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

impl Listener for tokio::net::TcpListener {
    fn accept(&self) -> Pending<'_, (BoxStream, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxStream, peer))
        })
    }
}
