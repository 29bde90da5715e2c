//! The client's side of a listener's security protocol: how this broker connects to the
//! other brokers' inter-broker listener, as a Kafka broker does.
//!
//! SSL and SASL_SSL wrap the connection in TLS with the listener's own `ssl.*` settings
//! ([`crate::tls::SslSettings::client_config`]: its truststore verifies the other broker,
//! its keystore is this broker's certificate). SASL_PLAINTEXT and SASL_SSL then log in with
//! `sasl.mechanism.inter.broker.protocol` (PLAIN or SCRAM), as the `username` and
//! `password` of the listener's JAAS entry for that mechanism
//! (`listener.name.<listener>.<mechanism>.sasl.jaas.config`), through SaslHandshake and
//! SaslAuthenticate, before the connection is handed to its user.
//!
//! The controller listener (Raft between voters, brokers' requests to the active
//! controller) is PLAINTEXT or SSL: [`to_listener`] is how a node reaches the voters' one,
//! and [`accepting`] serves this node's, each connection's TLS handshake done apart so a
//! slow or silent peer holds up no other.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use spool_metadata::net::{BoxStream, Listener, Network, Pending};
use spool_protocol::error_code::ErrorCode;
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::{
    RequestBody, ResponseBody, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::auth::scram::ScramClient;
use crate::auth::{Mechanism, plain};
use crate::config::{BrokerConfig, list_items};
use crate::peers::round_trip;

/// The setting naming the mechanism brokers log in to each other with.
const MECHANISM_SETTING: &str = "sasl.mechanism.inter.broker.protocol";

/// Who this broker logs in as, and how.
#[derive(Debug, Clone)]
struct Login {
    mechanism: Mechanism,
    username: String,
    password: String,
}

/// Connections over `inner`, secured as the other side's listener expects.
pub struct SecureNetwork {
    inner: Arc<dyn Network>,
    client_id: String,
    tls: Option<TlsConnector>,
    login: Option<Login>,
    /// `connections.max.reauth.ms` of the listener: how long a login lasts there.
    session: Option<Duration>,
}

/// The network this broker reaches other brokers' `listener` over: `inner` itself when
/// the listener is PLAINTEXT. Fails, saying which setting is missing or wrong, when the
/// listener's security cannot be spoken as configured.
pub fn to_listener(
    config: &BrokerConfig,
    listener: &str,
    inner: Arc<dyn Network>,
) -> Result<Arc<dyn Network>, String> {
    let protocol = config.security_protocol(listener).unwrap_or("PLAINTEXT");
    let tls = match protocol {
        "SSL" | "SASL_SSL" => Some(TlsConnector::from(
            config
                .ssl
                .client_config(listener)
                .map_err(|e| e.to_string())?,
        )),
        _ => None,
    };
    let login = match protocol {
        "SASL_PLAINTEXT" | "SASL_SSL" => Some(login(config, listener, protocol)?),
        _ => None,
    };
    if tls.is_none() && login.is_none() {
        return Ok(inner);
    }
    let reauth_ms = config.sasl.number(listener, "connections.max.reauth.ms");
    Ok(Arc::new(SecureNetwork {
        inner,
        client_id: format!("spool-broker-{}", config.node_id),
        tls,
        session: (login.is_some() && reauth_ms > 0).then(|| Duration::from_millis(reauth_ms)),
        login,
    }))
}

/// Connections accepted on `inner`, the bound listener named `listener`, secured as its
/// security protocol says: `inner` itself when it is PLAINTEXT; for SSL, each connection
/// once its TLS handshake (bounded in time, with the listener's `ssl.*` settings) is done.
/// Only the controller listener is served this way: Kafka listeners have their own loop
/// ([`crate::server::serve`]).
pub fn accepting(
    config: &BrokerConfig,
    listener: &str,
    inner: Box<dyn Listener>,
) -> Result<Box<dyn Listener>, String> {
    match config.security_protocol(listener).unwrap_or("PLAINTEXT") {
        "PLAINTEXT" => Ok(inner),
        "SSL" => {
            let acceptor = TlsAcceptor::from(
                config
                    .ssl
                    .server_config(listener)
                    .map_err(|e| e.to_string())?,
            );
            let (ready, accepted) = mpsc::channel(HANDSHAKEN);
            Ok(Box::new(TlsListener {
                accepted: Mutex::new(accepted),
                handshakes: tokio::spawn(handshakes(inner, acceptor, ready)),
            }))
        }
        other => Err(format!(
            "listener `{listener}` uses {other}, which this version does not serve as a controller listener (PLAINTEXT or SSL)"
        )),
    }
}

/// How many connections may wait, handshake done, for the listener's user to take them.
const HANDSHAKEN: usize = 64;

type Accepted = io::Result<(BoxStream, SocketAddr)>;

/// A listener whose connections come out of their TLS handshake.
struct TlsListener {
    accepted: Mutex<mpsc::Receiver<Accepted>>,
    handshakes: JoinHandle<()>,
}

impl Listener for TlsListener {
    fn accept(&self) -> Pending<'_, (BoxStream, SocketAddr)> {
        Box::pin(async move {
            match self.accepted.lock().await.recv().await {
                Some(accepted) => accepted,
                None => Err(io::Error::other("the listener stopped")),
            }
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the socket: nothing accepts on it any more.
        self.handshakes.abort();
    }
}

/// Accepts on `inner` and does each connection's TLS handshake in a task of its own,
/// handing on those that complete (and accept errors) until nobody takes them any more.
async fn handshakes(
    inner: Box<dyn Listener>,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<Accepted>,
) {
    loop {
        let (stream, peer) = match inner.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if ready.send(Err(e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match crate::server::secure(&acceptor, stream, None).await {
                Ok((stream, _)) => {
                    let _ = ready.send(Ok((stream, peer))).await;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "controller listener: TLS handshake failed")
                }
            }
        });
    }
}

/// The login of `sasl.mechanism.inter.broker.protocol` on SASL listener `listener`.
fn login(config: &BrokerConfig, listener: &str, protocol: &str) -> Result<Login, String> {
    let name = config.sasl.get(listener, MECHANISM_SETTING).ok_or_else(|| {
        format!(
            "the inter-broker listener `{listener}` is {protocol}: set {MECHANISM_SETTING} to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (Kafka's default, GSSAPI, is not served)"
        )
    })?;
    let mechanism = Mechanism::from_name(name)
        .filter(|m| *m != Mechanism::OAuthBearer)
        .ok_or_else(|| format!("{MECHANISM_SETTING}: `{name}` is not served"))?;
    let enabled = config
        .sasl
        .get(listener, "sasl.enabled.mechanisms")
        .unwrap_or("");
    if !list_items(enabled).any(|m| m == name) {
        return Err(format!(
            "{MECHANISM_SETTING} is {name}, which the inter-broker listener `{listener}` does not enable (sasl.enabled.mechanisms: {enabled})"
        ));
    }
    let key = format!(
        "listener.name.{}.{}.sasl.jaas.config",
        listener.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    );
    let jaas = config
        .sasl
        .get(
            listener,
            &format!("{}.sasl.jaas.config", name.to_ascii_lowercase()),
        )
        .ok_or_else(|| {
            format!(
                "set {key} with the username and password this broker logs in to the others with"
            )
        })?;
    let (username, password) = plain::jaas_login(jaas)
        .map_err(|e| format!("{key}: {e}"))?
        .filter(|(user, password)| !user.is_empty() && !password.is_empty())
        .ok_or_else(|| {
            format!(
                "{key} needs username and password options: brokers log in to each other with them"
            )
        })?;
    Ok(Login {
        mechanism,
        username,
        password,
    })
}

impl SecureNetwork {
    /// Sends one SASL request on `stream` and returns its answer.
    async fn request(
        &self,
        stream: &mut BoxStream,
        correlation_id: i32,
        body: RequestBody,
        version: i16,
    ) -> io::Result<ResponseBody> {
        let header = RequestHeader {
            request_api_key: body.api_key() as i16,
            request_api_version: version,
            correlation_id,
            client_id: Some(self.client_id.clone()),
            unknown_tagged_fields: Default::default(),
        };
        round_trip(stream, &mut BytesMut::new(), &header, &body).await
    }

    /// Logs in on `stream` as `login`; the error says why the other broker refused.
    async fn log_in(&self, stream: &mut BoxStream, login: &Login) -> io::Result<()> {
        let refused = |why: String| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} login as `{}` refused: {why}",
                    login.mechanism.name(),
                    login.username
                ),
            )
        };
        let handshake = SaslHandshakeRequest {
            mechanism: login.mechanism.name().to_string(),
        };
        let answer = self
            .request(stream, 1, RequestBody::SaslHandshake(handshake), 1)
            .await?;
        let ResponseBody::SaslHandshake(answer) = answer else {
            return Err(io::Error::other("answer to another request"));
        };
        if answer.error_code != 0 {
            return Err(refused(format!(
                "{} (the listener enables {})",
                ErrorCode::from_wire(answer.error_code).name(),
                answer.mechanisms.join(", ")
            )));
        }
        let mut correlation_id = 1;
        let mut authenticate = async |message: Vec<u8>| -> io::Result<Bytes> {
            correlation_id += 1;
            let request = SaslAuthenticateRequest {
                auth_bytes: Bytes::from(message),
                unknown_tagged_fields: Default::default(),
            };
            let answer = self
                .request(
                    stream,
                    correlation_id,
                    RequestBody::SaslAuthenticate(request),
                    2,
                )
                .await?;
            match answer {
                ResponseBody::SaslAuthenticate(answer) if answer.error_code == 0 => {
                    Ok(answer.auth_bytes)
                }
                ResponseBody::SaslAuthenticate(answer) => Err(refused(format!(
                    "{}: {}",
                    ErrorCode::from_wire(answer.error_code).name(),
                    answer.error_message.unwrap_or_default()
                ))),
                _ => Err(io::Error::other("answer to another request")),
            }
        };
        match login.mechanism {
            Mechanism::Plain => {
                let message = format!("\0{}\0{}", login.username, login.password);
                authenticate(message.into_bytes()).await?;
            }
            Mechanism::Scram(mechanism) => {
                let mut client = ScramClient::new(mechanism, &login.username, &login.password);
                let server_first = authenticate(client.first()).await?;
                let last = client
                    .last(&server_first)
                    .map_err(|e| refused(e.to_string()))?;
                let server_final = authenticate(last).await?;
                client
                    .verify(&server_final)
                    .map_err(|e| refused(e.to_string()))?;
            }
            Mechanism::OAuthBearer => return Err(refused("OAUTHBEARER is not spoken".into())),
        }
        Ok(())
    }
}

