//! The network side: one task per connection, pipelined requests, responses in request
//! order, and produce appends in request order.
//!
//! A connection's reader cuts frames (refusing one over `socket.request.max.bytes` from its
//! size prefix, before reading its body), decodes each request and spawns its handler. The
//! handler's answer goes through a one-shot channel into a queue the writer drains in order,
//! so slow requests (a long-polling fetch, an acks=all produce) never reorder responses.
//! The queue's bound is the connection's in-flight limit: when it is full the reader stops
//! reading. A connection idle for `connections.max.idle.ms` is closed. On an SSL or
//! SASL_SSL listener the connection is a TLS session first (see [`crate::tls`]); on a
//! SASL listener the client logs in before its first other request (see [`crate::auth`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use spool_metadata::net::{BoxStream, Listener};
use spool_protocol::DecodeError;
use spool_protocol::frame::{FrameDecoder, RequestDecodeError, decode_request, encode_response};
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::{ApiKey, RequestBody, ResponseBody, SaslAuthenticateRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, Outcome, RequestContext};
use crate::auth::principal::{MappingRules, subject_name};
use crate::auth::{Authenticated, Authenticator, ListenerSasl, Principal, scram};
use crate::config::BrokerConfig;
use crate::quota::{self, Kind};
use crate::state::{BrokerState, lock};

/// How a listener secures its connections.
#[derive(Clone, Default)]
pub struct Security {
    /// SSL and SASL_SSL: the TLS handshake comes first.
    pub tls: Option<TlsAcceptor>,
    /// SSL: how a client certificate's subject names the principal.
    pub certificate_principal: Option<Arc<MappingRules>>,
    /// SASL_PLAINTEXT and SASL_SSL: the client logs in before anything else.
    pub sasl: Option<Arc<ListenerSasl>>,
}

/// Every listener's security, by listener name: TLS stores and SASL users are read here,
/// so a bad one stops the broker before it binds anything.
pub fn securities(config: &BrokerConfig) -> Result<BTreeMap<String, Security>, String> {
    let mut acceptors = crate::tls::acceptors(config).map_err(|e| e.to_string())?;
    let mut sasl = crate::auth::sasl_listeners(config)?;
    Ok(config
        .listeners
        .iter()
        .map(|l| {
            let security = Security {
                tls: acceptors.remove(&l.name),
                certificate_principal: (config.security_protocol(&l.name) == Some("SSL"))
                    .then(|| Arc::new(config.ssl.principal_rules(&l.name))),
                sasl: sasl.remove(&l.name),
            };
            (l.name.clone(), security)
        })
        .collect())
}

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on the listener named `name` until `shutdown` turns true, each
/// secured as `security` says, within the connection limits (see [`crate::limits`]).
pub async fn serve(
    state: Arc<BrokerState>,
    listener: Box<dyn Listener>,
    name: String,
    security: Security,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener_name: Arc<str> = Arc::from(name.as_str());
    state.metrics.listener(&name);
    let limits = Arc::clone(&state.connection_limits);
    // The inter-broker listener is kept clear of the broker-wide limit when clients have
    // another listener to be limited on (as Kafka protects it).
    let config = &state.config;
    let broker_listeners = config
        .listeners
        .iter()
        .filter(|l| !config.is_controller_listener(&l.name))
        .count();
    let inter_broker = config.inter_broker_listener() == name && broker_listeners > 1;
    loop {
        // At `max.connections` the listener waits for a connection to close.
        let permits = tokio::select! {
            permits = limits.slot(&name, inter_broker) => permits,
            _ = shutdown.changed() => return,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(admitted) = limits.admit(peer.ip(), permits) else {
                        tracing::debug!(%peer, "max.connections.per.ip reached: connection closed");
                        drop(stream);
                        continue;
                    };
                    let now = crate::state::now_ms();
                    let wait = limits.accepted(&name, inter_broker, now);
                    // An address over its connection_creation_rate has its connection
                    // held for the throttle time, then closed (the inter-broker
                    // listener is spared, as from the broker-wide limits).
                    let hold = if inter_broker {
                        0
                    } else {
                        state.with_image(|image| state.client_quotas.connection(image, peer.ip(), now))
                    };
                    let state = Arc::clone(&state);
                    let mut stop = shutdown.clone();
                    let context = RequestContext::new(
                        Arc::clone(&listener_name),
                        Arc::from(format!("/{}", peer.ip())),
                    );
                    let Security { tls, certificate_principal, sasl } = security.clone();
                    let listener_name = Arc::clone(&listener_name);
                    tokio::spawn(async move {
                        let _admitted = admitted;
                        let _counted = state.metrics.connection(&listener_name);
                        if hold > 0 {
                            tracing::debug!(%peer, hold, "connection_creation_rate reached: connection closed after the throttle time");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(hold)) => {}
                                _ = stop.changed() => {}
                            }
                            return;
                        }
                        let mut context = context;
                        let stream = match tls {
                            Some(acceptor) => match secure(&acceptor, stream, certificate_principal.as_deref()).await {
                                Ok((stream, principal)) => {
                                    if let Some(principal) = principal {
                                        context.principal = Arc::new(principal);
                                    }
                                    stream
                                }
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    state.metrics.authentication_failed(&listener_name);
                                    return;
                                }
                            },
                            None => stream,
                        };
                        let authenticator = sasl.map(Authenticator::new);
                        if let Err(e) = connection(state, context, stream, authenticator, stop).await {
                            tracing::debug!(%peer, error = %e, "connection closed");
                        }
                    });
                    if wait > 0 {
                        // max.connection.creation.rate: the next connection waits.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// The TLS handshake of an accepted connection, bounded in time; with `rules`, the
/// principal its client certificate names (`User:ANONYMOUS` without one). A certificate
/// no rule maps fails the connection, as in Kafka.
pub(crate) async fn secure(
    acceptor: &TlsAcceptor,
    stream: BoxStream,
    rules: Option<&MappingRules>,
) -> std::io::Result<(BoxStream, Option<Principal>)> {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no TLS handshake in time",
            ));
        }
    };
    let principal = match rules {
        None => None,
        Some(rules) => match stream.get_ref().1.peer_certificates() {
            None | Some([]) => Some(Principal::anonymous()),
            Some([certificate, ..]) => {
                let name = subject_name(certificate).ok_or_else(|| {
                    std::io::Error::other("the client certificate's subject does not read")
                })?;
                let user = rules.apply(&name).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "no ssl.principal.mapping.rules rule applies to `{name}`"
                    ))
                })?;
                Some(Principal::user(&user))
            }
        },
    };
    Ok((Box::new(stream), principal))
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
    #[error("request with API key {0} before authentication")]
    Unauthenticated(i16),
    #[error("authentication failed")]
    AuthenticationFailed,
    #[error("the session expired without re-authentication (connections.max.reauth.ms)")]
    SessionExpired,
}

