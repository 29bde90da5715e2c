//! One connection to one broker: requests go out as soon as they are asked for and answers
//! are matched to them by correlation ID, so many requests can be in flight at once (a
//! producer keeps several Produce requests outstanding per broker, as Kafka's clients do).
//!
//! Opening a connection asks the broker which versions of each API it speaks
//! (ApiVersions); every later request is sent at the highest version both sides know.
//! A connection that breaks stays broken: every waiting request fails with the reason,
//! and the pool opens a new one for the next request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use spool_protocol::frame::{FrameDecoder, decode_response, encode_request};
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::{ApiKey, ApiVersionsRequest, Request, RequestBody, ResponseBody};
use spool_protocol::{ErrorCode, VersionRange};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The largest answer read from a broker (a fetch response is bounded by the request's
/// `max_bytes`; this is a guard against a garbled size prefix).
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// The byte stream a connection runs over: plain TCP, or TLS around it.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
pub(crate) type BoxStream = Box<dyn Stream>;

type Answer = std::result::Result<ResponseBody, String>;

struct Waiter {
    api_key: ApiKey,
    version: i16,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<i32, Waiter>,
    /// Why the connection broke, once it has.
    broken: Option<String>,
}

impl Pending {
    fn fail_all(&mut self, reason: &str) {
        if self.broken.is_none() {
            self.broken = Some(reason.to_string());
        }
        for (_, waiter) in self.waiting.drain() {
            let _ = waiter.answer.send(Err(reason.to_string()));
        }
    }
}

pub(crate) struct Connection {
    /// How errors name the broker: its address (and node ID when known).
    broker: String,
    client_id: String,
    timeout: Duration,
    writer: tokio::sync::Mutex<WriteHalf<BoxStream>>,
    pending: Arc<Mutex<Pending>>,
    next_correlation: AtomicI32,
    /// The broker's version range per API key.
    versions: HashMap<i16, VersionRange>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens a TCP connection to `address` within `timeout`.
pub(crate) async fn connect_tcp(address: &str, timeout: Duration) -> Result<TcpStream> {
    let failed = |reason: String| Error::Connection {
        broker: address.to_string(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| failed(format!("no connection within {} ms", timeout.as_millis())))?
        .map_err(|e| failed(e.to_string()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| failed(e.to_string()))?;
    Ok(stream)
}

impl Connection {
    /// Starts using `stream` (connected, and secured if it is to be) to the broker named
    /// `broker`, and learns the broker's API versions.
    pub(crate) async fn start(
        broker: String,
        stream: BoxStream,
        client_id: String,
        timeout: Duration,
    ) -> Result<Connection> {
        let (read, write) = tokio::io::split(stream);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = tokio::spawn(read_answers(read, Arc::clone(&pending)));
        let mut connection = Connection {
            broker,
            client_id,
            timeout,
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_correlation: AtomicI32::new(0),
            versions: HashMap::new(),
            reader,
        };
        connection.versions = connection.api_versions().await?;
        Ok(connection)
    }

    /// How errors name the broker.
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    /// Asks for the broker's API versions: at v3 first, and at v0 when the broker does not
    /// know v3 (it then answers in v0's layout, as Kafka's brokers do).
    async fn api_versions(&self) -> Result<HashMap<i16, VersionRange>> {
        let request = ApiVersionsRequest {
            client_software_name: "spool-client".into(),
            client_software_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let mut answer = self.exchange(request.clone().into(), 3, self.timeout).await;
        let retry = match &answer {
            Ok(ResponseBody::ApiVersions(r)) => {
                r.error_code == ErrorCode::UnsupportedVersion as i16
            }
            Ok(_) => false,
            Err(Error::Protocol { .. }) => true,
            Err(_) => false,
        };
        if retry {
            answer = self.exchange(request.into(), 0, self.timeout).await;
        }
        let response = match answer? {
            ResponseBody::ApiVersions(response) => response,
            other => return Err(self.unexpected(ApiKey::ApiVersions, &other)),
        };
        Error::check(
            response.error_code,
            format!("broker {} (ApiVersions)", self.broker),
            None,
        )?;
        Ok(response
            .api_keys
            .iter()
            .map(|k| (k.api_key, VersionRange::new(k.min_version, k.max_version)))
            .collect())
    }

    /// Whether the connection has broken (a new one is needed).
    pub(crate) fn is_broken(&self) -> bool {
        lock(&self.pending).broken.is_some()
    }

    /// The highest version of `api_key` both this client (`ours`) and the broker speak.
    pub(crate) fn version(&self, api_key: ApiKey, ours: VersionRange) -> Result<i16> {
        let unsupported = || Error::Unsupported {
            broker: self.broker.clone(),
            api: api_key.name(),
        };
        let theirs = self
            .versions
            .get(&(api_key as i16))
            .ok_or_else(unsupported)?;
        let max = ours.max.min(theirs.max);
        if max < ours.min.max(theirs.min) {
            return Err(unsupported());
        }
        Ok(max)
    }

    /// Sends `request` at the highest common version, at most `max_version` when given,
    /// and returns the broker's answer.
    pub(crate) async fn send<R: Request>(
        &self,
        request: R,
        max_version: Option<i16>,
    ) -> Result<(R::Response, i16)> {
        self.send_waiting(request, max_version, self.timeout).await
    }

    /// [`Connection::send`] with its own wait for the answer, for requests a broker may
    /// hold longer than the request timeout (JoinGroup waits for a whole rebalance).
    pub(crate) async fn send_waiting<R: Request>(
        &self,
        request: R,
        max_version: Option<i16>,
        wait: Duration,
    ) -> Result<(R::Response, i16)> {
        let version = self.version(R::API_KEY, capped(R::VERSIONS, max_version))?;
        let answer = self.exchange(request.into(), version, wait).await?;
        R::Response::try_from(answer)
            .map(|response| (response, version))
            .map_err(|other| self.unexpected(R::API_KEY, &other))
    }

    /// Sends a request the broker does not answer (Produce with acks=0), at a version no
    /// higher than `max_version` when given.
    pub(crate) async fn send_unanswered<R: Request>(
        &self,
        request: R,
        max_version: Option<i16>,
    ) -> Result<()> {
        let version = self.version(R::API_KEY, capped(R::VERSIONS, max_version))?;
        let (_, frame) = self.frame(request.into(), version)?;
        self.write(&frame).await
    }

    fn unexpected(&self, api_key: ApiKey, other: &ResponseBody) -> Error {
        Error::Protocol {
            broker: self.broker.clone(),
            reason: format!(
                "answered {} with a {} response",
                api_key.name(),
                other.api_key().name()
            ),
        }
    }

    fn frame(&self, body: RequestBody, version: i16) -> Result<(i32, Bytes)> {
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader {
            request_api_key: body.api_key() as i16,
            request_api_version: version,
            correlation_id,
            client_id: Some(self.client_id.clone()),
            unknown_tagged_fields: Vec::new(),
        };
        let frame = encode_request(&header, &body).map_err(|e| Error::Protocol {
            broker: self.broker.clone(),
            reason: format!("cannot encode {} v{version}: {e}", body.api_key().name()),
        })?;
        Ok((correlation_id, frame))
    }

    async fn write(&self, frame: &[u8]) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let written = tokio::time::timeout(self.timeout, async {
            writer.write_all(frame).await?;
            writer.flush().await
        })
        .await;
        let reason = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "could not write a request in time".to_string(),
        };
        lock(&self.pending).fail_all(&reason);
        Err(Error::Connection {
            broker: self.broker.clone(),
            reason,
        })
    }

    /// Writes one request and waits up to `wait` for its answer.
    async fn exchange(
        &self,
        body: RequestBody,
        version: i16,
        wait: Duration,
    ) -> Result<ResponseBody> {
        let api_key = body.api_key();
        let (correlation_id, answered) = self.write_request(body, version).await?;
        self.answer(api_key, correlation_id, answered, wait).await
    }

    /// Writes one request; its answer is to be awaited with [`Connection::answer`].
    /// Requests written one after another on a connection reach the broker, and are
    /// answered, in that order.
    async fn write_request(
        &self,
        body: RequestBody,
        version: i16,
    ) -> Result<(i32, oneshot::Receiver<Answer>)> {
        let api_key = body.api_key();
        let (correlation_id, frame) = self.frame(body, version)?;
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.broken {
                return Err(Error::Connection {
                    broker: self.broker.clone(),
                    reason: reason.clone(),
                });
            }
            pending.waiting.insert(
                correlation_id,
                Waiter {
                    api_key,
                    version,
                    answer,
                },
            );
        }
        self.write(&frame).await?;
        Ok((correlation_id, answered))
    }

    /// Waits for the answer to a request written with [`Connection::write_request`].
    async fn answer(
        &self,
        api_key: ApiKey,
        correlation_id: i32,
        answered: oneshot::Receiver<Answer>,
        wait: Duration,
    ) -> Result<ResponseBody> {
        match tokio::time::timeout(wait, answered).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(reason))) if reason.starts_with(UNDECODABLE) => Err(Error::Protocol {
                broker: self.broker.clone(),
                reason,
            }),
            Ok(Ok(Err(reason))) => Err(Error::Connection {
                broker: self.broker.clone(),
                reason,
            }),
            Ok(Err(_)) => Err(Error::Connection {
                broker: self.broker.clone(),
                reason: "connection closed".into(),
            }),
            Err(_) => {
                // The answer may still come; the reader drops it when nobody waits.
                lock(&self.pending).waiting.remove(&correlation_id);
                Err(Error::Timeout {
                    broker: self.broker.clone(),
                    api: api_key.name(),
                    timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// Writes `request` (as [`Connection::send`] would) and returns, once it is written, a
    /// future of its answer: callers that must keep requests in order write them one
    /// after another and await the answers concurrently.
    pub(crate) async fn send_ordered<R: Request>(
        self: Arc<Self>,
        request: R,
        max_version: Option<i16>,
    ) -> Result<impl Future<Output = Result<R::Response>> + Send + 'static> {
        let version = self.version(R::API_KEY, capped(R::VERSIONS, max_version))?;
        let (correlation_id, answered) = self.write_request(request.into(), version).await?;
        Ok(async move {
            let answer = self
                .answer(R::API_KEY, correlation_id, answered, self.timeout)
                .await?;
            R::Response::try_from(answer).map_err(|other| self.unexpected(R::API_KEY, &other))
        })
    }
}

/// `ours` with its top lowered to `max_version`, when given.
fn capped(mut ours: VersionRange, max_version: Option<i16>) -> VersionRange {
    if let Some(max) = max_version {
        ours.max = ours.max.min(max);
    }
    ours
}

/// The start of the reason given for an answer that could not be decoded (the connection
/// itself stays usable: the frame was cut at its size prefix).
const UNDECODABLE: &str = "cannot decode";

/// Reads frames until the connection ends, handing each answer to its waiter.
async fn read_answers(mut read: ReadHalf<BoxStream>, pending: Arc<Mutex<Pending>>) {
    let decoder = FrameDecoder::new(MAX_RESPONSE_BYTES);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        match decoder.decode(&mut buffer) {
            Ok(Some(frame)) => {
                if let Err(reason) = deliver(frame, &pending) {
                    break reason;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        match read.read_buf(&mut buffer).await {
            Ok(0) => break "connection closed by the broker".to_string(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    lock(&pending).fail_all(&reason);
}

/// Hands one answer frame to the request it answers. An answer nobody waits for any more
/// (its request timed out) is dropped.
fn deliver(frame: Bytes, pending: &Mutex<Pending>) -> std::result::Result<(), String> {
    if frame.len() < 4 {
        return Err("an answer too short to carry a correlation ID".into());
    }
    let correlation_id = (&frame[..4]).get_i32();
    let Some(waiter) = lock(pending).waiting.remove(&correlation_id) else {
        return Ok(());
    };
    let answer = decode_response(waiter.api_key, waiter.version, frame)
        .map(|(_, body)| body)
        .map_err(|e| {
            format!(
                "{UNDECODABLE} the answer to {} v{}: {e}",
                waiter.api_key.name(),
                waiter.version
            )
        });
    let _ = waiter.answer.send(answer);
    Ok(())
}
