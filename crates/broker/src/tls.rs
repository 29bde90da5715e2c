//! TLS for SSL listeners, with rustls and its ring provider.
//!
//! Kafka's `ssl.*` settings apply to every listener; `listener.name.<name>.ssl.*` sets one
//! for a single listener and wins over the general one. Keys and certificates are PEM:
//! the keystore is either a file holding the private key and its certificate chain
//! (`ssl.keystore.location`) or the two given inline (`ssl.keystore.key`,
//! `ssl.keystore.certificate.chain`); the truststore, which verifies client certificates,
//! is a file of CA certificates (`ssl.truststore.location`) or the same inline
//! (`ssl.truststore.certificates`). A keystore file that changes is read again (see
//! [`Keystore`]), so certificates rotate without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

use crate::auth::principal::MappingRules;
use crate::config::{BrokerConfig, PerListener, list_items};

/// The `ssl.*` settings this version knows, by their name after `ssl.`.
pub const SETTINGS: &[&str] = &[
    "keystore.type",
    "keystore.location",
    "keystore.key",
    "keystore.certificate.chain",
    "key.password",
    "keystore.password",
    "truststore.type",
    "truststore.location",
    "truststore.certificates",
    "truststore.password",
    "client.auth",
    "enabled.protocols",
    "protocol",
    "cipher.suites",
    "endpoint.identification.algorithm",
    "principal.mapping.rules",
];

/// Kafka's `ssl.enabled.protocols` names and rustls' versions.
const PROTOCOLS: &[(&str, &SupportedProtocolVersion)] = &[
    ("TLSv1.2", &rustls::version::TLS12),
    ("TLSv1.3", &rustls::version::TLS13),
];

/// `ssl.client.auth`: whether a client must (or may) present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("invalid value `{value}` for `ssl.{key}`: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "listener `{listener}` is SSL but has no keystore: set ssl.keystore.location (or ssl.keystore.key and ssl.keystore.certificate.chain)"
    )]
    NoKeystore { listener: String },
    #[error(
        "listener `{listener}` requires client certificates but has no truststore: set ssl.truststore.location or ssl.truststore.certificates"
    )]
    NoTruststore { listener: String },
    #[error(
        "listener `{listener}` carries traffic between brokers over TLS but has no truststore to verify them: set ssl.truststore.location or ssl.truststore.certificates"
    )]
    NoPeerTruststore { listener: String },
    #[error("cannot read `{path}` ({setting}): {reason}")]
    Read {
        setting: &'static str,
        path: String,
        reason: String,
    },
    #[error("listener `{listener}`: {reason}")]
    Rejected { listener: String, reason: String },
}

/// The `ssl.*` settings as given: the general ones and each listener's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSettings(PerListener);

impl SslSettings {
    /// Sets `ssl.<key>` (for every listener, or for `listener` only), checking the value
    /// where it can be checked alone. `false` when `key` is not an SSL setting.
    pub fn set(
        &mut self,
        listener: Option<&str>,
        key: &str,
        value: &str,
    ) -> Result<bool, TlsError> {
        let Some(key) = SETTINGS.iter().copied().find(|k| *k == key) else {
            return Ok(false);
        };
        check_value(key, value)?;
        self.0.insert(listener, key, value);
        Ok(true)
    }

    /// The value of `ssl.<key>` in force on `listener`.
    pub fn get(&self, listener: &str, key: &str) -> Option<&str> {
        self.0.get(listener, key).filter(|v| !v.is_empty())
    }

    /// `ssl.client.auth` on `listener` (none when unset).
    pub fn client_auth(&self, listener: &str) -> ClientAuth {
        match self.get(listener, "client.auth") {
            Some(v) if v.eq_ignore_ascii_case("required") => ClientAuth::Required,
            Some(v) if v.eq_ignore_ascii_case("requested") => ClientAuth::Requested,
            _ => ClientAuth::None,
        }
    }

    /// `ssl.principal.mapping.rules` on `listener`: how a client certificate's subject
    /// becomes a user name.
    pub fn principal_rules(&self, listener: &str) -> MappingRules {
        self.get(listener, "principal.mapping.rules")
            .and_then(|rules| MappingRules::parse(rules).ok())
            .unwrap_or_default()
    }