/// The API key of a frame, read before anything else is decoded.
fn api_key_of(frame: &[u8]) -> i16 {
    match frame {
        [high, low, ..] => i16::from_be_bytes([*high, *low]),
        _ => -1,
    }
}

/// The answer to an undecodable request: an ApiVersions request of a version this broker
/// does not know still gets one (KIP-511); anything else closes the connection, as in
/// Kafka.
fn undecodable(failed: RequestDecodeError) -> Outcome {
    let (api_key, api_version) = failed
        .header
        .as_ref()
        .map_or((-1, -1), |h| (h.request_api_key, h.request_api_version));
    match failed.header {
        Some(header) if header.api_key() == Some(ApiKey::ApiVersions) => {
            let body = ResponseBody::ApiVersions(api::api_versions::unsupported_version_response());
            encode_response(header.correlation_id, 0, &body)
                .map_or(Outcome::Close, Outcome::Respond)
        }
        _ => {
            tracing::debug!(error = %failed.error, api_key, api_version, "undecodable request");
            Outcome::Close
        }
    }
}

/// A user's SCRAM credential from the metadata image.
fn scram_credential(
    state: &BrokerState,
    user: &str,
    mechanism: scram::Mechanism,
) -> Option<scram::Credential> {
    state.with_image(|image| {
        image
            .scram_credential(user, mechanism as i8)
            .map(|r| scram::Credential {
                salt: r.salt.to_vec(),
                iterations: r.iterations,
                stored_key: r.stored_key.to_vec(),
                server_key: r.server_key.to_vec(),
            })
    })
}

/// What a SASL request led to on a connection.
enum SaslOutcome {
    /// Send the answer and go on.
    Continue(Outcome),
    /// Send the answer; the client logged in as this user.
    LoggedIn(Outcome, String),
    /// Send the answer, then close the connection.
    Close(Outcome),
}

/// Serves a SaslHandshake or SaslAuthenticate request on a SASL listener (any other
/// request closes the connection).
async fn sasl_request(
    state: &BrokerState,
    listener: &str,
    auth: &mut Authenticator,
    header: &RequestHeader,
    body: RequestBody,
) -> SaslOutcome {
    let respond = |body: ResponseBody| api::encode(header, &body);
    match body {
        RequestBody::SaslHandshake(request) => {
            let (response, ok) = auth.handshake(&request);
            let answer = respond(ResponseBody::SaslHandshake(response));
            if ok {
                SaslOutcome::Continue(answer)
            } else {
                SaslOutcome::Close(answer)
            }
        }
        RequestBody::SaslAuthenticate(request) => {
            match auth.authenticate(&request, |user, m| scram_credential(state, user, m)) {
                Authenticated::Continue(response) => {
                    SaslOutcome::Continue(respond(ResponseBody::SaslAuthenticate(response)))
                }
                Authenticated::Done(response, user) => {
                    SaslOutcome::LoggedIn(respond(ResponseBody::SaslAuthenticate(response)), user)
                }
                Authenticated::Failed(response) => {
                    tracing::info!(error = ?response.error_message, "failed authentication");
                    state.metrics.authentication_failed(listener);
                    tokio::time::sleep(Duration::from_millis(auth.settings().failed_delay_ms))
                        .await;
                    SaslOutcome::Close(respond(ResponseBody::SaslAuthenticate(response)))
                }
            }
        }
        _ => SaslOutcome::Close(Outcome::Close),
    }
}

