//! How connections to brokers are secured, as Kafka's `security.protocol` says: TLS
//! around the TCP connection (rustls) for SSL and SASL_SSL, and a SASL login (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512) after ApiVersions for SASL_PLAINTEXT and SASL_SSL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256, Sha512};
use spool_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::connection::{BoxStream, Connection};
use crate::error::{Error, Result};
use crate::security::{ScramMechanism, salted_password};

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name for it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let all = [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ];
        match all.into_iter().find(|p| p.name().eq_ignore_ascii_case(s)) {
            Some(protocol) => Ok(protocol),
            None => Err(format!(
                "unknown security protocol {s:?} (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)"
            )),
        }
    }
}

/// How TLS connections are checked and who the client is (`ssl.*` of Kafka's clients,
/// with PEM files).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// CA certificates (PEM) that brokers' certificates must chain to
    /// (`ssl.ca.location`); the system's trusted roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate chain (PEM), for brokers that ask for one
    /// (`ssl.certificate.location`).
    pub certificate_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, `ssl.key.location`).
    pub key_file: Option<PathBuf>,
}

/// A SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let all = [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ];
        match all.into_iter().find(|m| m.name().eq_ignore_ascii_case(s)) {
            Some(mechanism) => Ok(mechanism),
            None => Err(format!(
                "unknown SASL mechanism {s:?} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )),
        }
    }
}

/// A SASL login (`sasl.mechanism`, `sasl.username`, `sasl.password`).
#[derive(Clone)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Builds the TLS connector `settings` describe: its trusted roots, and the client's
/// certificate when both files are given.
pub(crate) fn tls_connector(settings: &TlsSettings) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            for certificate in read_certificates(path)? {
                roots.add(certificate).map_err(|e| {
                    Error::Invalid(format!(
                        "{}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for certificate in found.certs {
                // Some system stores hold certificates rustls cannot use; the rest serve.
                let _ = roots.add(certificate);
            }
        }
    }
    if roots.is_empty() {
        return Err(Error::Invalid(
            "no trusted CA certificates: name a CA file (ssl.ca.location)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (&settings.certificate_file, &settings.key_file) {
        (Some(certificate), Some(key)) => {
            let chain = read_certificates(certificate)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Invalid(format!("{}: no private key: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Invalid(format!("the client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Invalid(
                "a client certificate needs both its certificate and its key file".into(),
            ));
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certificates)
}

/// Runs the TLS handshake with the broker at `address` (its host is the name checked
/// against its certificate).
pub(crate) async fn secure(
    connector: &TlsConnector,
    address: &str,
    stream: TcpStream,
) -> Result<BoxStream> {
    let failed = |reason: String| Error::Connection {
        broker: address.to_string(),
        reason,
    };
    let host = match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| failed(format!("not a TLS server name: {e}")))?;
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|e| failed(format!("TLS handshake failed: {e}")))?;
    Ok(Box::new(stream))
}

/// Logs in on `connection` as `settings` say: SaslHandshake (v1), then SaslAuthenticate
/// until the mechanism is done. A refused login is the broker's error
/// (SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM).
pub(crate) async fn login(connection: &Connection, settings: &SaslSettings) -> Result<()> {
    let context = || {
        format!(
            "SASL login as {} on broker {}",
            settings.username,
            connection.broker()
        )
    };
    let handshake = SaslHandshakeRequest {
        mechanism: settings.mechanism.name().to_string(),
    };
    let (answer, _) = connection.send(handshake, None).await?;
    Error::check(
        answer.error_code,
        context(),
        Some(format!(
            "{} is not enabled there (it offers {})",
            settings.mechanism.name(),
            answer.mechanisms.join(", ")
        )),
    )?;
    let authenticate = |bytes: Vec<u8>| async move {
        let request = SaslAuthenticateRequest {
            auth_bytes: Bytes::from(bytes),
            ..Default::default()
        };
        let (answer, _) = connection.send(request, None).await?;
        Error::check(answer.error_code, context(), answer.error_message)?;
        Ok::<Bytes, Error>(answer.auth_bytes)
    };
    match settings.mechanism {
        SaslMechanism::Plain => {
            let token = format!("\0{}\0{}", settings.username, settings.password);
            authenticate(token.into_bytes()).await?;
        }
        SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
            let mechanism = if settings.mechanism == SaslMechanism::ScramSha256 {
                ScramMechanism::Sha256
            } else {
                ScramMechanism::Sha512
            };
            let mut nonce = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut nonce);
            let scram = Scram::new(mechanism, &settings.username, STANDARD.encode(nonce));
            let server_first = authenticate(scram.client_first().into_bytes()).await?;
            let server_first = String::from_utf8_lossy(&server_first).into_owned();
            let (client_final, expected) = scram
                .client_final(&settings.password, &server_first)
                .map_err(|reason| Error::Protocol {
                    broker: connection.broker().to_string(),
                    reason,
                })?;
            let server_final = authenticate(client_final.into_bytes()).await?;
            verify_server(&String::from_utf8_lossy(&server_final), &expected).map_err(
                |reason| Error::Protocol {
                    broker: connection.broker().to_string(),
                    reason,
                },
            )?;
        }
    }
    Ok(())
}

/// The client's side of a SCRAM exchange (RFC 5802), without channel binding.
struct Scram {
    mechanism: ScramMechanism,
    /// `n=USER,r=NONCE`.
    first_bare: String,
    nonce: String,
}

impl Scram {
    fn new(mechanism: ScramMechanism, username: &str, nonce: String) -> Scram {
        let username = username.replace('=', "=3D").replace(',', "=2C");
        Scram {
            mechanism,
            first_bare: format!("n={username},r={nonce}"),
            nonce,
        }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// The client-final message for `server_first`, and the server signature the server
    /// must then show.
    fn client_final(
        &self,
        password: &str,
        server_first: &str,
    ) -> std::result::Result<(String, Vec<u8>), String> {
        let attribute = |name: &str| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("the SCRAM server-first message has no {name}"))
        };
        let nonce = attribute("r")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the SCRAM server nonce does not extend the client's".into());
        }
        let salt = STANDARD
            .decode(attribute("s")?)
            .map_err(|e| format!("the SCRAM salt is not base64: {e}"))?;
        let iterations: u32 = attribute("i")?
            .parse()
            .map_err(|_| "the SCRAM iteration count is not a number".to_string())?;
        if iterations == 0 {
            return Err("the SCRAM iteration count is 0".into());
        }
        let salted = salted_password(self.mechanism, password, &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let client_key = hmac(self.mechanism, &salted, b"Client Key");
        let stored_key = hash(self.mechanism, &client_key);
        let signature = hmac(self.mechanism, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(self.mechanism, &salted, b"Server Key");
        let server_signature = hmac(self.mechanism, &server_key, auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", STANDARD.encode(proof)),
            server_signature,
        ))
    }
}