    /// The rustls configuration that serves SSL listener `listener`.
    pub fn server_config(&self, listener: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let rejected = |reason: String| rejected(listener, reason);
        let (versions, provider, keystore) = self.protocol_and_keystore(listener)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .map_err(|e| rejected(e.to_string()))?;
        let builder = match self.client_auth(listener) {
            ClientAuth::None => builder.with_no_client_auth(),
            auth => {
                let roots = self
                    .truststore(listener)?
                    .ok_or_else(|| TlsError::NoTruststore {
                        listener: listener.to_string(),
                    })?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Requested {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| rejected(format!("truststore: {e}")))?,
                )
            }
        };
        Ok(Arc::new(builder.with_cert_resolver(Arc::new(keystore))))
    }

    /// The rustls configuration this broker connects to another one's `listener` with, as
    /// a Kafka broker does: the listener's truststore verifies the other's certificate,
    /// and its host name unless `ssl.endpoint.identification.algorithm` is empty; the
    /// listener's keystore is this broker's certificate when the other asks for one.
    pub fn client_config(&self, listener: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let rejected = |reason: String| rejected(listener, reason);
        let (versions, provider, keystore) = self.protocol_and_keystore(listener)?;
        let roots = self
            .truststore(listener)?
            .ok_or_else(|| TlsError::NoPeerTruststore {
                listener: listener.to_string(),
            })?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| rejected(format!("truststore: {e}")))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| rejected(e.to_string()))?;
        // Kafka's default is `https`; set empty, any name the chain is valid for is taken.
        let checks_names = self
            .0
            .get(listener, "endpoint.identification.algorithm")
            .is_none_or(|v| v.trim().eq_ignore_ascii_case("https"));
        let builder = if checks_names {
            builder.with_webpki_verifier(verifier)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyHostName(verifier)))
        };
        Ok(Arc::new(
            builder.with_client_cert_resolver(Arc::new(keystore)),
        ))
    }

    /// What both sides of a TLS connection on `listener` start from: the enabled
    /// protocol versions, ring's provider limited to the enabled suites, and the keystore.
    fn protocol_and_keystore(
        &self,
        listener: &str,
    ) -> Result<
        (
            Vec<&'static SupportedProtocolVersion>,
            Arc<CryptoProvider>,
            Keystore,
        ),
        TlsError,
    > {
        let versions = self.protocol_versions(listener);
        let provider = Arc::new(self.provider(listener, &versions)?);
        let keystore = Keystore::open(self.keystore_source(listener)?, Arc::clone(&provider))
            .map_err(|e| match e {
                KeystoreError::Read(e) => e,
                KeystoreError::Rejected(reason) => {
                    rejected(listener, format!("keystore: {reason}"))
                }
            })?;
        Ok((versions, provider, keystore))
    }

    /// `ssl.enabled.protocols` on `listener` (TLS 1.2 and 1.3 when unset).
    fn protocol_versions(&self, listener: &str) -> Vec<&'static SupportedProtocolVersion> {
        let enabled = self
            .get(listener, "enabled.protocols")
            .unwrap_or("TLSv1.2,TLSv1.3");
        PROTOCOLS
            .iter()
            .filter(|(name, _)| list_items(enabled).any(|p| p.eq_ignore_ascii_case(name)))
            .map(|(_, version)| *version)
            .collect()
    }

    /// ring's provider, limited to `ssl.cipher.suites` when set.
    fn provider(
        &self,
        listener: &str,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Result<CryptoProvider, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|suite| {
            versions
                .iter()
                .any(|v| v.version == suite.version().version)
        });
        if let Some(wanted) = self.get(listener, "cipher.suites") {
            provider.cipher_suites.retain(|suite| {
                list_items(wanted).any(|name| Some(name) == suite_name(suite).as_deref())
            });
            if provider.cipher_suites.is_empty() {
                return Err(TlsError::Invalid {
                    key: "cipher.suites",
                    value: wanted.to_string(),
                    reason: format!(
                        "none is available with the enabled protocols; available: {}",
                        available_suites().join(", ")
                    ),
                });
            }
        }
        Ok(provider)
    }

    /// Where `listener`'s private key and certificate chain come from.
    fn keystore_source(&self, listener: &str) -> Result<PemSource, TlsError> {
        if let Some(path) = self.get(listener, "keystore.location") {
            return Ok(PemSource::File(PathBuf::from(path)));
        }
        let missing = || TlsError::NoKeystore {
            listener: listener.to_string(),
        };
        let key = self.get(listener, "keystore.key").ok_or_else(missing)?;
        let chain = self
            .get(listener, "keystore.certificate.chain")
            .ok_or_else(missing)?;
        Ok(PemSource::Inline(format!("{key}\n{chain}")))
    }

    /// The CA certificates client certificates are verified against, if any are set.
    fn truststore(&self, listener: &str) -> Result<Option<RootCertStore>, TlsError> {
        let source = if let Some(path) = self.get(listener, "truststore.location") {
            PemSource::File(PathBuf::from(path))
        } else if let Some(inline) = self.get(listener, "truststore.certificates") {
            PemSource::Inline(inline.to_string())
        } else {
            return Ok(None);
        };
        let pem = source.read(TRUSTSTORE_SETTINGS)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem.bytes) {
            let cert = cert.map_err(|e| pem.error(e))?;
            roots.add(cert).map_err(|e| pem.error(e))?;
        }
        if roots.is_empty() {
            return Err(pem.error("no certificate in it"));
        }
        Ok(Some(roots))
    }
}

