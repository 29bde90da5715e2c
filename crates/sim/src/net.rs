//! Spool's network seam over turmoil's simulated TCP: host names resolve to simulated
//! hosts, and partitions, loss and delay apply to every connection.

use std::net::SocketAddr;

use spool_metadata::net::{BoxStream, Listener, Network, Pending};

/// Connections between simulated hosts.
pub struct SimNet;

impl Network for SimNet {
    fn connect<'a>(&'a self, address: &'a str) -> Pending<'a, BoxStream> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// A listener on a simulated host.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&self) -> Pending<'_, (BoxStream, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxStream, peer))
        })
    }
}