impl Network for SecureNetwork {
    fn connect<'a>(&'a self, address: &'a str) -> Pending<'a, BoxStream> {
        Box::pin(async move {
            let mut stream = self.inner.connect(address).await?;
            if let Some(tls) = &self.tls {
                stream = Box::new(tls.connect(server_name(address)?, stream).await?);
            }
            if let Some(login) = &self.login {
                self.log_in(&mut stream, login).await?;
            }
            Ok(stream)
        })
    }

    fn session_lifetime(&self) -> Option<Duration> {
        self.session
    }
}

/// The name a TLS server at `address` (`host:port`, `[v6]:port`) must have a certificate
/// for: its host name or IP address.
fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::other(format!("`{host}` is not a host name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_metadata::net::Tcp;

    fn config(settings: &[(&str, &str)]) -> BrokerConfig {
        let mut config = BrokerConfig::default();
        config
            .set(
                "listeners",
                "CLIENT://127.0.0.1:0,BROKER://127.0.0.1:0,CONTROLLER://127.0.0.1:0",
            )
            .unwrap();
        config
            .set(
                "listener.security.protocol.map",
                "CLIENT:PLAINTEXT,BROKER:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            )
            .unwrap();
        config.set("inter.broker.listener.name", "BROKER").unwrap();
        for (key, value) in settings {
            config.set(key, value).unwrap();
        }
        config
    }

    fn refusal(config: &BrokerConfig) -> String {
        match to_listener(config, "BROKER", Arc::new(Tcp)) {
            Ok(_) => "accepted".into(),
            Err(e) => e,
        }
    }

    #[test]
    fn a_sasl_inter_broker_listener_needs_a_served_enabled_mechanism_and_a_login() {
        assert!(refusal(&config(&[])).contains("set sasl.mechanism.inter.broker.protocol"));
        let plain = ("sasl.mechanism.inter.broker.protocol", "PLAIN");
        assert!(refusal(&config(&[plain])).contains("does not enable"));
        let enabled = ("listener.name.broker.sasl.enabled.mechanisms", "PLAIN");
        assert!(
            refusal(&config(&[plain, enabled]))
                .contains("set listener.name.broker.plain.sasl.jaas.config")
        );
        let server_only = (
            "listener.name.broker.plain.sasl.jaas.config",
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required user_broker="s";"#,
        );
        assert!(refusal(&config(&[plain, enabled, server_only])).contains("needs username"));
        let login = (
            "listener.name.broker.plain.sasl.jaas.config",
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="broker" password="s" user_broker="s";"#,
        );
        assert_eq!(refusal(&config(&[plain, enabled, login])), "accepted");
        // GSSAPI and OAUTHBEARER are refused as the setting is given.
        let mut config = BrokerConfig::default();
        for name in ["GSSAPI", "OAUTHBEARER"] {
            assert!(
                config
                    .set("sasl.mechanism.inter.broker.protocol", name)
                    .is_err()
            );
        }
    }

    #[test]
    fn a_plaintext_inter_broker_listener_is_reached_as_it_is() {
        let mut config = config(&[]);
        config.set("inter.broker.listener.name", "CLIENT").unwrap();
        let net = to_listener(&config, "CLIENT", Arc::new(Tcp)).unwrap();
        assert_eq!(net.session_lifetime(), None);
    }

    #[tokio::test]
    async fn an_ssl_controller_listener_hands_on_only_connections_that_completed_their_handshake() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = crate::tls::tests::pki().unwrap();
        let (key, chain) = pki.server_key_and_chain();
        let ssl = |settings: &[(&str, &str)]| {
            let mut config = config(settings);
            config
                .set(
                    "listener.security.protocol.map",
                    "CLIENT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:SSL",
                )
                .unwrap();
            config
        };
        let config = ssl(&[
            ("ssl.keystore.key", &key),
            ("ssl.keystore.certificate.chain", &chain),
            ("ssl.truststore.certificates", &pki.ca),
            ("ssl.client.auth", "required"),
        ]);
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let listener = accepting(&config, "CONTROLLER", Box::new(socket)).unwrap();
        let address = format!("localhost:{port}");

        // A peer that never speaks, one that speaks plain bytes, and a TLS client without
        // a certificate are never handed on, and hold up nobody.
        let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        plain.write_all(&[0, 0, 0, 5, 0, 0, 0, 1, 1]).await.unwrap();
        let anonymous = TlsConnector::from(Arc::new(crate::tls::tests::client(
            &pki,
            false,
            crate::tls::tests::BOTH,
        )));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut no_certificate = anonymous
            .connect(server_name(&address).unwrap(), tcp)
            .await
            .unwrap();
        // With TLS 1.3 the client hears of the refusal only when it next reads.
        no_certificate.write_all(b"anon").await.unwrap();
        no_certificate.flush().await.unwrap();
        let voter = to_listener(&config, "CONTROLLER", Arc::new(Tcp)).unwrap();
        let mut connected = voter.connect(&address).await.unwrap();
        connected.write_all(b"vote").await.unwrap();
        connected.flush().await.unwrap();

        let accept = tokio::time::timeout(Duration::from_secs(5), listener.accept());
        let (mut accepted, _) = accept.await.unwrap().unwrap();
        let mut word = [0u8; 4];
        accepted.read_exact(&mut word).await.unwrap();
        assert_eq!(&word, b"vote");
        accepted.write_all(b"ok").await.unwrap();
        accepted.flush().await.unwrap();
        let mut answer = [0u8; 2];
        connected.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ok");
        // Nothing else was handed on.
        let next = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(next.is_err(), "another connection was accepted");
        drop(no_certificate);
    }

    #[test]
    fn a_controller_listener_is_plaintext_or_ssl() {
        let mut config = config(&[]);
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let socket = tokio::net::TcpListener::from_std(socket).unwrap();
        let refused = accepting(&config, "BROKER", Box::new(socket));
        assert!(refused.err().unwrap().contains("PLAINTEXT or SSL"));
        // SSL without a keystore names what is missing.
        config
            .set(
                "listener.security.protocol.map",
                "CLIENT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:SSL",
            )
            .unwrap();
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::TcpListener::from_std(socket).unwrap();
        let refused = accepting(&config, "CONTROLLER", Box::new(socket));
        assert!(refused.err().unwrap().contains("keystore"));
    }

    #[test]
    fn servers_are_named_by_host_or_address() {
        assert_eq!(
            server_name("broker-1.example:9093").unwrap(),
            ServerName::try_from("broker-1.example").unwrap()
        );
        assert_eq!(
            server_name("[::1]:9093").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("127.0.0.1:9093").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert!(server_name("bad host:1").is_err());
    }
}