/// `listener`'s stores or settings do not make a TLS configuration, for `reason`.
fn rejected(listener: &str, reason: String) -> TlsError {
    TlsError::Rejected {
        listener: listener.to_string(),
        reason,
    }
}

/// How often, at most, a handshake checks whether the keystore file changed.
const KEYSTORE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The settings a keystore's PEM comes from: a file, or the text itself (the key, then
/// `ssl.keystore.certificate.chain`).
const KEYSTORE_SETTINGS: (&str, &str) = ("ssl.keystore.location", "ssl.keystore.key");
/// The settings a truststore's PEM comes from: a file, or the text itself.
const TRUSTSTORE_SETTINGS: (&str, &str) =
    ("ssl.truststore.location", "ssl.truststore.certificates");

/// Where a store's PEM text is: a file, or the setting's value itself.
#[derive(Debug)]
enum PemSource {
    File(PathBuf),
    Inline(String),
}

/// A store's PEM text, and the setting and source an error about it names.
struct Pem {
    bytes: Vec<u8>,
    setting: &'static str,
    shown: String,
}

impl PemSource {
    /// Reads the text; `settings` are the store's file setting and its inline one.
    fn read(&self, (file, inline): (&'static str, &'static str)) -> Result<Pem, TlsError> {
        match self {
            PemSource::File(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
                    setting: file,
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Pem {
                    bytes,
                    setting: file,
                    shown,
                })
            }
            PemSource::Inline(text) => Ok(Pem {
                bytes: text.as_bytes().to_vec(),
                setting: inline,
                shown: "(inline)".to_string(),
            }),
        }
    }
}

impl Pem {
    fn error(&self, reason: impl ToString) -> TlsError {
        TlsError::Read {
            setting: self.setting,
            path: self.shown.clone(),
            reason: reason.to_string(),
        }
    }
}

enum KeystoreError {
    Read(TlsError),
    Rejected(rustls::Error),
}