/// Checks the server-final message: the server proves it knows the password too.
fn verify_server(server_final: &str, expected: &[u8]) -> std::result::Result<(), String> {
    if let Some(error) = server_final.strip_prefix("e=") {
        return Err(format!("the SCRAM server refused: {error}"));
    }
    let signature = server_final
        .split(',')
        .find_map(|part| part.strip_prefix("v="))
        .and_then(|v| STANDARD.decode(v).ok())
        .ok_or("the SCRAM server-final message has no signature")?;
    if bool::from(signature.ct_eq(expected)) {
        Ok(())
    } else {
        Err("the broker's SCRAM signature is wrong: it does not know the password".into())
    }
}

fn hash(mechanism: ScramMechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
        ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
    }
}

fn hmac(mechanism: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so the error case does not happen.
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        <M as hmac::digest::KeyInit>::new_from_slice(key)
            .map(|mac| mac.chain_update(data).finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }
    match mechanism {
        ScramMechanism::Sha256 => run::<Hmac<Sha256>>(key, data),
        ScramMechanism::Sha512 => run::<Hmac<Sha512>>(key, data),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn scram_sha_256_matches_rfc_7677s_example() {
        let scram = Scram::new(
            ScramMechanism::Sha256,
            "user",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, expected) = scram.client_final("pencil", server_first).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            verify_server("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", &expected),
            Ok(())
        );
        assert!(verify_server("v=AAAA", &expected).is_err());
        assert!(verify_server("e=invalid-proof", &expected).is_err());
    }

    #[test]
    fn a_server_nonce_that_does_not_extend_the_clients_is_refused() {
        let scram = Scram::new(ScramMechanism::Sha512, "a=b,c", "abc".into());
        assert_eq!(scram.client_first(), "n,,n=a=3Db=2Cc,r=abc");
        for server_first in [
            "r=xyz,s=AAAA,i=4096",
            "r=abc,s=AAAA,i=4096",
            "r=abcd,s=AAAA,i=0",
        ] {
            assert!(
                scram.client_final("pw", server_first).is_err(),
                "{server_first}"
            );
        }
    }

    #[test]
    fn protocol_and_mechanism_names_parse_as_kafka_spells_them() {
        assert_eq!("sasl_ssl".parse(), Ok(SecurityProtocol::SaslSsl));
        assert!("SASL_SSL".parse::<SecurityProtocol>().unwrap().uses_tls());
        assert!(
            !"SASL_PLAINTEXT"
                .parse::<SecurityProtocol>()
                .unwrap()
                .uses_tls()
        );
        assert!("tls".parse::<SecurityProtocol>().is_err());
        assert_eq!("scram-sha-512".parse(), Ok(SaslMechanism::ScramSha512));
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
    }
}