/// Logs the client in: reads only ApiVersions, SaslHandshake and SaslAuthenticate
/// requests, one at a time, from frames of at most `sasl.server.max.receive.size` bytes.
/// The user, or `None` when the connection is to close.
async fn login(
    state: &BrokerState,
    listener: &str,
    auth: &mut Authenticator,
    stream: &mut BoxStream,
    buffer: &mut BytesMut,
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<String>, ConnectionError> {
    let decoder = FrameDecoder::new(auth.settings().max_receive_bytes);
    // After a SaslHandshake v0, tokens travel without Kafka headers (the pre-KIP-152 form).
    let mut legacy = false;
    loop {
        let Some(frame) = next_frame(&decoder, buffer, stream, idle, shutdown).await? else {
            return Ok(None);
        };
        if legacy {
            let request = SaslAuthenticateRequest {
                auth_bytes: frame,
                ..Default::default()
            };
            let (bytes, user) =
                match auth.authenticate(&request, |user, m| scram_credential(state, user, m)) {
                    Authenticated::Continue(r) => (r.auth_bytes, None),
                    Authenticated::Done(r, user) => (r.auth_bytes, Some(user)),
                    Authenticated::Failed(r) => {
                        tracing::info!(error = ?r.error_message, "failed authentication");
                        state.metrics.authentication_failed(listener);
                        return Err(ConnectionError::AuthenticationFailed);
                    }
                };
            let mut token = BytesMut::with_capacity(4 + bytes.len());
            token.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
            token.put_slice(&bytes);
            stream.write_all(&token).await?;
            if user.is_some() {
                return Ok(user);
            }
            continue;
        }
        let api_key = api_key_of(&frame);
        let allowed = [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
        ];
        if !allowed.iter().any(|k| *k as i16 == api_key) {
            // Nothing but the key was read: the rest of the frame is never decoded.
            return Err(ConnectionError::Unauthenticated(api_key));
        }
        let (header, body) = match decode_request(frame) {
            Ok(decoded) => decoded,
            Err(failed) => match undecodable(failed) {
                Outcome::Respond(bytes) => {
                    stream.write_all(&bytes).await?;
                    continue;
                }
                _ => return Err(ConnectionError::BadRequest),
            },
        };
        let outcome = match body {
            RequestBody::ApiVersions(request) => {
                let response = api::api_versions::handle(&request, header.request_api_version);
                SaslOutcome::Continue(api::encode(&header, &ResponseBody::ApiVersions(response)))
            }
            body => {
                if matches!(body, RequestBody::SaslHandshake(_)) {
                    legacy = header.request_api_version == 0;
                }
                sasl_request(state, listener, auth, &header, body).await
            }
        };
        let (answer, next) = match outcome {
            SaslOutcome::Continue(answer) => (answer, None),
            SaslOutcome::LoggedIn(answer, user) => (answer, Some(Ok(Some(user)))),
            SaslOutcome::Close(answer) => {
                (answer, Some(Err(ConnectionError::AuthenticationFailed)))
            }
        };
        match answer {
            Outcome::Respond(bytes) => stream.write_all(&bytes).await?,
            _ => return Err(ConnectionError::BadRequest),
        }
        if let Some(next) = next {
            return next;
        }
    }
}

async fn connection(
    state: Arc<BrokerState>,
    mut context: RequestContext,
    mut stream: BoxStream,
    mut authenticator: Option<Authenticator>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let idle = Duration::from_millis(state.config.connections_max_idle_ms);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    // When the session of a SASL login ends (KIP-368).
    let mut session_end = None;
    if let Some(auth) = authenticator.as_mut() {
        let Some(user) = login(
            &state,
            &context.listener,
            auth,
            &mut stream,
            &mut buffer,
            idle,
            &mut shutdown,
        )
        .await?
        else {
            return Ok(());
        };
        tracing::debug!(%user, listener = %context.listener, "authenticated");
        context.principal = Arc::new(Principal::user(&user));
        session_end = session_deadline(auth);
    }
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
            // TLS keeps what it has encrypted until flushed: send it once no other answer
            // is waiting (a no-op on plain TCP).
            if answers.is_empty() {
                writer.flush().await?;
            }
        }
        writer.shutdown().await
    });

    let decoder = FrameDecoder::new(state.config.socket_request_max_bytes);
    let result = loop {
        let frame = match next_frame(&decoder, &mut buffer, &mut reader, idle, &mut shutdown).await
        {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        // A client over its quota is served nothing more until its throttle time has
        // passed (Kafka mutes the connection; a request read meanwhile waits here).
        let muted = lock(&context.muted_until).take();
        if let Some(until) = muted {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                _ = shutdown.changed() => break Ok(()),
            }
        }
        let api_key = api_key_of(&frame);
        let frame_bytes = frame.len();
        let reauthenticating =
            api_key == ApiKey::SaslHandshake as i16 || api_key == ApiKey::SaslAuthenticate as i16;
        if session_end.is_some_and(|end| Instant::now() >= end) && !reauthenticating {
            break Err(ConnectionError::SessionExpired);
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        if queue.send(answer_rx).await.is_err() {
            break Ok(());
        }
        match decode_request(frame) {
            // A re-authentication on a SASL listener (KIP-368), served here in order.
            Ok((
                header,
                body @ (RequestBody::SaslHandshake(_) | RequestBody::SaslAuthenticate(_)),
            )) if authenticator.is_some() => {
                let Some(auth) = authenticator.as_mut() else {
                    break Err(ConnectionError::BadRequest);
                };
                if matches!(body, RequestBody::SaslHandshake(_)) {
                    auth.restart();
                }
                let outcome = sasl_request(&state, &context.listener, auth, &header, body).await;
                if let Some(close) = answer_sasl(outcome, answer_tx, auth, &mut session_end) {
                    break Err(close);
                }
            }
            Ok((header, RequestBody::Produce(request))) => {
                let started = Instant::now();
                // Appends happen here, one request at a time, so pipelined produce requests
                // reach the log in the order they were sent; waiting for durability and
                // answering run alongside later requests.
                let (appended, busy) = api::timed(api::produce::append(
                    &state,
                    &context.authz(&state),
                    request,
                    header.request_api_version,
                ))
                .await;
                // The request's size counts against the producer's byte rate, the time its
                // appends took against its request_percentage.
                let client_id = header.client_id.as_deref();
                let size = frame_bytes as f64;
                let spent = quota::request_percent(busy);
                let throttle = context
                    .throttle(&state, Kind::Produce, client_id, size)
                    .max(context.throttle(&state, Kind::Request, client_id, spent));
                let state = Arc::clone(&state);
                let context = context.clone();
                tokio::spawn(async move {
                    let version = header.request_api_version;
                    let answer =
                        api::finish_produce(&state, &context, header, appended, throttle).await;
                    state
                        .metrics
                        .request(ApiKey::Produce, version, started.elapsed());
                    let _ = answer_tx.send(answer);
                });
            }
            Ok((header, body)) => {
                let state = Arc::clone(&state);
                let context = context.clone();
                let started = Instant::now();
                tokio::spawn(async move {
                    let api = header.api_key();
                    let version = header.request_api_version;
                    let answer = api::handle(&state, &context, header, body).await;
                    if let Some(api) = api {
                        state.metrics.request(api, version, started.elapsed());
                    }
                    let _ = answer_tx.send(answer);
                });
            }
            Err(failed) => {
                let answer = undecodable(failed);
                let close = matches!(answer, Outcome::Close);
                let _ = answer_tx.send(answer);
                if close {
                    break Err(ConnectionError::BadRequest);
                }
            }
        }
    };
    drop(queue);
    let _ = writer_task.await;
    result
}

/// When the session of the login `auth` just accepted ends (`connections.max.reauth.ms`
/// from now, or the OAUTHBEARER token's expiry if sooner), or never.
fn session_deadline(auth: &Authenticator) -> Option<Instant> {
    let lifetime = auth.session_ms();
    (lifetime > 0).then(|| Instant::now() + Duration::from_millis(lifetime))
}

/// Queues the answer to a re-authentication request; why the connection must close, if
/// it must.
fn answer_sasl(
    outcome: SaslOutcome,
    answer_tx: oneshot::Sender<Outcome>,
    auth: &Authenticator,
    session_end: &mut Option<Instant>,
) -> Option<ConnectionError> {
    let (answer, close) = match outcome {
        SaslOutcome::Continue(answer) => (answer, None),
        SaslOutcome::LoggedIn(answer, user) => {
            tracing::debug!(%user, "re-authenticated");
            *session_end = session_deadline(auth);
            (answer, None)
        }
        SaslOutcome::Close(answer) => (answer, Some(ConnectionError::AuthenticationFailed)),
    };
    let _ = answer_tx.send(answer);
    close
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