/// A listener's certificate and key. One read from `ssl.keystore.location` is read again
/// when the file changes (looked at by a handshake at most once a second), so that a
/// certificate is rotated by replacing the file, without a restart. A replacement that
/// does not read keeps the certificate in use, with a warning.
#[derive(Debug)]
struct Keystore {
    source: PemSource,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The file's modification time and length when it was read.
    version: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl Keystore {
    fn open(source: PemSource, provider: Arc<CryptoProvider>) -> Result<Keystore, KeystoreError> {
        let version = source_version(&source);
        let key = load(&source, &provider)?;
        Ok(Keystore {
            source,
            provider,
            loaded: Mutex::new(Loaded {
                key,
                version,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to present, read again first if the file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let PemSource::File(path) = &self.source
            && loaded.checked.elapsed() >= KEYSTORE_CHECK_INTERVAL
        {
            loaded.checked = Instant::now();
            let version = source_version(&self.source);
            if version != loaded.version {
                loaded.version = version;
                match load(&self.source, &self.provider) {
                    Ok(key) => {
                        loaded.key = key;
                        tracing::info!(path = %path.display(), "keystore reloaded");
                    }
                    Err(KeystoreError::Read(e)) => {
                        tracing::warn!(error = %e, "keystore changed but does not read; keeping the certificate in use");
                    }
                    Err(KeystoreError::Rejected(e)) => {
                        tracing::warn!(path = %path.display(), error = %e, "keystore changed but its key and certificate do not match; keeping the certificate in use");
                    }
                }
            }
        }
        Arc::clone(&loaded.key)
    }
}

impl ResolvesServerCert for Keystore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Keystore {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a server's certificate chain but not the host name it is for
/// (`ssl.endpoint.identification.algorithm` set empty).
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The keystore file's modification time and length (`None` inline or unreadable).
fn source_version(source: &PemSource) -> Option<(SystemTime, u64)> {
    let PemSource::File(path) = source else {
        return None;
    };
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Reads a keystore: the certificate chain and the private key that matches its first
/// certificate.
fn load(source: &PemSource, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, KeystoreError> {
    let pem = source
        .read(KEYSTORE_SETTINGS)
        .map_err(KeystoreError::Read)?;
    let bad = |reason: String| KeystoreError::Read(pem.error(reason));
    let chain = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.bytes).map_err(|e| {
        bad(format!(
            "no usable private key in it ({e}); encrypted keys are not supported"
        ))
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(KeystoreError::Rejected)?;
    Ok(Arc::new(certified))
}

/// A TLS acceptor for each SSL listener of `config`, by listener name.
pub fn acceptors(config: &BrokerConfig) -> Result<BTreeMap<String, TlsAcceptor>, TlsError> {
    config
        .listeners
        .iter()
        .filter(|l| matches!(config.security_protocol(&l.name), Some("SSL" | "SASL_SSL")))
        .map(|l| {
            let tls = config.ssl.server_config(&l.name)?;
            Ok((l.name.clone(), TlsAcceptor::from(tls)))
        })
        .collect()
}

/// A cipher suite under its IANA name, as Kafka's `ssl.cipher.suites` lists them.
fn suite_name(suite: &SupportedCipherSuite) -> Option<String> {
    let name = suite.suite().as_str()?;
    Some(name.replacen("TLS13_", "TLS_", 1))
}

fn available_suites() -> Vec<String> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .filter_map(suite_name)
        .collect()
}

/// Checks what can be checked of one setting's value on its own.
fn check_value(key: &'static str, value: &str) -> Result<(), TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        key,
        value: value.to_string(),
        reason,
    };
    let value = value.trim();
    match key {
        "keystore.type" | "truststore.type" if !value.eq_ignore_ascii_case("PEM") => {
            Err(invalid("only PEM stores are supported".into()))
        }
        "key.password" | "keystore.password" | "truststore.password" if !value.is_empty() => Err(
            invalid("PEM stores take no password; give an unencrypted PKCS#8 key".into()),
        ),
        "client.auth" if !["required", "requested", "none"].contains(&value) => {
            Err(invalid("expected required, requested or none".into()))
        }
        "enabled.protocols"
            if list_items(value).next().is_none()
                || list_items(value).any(|p| {
                    !PROTOCOLS
                        .iter()
                        .any(|(name, _)| p.eq_ignore_ascii_case(name))
                }) =>
        {
            Err(invalid("expected TLSv1.2 and/or TLSv1.3".into()))
        }
        "protocol" if !["TLS", "TLSv1.2", "TLSv1.3"].contains(&value) => {
            Err(invalid("expected TLSv1.2 or TLSv1.3".into()))
        }
        "cipher.suites" => {
            let available = available_suites();
            match list_items(value).find(|name| !available.iter().any(|a| a == name)) {
                Some(unknown) => Err(invalid(format!(
                    "`{unknown}` is not available; available: {}",
                    available.join(", ")
                ))),
                None => Ok(()),
            }
        }
        "endpoint.identification.algorithm"
            if !(value.is_empty() || value.eq_ignore_ascii_case("https")) =>
        {
            Err(invalid("expected https or nothing".into()))
        }
        "principal.mapping.rules" => MappingRules::parse(value).map(|_| ()).map_err(invalid),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::ClientConfig;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA, a certificate it signed for localhost (the broker's) and one for a client,
    /// as PEM: (ca, server chain + key, client chain, client key).
    pub(crate) struct Pki {
        pub(crate) ca: String,
        server: String,
        client_chain: String,
        client_key: String,
    }

    impl Pki {
        /// The broker's key and its certificate chain, apart.
        pub(crate) fn server_key_and_chain(&self) -> (String, String) {
            let (key_start, _) = self.server.split_once("-----END PRIVATE KEY-----").unwrap();
            let key = format!("{key_start}-----END PRIVATE KEY-----\n");
            let chain = self.server[key.len()..].to_string();
            (key, chain)
        }
    }

    pub(crate) fn pki() -> Result<Pki, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "spool test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let server = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(
            &server_key,
            &ca,
            &ca_key,
        )?;
        let client_key = KeyPair::generate()?;
        let mut client_params = CertificateParams::new(Vec::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "alice");
        let client = client_params.signed_by(&client_key, &ca, &ca_key)?;
        Ok(Pki {
            ca: ca.pem(),
            server: format!("{}{}", server_key.serialize_pem(), server.pem()),
            client_chain: client.pem(),
            client_key: client_key.serialize_pem(),
        })
    }

    fn settings(pairs: &[(&str, &str)]) -> SslSettings {
        let mut settings = SslSettings::default();
        for (key, value) in pairs {
            assert_eq!(settings.set(None, key, value), Ok(true), "{key}");
        }
        settings
    }

    pub(crate) fn client(
        pki: &Pki,
        with_certificate: bool,
        versions: &[&'static SupportedProtocolVersion],
    ) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        if with_certificate {
            let chain = CertificateDer::pem_slice_iter(pki.client_chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        }
    }

    /// Connects `client` to a server with `server`'s configuration over an in-memory pipe
    /// and sends a byte each way: whether that worked.
    async fn talk(server: Arc<ServerConfig>, client: ClientConfig) -> bool {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serving = tokio::spawn(async move {
            let mut stream = acceptor.accept(far).await.ok()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ok()?;
            stream.write_all(&byte).await.ok()?;
            stream.flush().await.ok()
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").unwrap();
        let talked = async {
            let mut stream = connector.connect(name, near).await.ok()?;
            stream.write_all(b"k").await.ok()?;
            stream.flush().await.ok()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ok()?;
            (byte == *b"k").then_some(())
        }
        .await;
        let served = serving.await.ok().flatten();
        talked.is_some() && served.is_some()
    }

    pub(crate) const BOTH: &[&SupportedProtocolVersion] =
        &[&rustls::version::TLS12, &rustls::version::TLS13];

    #[tokio::test]
    async fn a_keystore_file_serves_tls_and_client_certificates_are_enforced_as_configured() {
        let pki = pki().unwrap();
        let dir = std::env::temp_dir().join(format!("spool-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keystore = dir.join("broker.pem");
        let truststore = dir.join("ca.pem");
        std::fs::write(&keystore, &pki.server).unwrap();
        std::fs::write(&truststore, &pki.ca).unwrap();
        let keystore = keystore.display().to_string();
        let truststore = truststore.display().to_string();

        let plain = settings(&[("keystore.location", &keystore)]);
        let config = plain.server_config("SSL").unwrap();
        assert!(talk(Arc::clone(&config), client(&pki, false, BOTH)).await);

        // With a certificate, served either way; without one, only when merely requested.
        for (auth, anonymous_served) in [("required", false), ("requested", true)] {
            let config = settings(&[
                ("keystore.location", &keystore),
                ("truststore.location", &truststore),
                ("client.auth", auth),
            ])
            .server_config("SSL")
            .unwrap();
            assert!(
                talk(Arc::clone(&config), client(&pki, true, BOTH)).await,
                "{auth}"
            );
            assert_eq!(
                talk(config, client(&pki, false, BOTH)).await,
                anonymous_served,
                "{auth}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_replaced_keystore_file_is_served_without_a_restart_and_a_broken_one_is_not() {
        let (old, new) = (pki().unwrap(), pki().unwrap());
        let dir = std::env::temp_dir().join(format!("spool-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keystore = dir.join("broker.pem");
        std::fs::write(&keystore, &old.server).unwrap();
        let config = settings(&[("keystore.location", &keystore.display().to_string())])
            .server_config("SSL")
            .unwrap();
        assert!(talk(Arc::clone(&config), client(&old, false, BOTH)).await);
        assert!(!talk(Arc::clone(&config), client(&new, false, BOTH)).await);

        // The file is replaced by a certificate of another CA: served once looked at again.
        std::fs::write(&keystore, &new.server).unwrap();
        tokio::time::sleep(KEYSTORE_CHECK_INTERVAL + Duration::from_millis(100)).await;
        assert!(talk(Arc::clone(&config), client(&new, false, BOTH)).await);
        assert!(!talk(Arc::clone(&config), client(&old, false, BOTH)).await);

        // A replacement that does not read (a key without its certificate) changes nothing.
        std::fs::write(&keystore, &new.client_key).unwrap();
        tokio::time::sleep(KEYSTORE_CHECK_INTERVAL + Duration::from_millis(100)).await;
        assert!(talk(config, client(&new, false, BOTH)).await);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn inline_stores_protocols_and_cipher_suites_are_honoured() {
        let pki = pki().unwrap();
        let (key, chain) = pki.server_key_and_chain();
        let tls13 = settings(&[
            ("keystore.key", &key),
            ("keystore.certificate.chain", &chain),
            ("enabled.protocols", "TLSv1.3"),
        ]);
        let config = tls13.server_config("SSL").unwrap();
        assert!(
            talk(
                Arc::clone(&config),
                client(&pki, false, &[&rustls::version::TLS13])
            )
            .await
        );
        assert!(!talk(config, client(&pki, false, &[&rustls::version::TLS12])).await);

        let one_suite = settings(&[
            ("keystore.key", &key),
            ("keystore.certificate.chain", &chain),
            ("cipher.suites", "TLS_AES_256_GCM_SHA384"),
        ]);
        let config = one_suite.server_config("SSL").unwrap();
        assert_eq!(config.crypto_provider().cipher_suites.len(), 1);
        assert!(talk(config, client(&pki, false, BOTH)).await);
    }

    #[test]
    fn a_listeners_own_setting_wins_over_the_general_one() {
        let mut settings = SslSettings::default();
        assert_eq!(settings.set(None, "client.auth", "required"), Ok(true));
        assert_eq!(
            settings.set(Some("external"), "client.auth", "none"),
            Ok(true)
        );
        assert_eq!(settings.client_auth("EXTERNAL"), ClientAuth::None);
        assert_eq!(settings.client_auth("INTERNAL"), ClientAuth::Required);
        assert_eq!(settings.set(None, "no.such.setting", "x"), Ok(false));
    }

    #[test]
    fn values_that_cannot_work_are_refused_naming_the_setting() {
        let mut settings = SslSettings::default();
        for (key, value) in [
            ("client.auth", "sometimes"),
            ("keystore.type", "JKS"),
            ("key.password", "secret"),
            ("enabled.protocols", "TLSv1.1"),
            ("cipher.suites", "TLS_RSA_WITH_RC4_128_MD5"),
            ("endpoint.identification.algorithm", "dns"),
        ] {
            let refused = settings.set(None, key, value);
            assert!(
                matches!(&refused, Err(TlsError::Invalid { key: k, .. }) if *k == key),
                "{key}={value}: {refused:?}"
            );
        }
        assert_eq!(
            settings.server_config("SSL").err(),
            Some(TlsError::NoKeystore {
                listener: "SSL".into()
            })
        );
        let missing = settings_with_missing_file();
        assert!(
            matches!(
                missing,
                Err(TlsError::Read {
                    setting: "ssl.keystore.location",
                    ..
                })
            ),
            "{missing:?}"
        );
    }

    fn settings_with_missing_file() -> Result<Arc<ServerConfig>, TlsError> {
        settings(&[("keystore.location", "/nonexistent/spool/broker.pem")]).server_config("SSL")
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let pki = pki().unwrap();
        let mismatched = settings(&[
            ("keystore.key", &pki.client_key),
            ("keystore.certificate.chain", &pki.server),
        ]);
        let refused = mismatched.server_config("SSL");
        assert!(
            matches!(&refused, Err(TlsError::Rejected { reason, .. }) if reason.starts_with("keystore")),
            "{refused:?}"
        );
    }

    #[test]
    fn required_client_certificates_need_a_truststore() {
        let pki = pki().unwrap();
        let settings = settings(&[
            ("keystore.key", &pki.client_key),
            ("keystore.certificate.chain", &pki.client_chain),
            ("client.auth", "required"),
        ]);
        assert_eq!(
            settings.server_config("SSL").err(),
            Some(TlsError::NoTruststore {
                listener: "SSL".into()
            })
        );
    }
}
