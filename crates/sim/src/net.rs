//! Spool's network seam over turmoil's simulated TCP: host names resolve to simulated
//! hosts, and cuts and delay apply to every connection. Message loss is simulated
//! as TCP sees it: a segment lost for good ends the connection, so [`Breaks`] fails
//! connections at seeded random writes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use spool_metadata::net::{BoxStream, Listener, Network, Pending};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Rng;

/// Seeded connection failures, shared by every host of a run: each write fails the
/// connection with probability `1/one_in` while enabled.
#[derive(Clone)]
pub struct Breaks {
    rng: Arc<Mutex<Rng>>,
    one_in: u64,
    enabled: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
}

impl Breaks {
    /// `one_in` 0: no failures.
    pub(crate) fn new(seed: u64, one_in: u64) -> Breaks {
        Breaks {
            rng: Arc::new(Mutex::new(Rng::new(seed ^ 0x6E65_7477_6F72_6B21))),
            one_in,
            enabled: Arc::new(AtomicBool::new(one_in > 0)),
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Stops failing connections (the run settles).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// How many connections were failed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn roll(&self) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let hit = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .one_in(self.one_in);
        if hit {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn wrap(&self, stream: BoxStream) -> BoxStream {
        Box::new(Breakable {
            inner: Some(stream),
            breaks: self.clone(),
        })
    }
}

/// A connection that [`Breaks`] may fail: the stream is dropped (the peer reads the end
/// of the connection) and every later call errs.
struct Breakable {
    inner: Option<BoxStream>,
    breaks: Breaks,
}

fn broken<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the simulated link lost a segment",
    )))
}

impl AsyncRead for Breakable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_read(cx, buf),
            None => broken(),
        }
    }
}

impl AsyncWrite for Breakable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.inner.is_some() && self.breaks.roll() {
            self.inner = None;
        }
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => broken(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => broken(),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Connections between simulated hosts.
pub struct SimNet(pub Breaks);

impl Network for SimNet {
    fn connect<'a>(&'a self, address: &'a str) -> Pending<'a, BoxStream> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            Ok(self.0.wrap(Box::new(stream)))
        })
    }
}

/// A listener on a simulated host.
pub struct SimListener(pub turmoil::net::TcpListener, pub Breaks);

impl Listener for SimListener {
    fn accept(&self) -> Pending<'_, (BoxStream, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((self.1.wrap(Box::new(stream)), peer))
        })
    }
}
