//! The network side: one task per connection, pipelined requests, responses in request
//! order, and produce appends in request order.
//!
//! A connection's reader cuts frames (refusing one over `socket.request.max.bytes` from its
//! size prefix, before reading its body), decodes each request and spawns its handler. The
//! handler's answer goes through a one-shot channel into a queue the writer drains in order,
//! so slow requests (a long-polling fetch, an acks=all produce) never reorder responses.
//! The queue's bound is the connection's in-flight limit: when it is full the reader stops
//! reading. A connection idle for `connections.max.idle.ms` is closed. On an SSL listener
//! the connection is a TLS session first (see [`crate::tls`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_metadata::net::{BoxStream, Listener};
use spool_protocol::DecodeError;
use spool_protocol::frame::{FrameDecoder, decode_request, encode_response};
use spool_protocol::messages::{ApiKey, RequestBody, ResponseBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::api::{self, Outcome, RequestContext};
use crate::state::BrokerState;

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on the listener named `name` until `shutdown` turns true; with
/// `tls`, each connection starts with a TLS handshake (an SSL listener).
pub async fn serve(
    state: Arc<BrokerState>,
    listener: Box<dyn Listener>,
    name: String,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener_name: Arc<str> = Arc::from(name.as_str());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = Arc::clone(&state);
                    let shutdown = shutdown.clone();
                    let context = RequestContext {
                        listener: Arc::clone(&listener_name),
                        client_host: Arc::from(format!("/{}", peer.ip())),
                    };
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let stream = match tls {
                            Some(acceptor) => match secure(&acceptor, stream).await {
                                Ok(stream) => stream,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                            },
                            None => stream,
                        };
                        if let Err(e) = connection(state, context, stream, shutdown).await {
                            tracing::debug!(%peer, error = %e, "connection closed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// The TLS handshake of an accepted connection, bounded in time.
async fn secure(acceptor: &TlsAcceptor, stream: BoxStream) -> std::io::Result<BoxStream> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no TLS handshake in time",
        )),
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] DecodeError),
    #[error("idle for longer than connections.max.idle.ms")]
    Idle,
    #[error("undecodable or unserved request")]
    BadRequest,
}

async fn connection(
    state: Arc<BrokerState>,
    context: RequestContext,
    stream: BoxStream,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (queue, mut answers) = mpsc::channel::<oneshot::Receiver<Outcome>>(
        state.config.queued_max_requests_per_connection.max(1),
    );
    let writer_task = tokio::spawn(async move {
        while let Some(answer) = answers.recv().await {
            match answer.await {
                Ok(Outcome::Respond(bytes)) => writer.write_all(&bytes).await?,
                Ok(Outcome::Silent) => {}
                Ok(Outcome::Close) | Err(_) => break,
            }
        }
        writer.shutdown().await
    });

    let decoder = FrameDecoder::new(state.config.socket_request_max_bytes);
    let idle = Duration::from_millis(state.config.connections_max_idle_ms);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let result = loop {
        let frame = match next_frame(&decoder, &mut buffer, &mut reader, idle, &mut shutdown).await
        {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        if queue.send(answer_rx).await.is_err() {
            break Ok(());
        }
        match decode_request(frame) {
            Ok((header, RequestBody::Produce(request))) => {
                // Appends happen here, one request at a time, so pipelined produce requests
                // reach the log in the order they were sent; waiting for durability and
                // answering run alongside later requests.
                let appended =
                    api::produce::append(&state, request, header.request_api_version).await;
                let state = Arc::clone(&state);
                let context = context.clone();
                tokio::spawn(async move {
                    let answer = api::finish_produce(&state, &context, header, appended).await;
                    let _ = answer_tx.send(answer);
                });
            }
            Ok((header, body)) => {
                let state = Arc::clone(&state);
                let context = context.clone();
                tokio::spawn(async move {
                    let _ = answer_tx.send(api::handle(&state, &context, header, body).await);
                });
            }
            Err(failed) => {
                let (api_key, api_version) = failed
                    .header
                    .as_ref()
                    .map_or((-1, -1), |h| (h.request_api_key, h.request_api_version));
                // An ApiVersions request of a version we do not know still gets an answer
                // (KIP-511); anything else undecodable closes the connection, as in Kafka.
                let answer = match failed.header {
                    Some(header) if header.api_key() == Some(ApiKey::ApiVersions) => {
                        let body = ResponseBody::ApiVersions(
                            api::api_versions::unsupported_version_response(),
                        );
                        encode_response(header.correlation_id, 0, &body)
                            .map_or(Outcome::Close, Outcome::Respond)
                    }
                    _ => Outcome::Close,
                };
                let close = matches!(answer, Outcome::Close);
                let _ = answer_tx.send(answer);
                if close {
                    tracing::debug!(error = %failed.error, api_key, api_version, "undecodable request");
                    break Err(ConnectionError::BadRequest);
                }
            }
        }
    };
    drop(queue);
    let _ = writer_task.await;
    result
}

/// Reads until a whole frame is buffered. `None` when the peer closed or shutdown began.
async fn next_frame(
    decoder: &FrameDecoder,
    buffer: &mut BytesMut,
    reader: &mut (impl AsyncRead + Unpin),
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Bytes>, ConnectionError> {
    loop {
        if let Some(frame) = decoder.decode(buffer)? {
            return Ok(Some(frame));
        }
        tokio::select! {
            read = tokio::time::timeout(idle, reader.read_buf(buffer)) => match read {
                Err(_) => return Err(ConnectionError::Idle),
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            },
            _ = shutdown.changed() => return Ok(None),
        }
    }
}
