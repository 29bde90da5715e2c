//! Authentication: who is on the other end of a connection.
//!
//! On a SASL_PLAINTEXT or SASL_SSL listener a client logs in before anything else: it may
//! ask ApiVersions, then names a mechanism in SaslHandshake and exchanges SaslAuthenticate
//! messages until the [`Authenticator`] accepts or refuses it. Until then the connection
//! reads only those three requests, from frames of at most `sasl.server.max.receive.size`
//! bytes. A refusal is answered with SASL_AUTHENTICATION_FAILED after
//! `connection.failed.authentication.delay.ms`, then the connection closes.
//!
//! With `connections.max.reauth.ms` set, a session lasts that long (KIP-368): the client
//! logs in again on the same connection (as the same user) before it ends, or the
//! connection is closed at its next request.
//!
//! Mechanisms: PLAIN ([`plain`]) and SCRAM-SHA-256/512 ([`scram`], credentials in the
//! metadata log, managed with AlterUserScramCredentials).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use spool_protocol::ErrorCode;
use spool_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};

use crate::config::{BrokerConfig, PerListener, list_items};

pub mod oauthbearer;
pub mod plain;
pub mod principal;
pub mod scram;

use oauthbearer::{TokenSettings, TokenValidator};
use plain::PlainUsers;
use scram::{Credential, ScramServer, Step};

/// Who sent a request, as ACLs name it: `User:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    pub name: String,
}

impl Principal {
    /// A connection that did not authenticate (PLAINTEXT, or SSL without a client
    /// certificate).
    pub fn anonymous() -> Principal {
        Principal {
            name: "ANONYMOUS".into(),
        }
    }

    pub fn user(name: &str) -> Principal {
        Principal { name: name.into() }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User:{}", self.name)
    }
}

/// A SASL mechanism this broker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(scram::Mechanism),
    OAuthBearer,
}

impl Mechanism {
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "OAUTHBEARER" => Some(Mechanism::OAuthBearer),
            other => scram::Mechanism::from_name(other).map(Mechanism::Scram),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// The settings (after an optional `listener.name.<listener>.` prefix) this module owns.
const SETTINGS: &[&str] = &[
    "sasl.enabled.mechanisms",
    "sasl.plain.users.file",
    "plain.sasl.jaas.config",
    "scram-sha-256.sasl.jaas.config",
    "scram-sha-512.sasl.jaas.config",
    "connections.max.reauth.ms",
    "sasl.server.max.receive.size",
    "connection.failed.authentication.delay.ms",
    "sasl.oauthbearer.jwks.endpoint.url",
    "sasl.oauthbearer.expected.issuer",
    "sasl.oauthbearer.expected.audience",
    "sasl.oauthbearer.sub.claim.name",
    "sasl.oauthbearer.clock.skew.seconds",
    "oauthbearer.sasl.jaas.config",
    "oauthbearer.sasl.server.callback.handler.class",
    "sasl.mechanism.inter.broker.protocol",
];

/// Kafka's validating callback handler: what `oauthbearer.sasl.server.callback.handler.class`
/// may name (it is what this broker does).
const OAUTH_VALIDATOR: &str =
    "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler";

/// Kafka's defaults where they differ from "unset". Kafka enables GSSAPI by default,
/// which this broker does not serve: SCRAM is the default here.
const DEFAULTS: &[(&str, &str)] = &[
    ("sasl.enabled.mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512"),
    ("connections.max.reauth.ms", "0"),
    ("sasl.server.max.receive.size", "524288"),
    ("connection.failed.authentication.delay.ms", "100"),
    ("sasl.oauthbearer.sub.claim.name", "sub"),
    ("sasl.oauthbearer.clock.skew.seconds", "30"),
];

/// The SASL settings, general or for one listener (`listener.name.<name>.…`, which wins).
#[derive(Debug, Clone, Default)]
pub struct SaslSettings(PerListener);

impl SaslSettings {
    /// Sets `key` for every listener or for `listener` only, checking what the value alone
    /// can tell. `false` when `key` is not a SASL setting.
    pub fn set(&mut self, listener: Option<&str>, key: &str, value: &str) -> Result<bool, String> {
        let Some(key) = SETTINGS.iter().copied().find(|k| *k == key) else {
            return Ok(false);
        };
        let value = value.trim();
        match key {
            "sasl.enabled.mechanisms" => {
                for name in list_items(value) {
                    if Mechanism::from_name(name).is_none() {
                        return Err(format!(
                            "`{name}` is not a mechanism this broker serves (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)"
                        ));
                    }
                }
            }
            "plain.sasl.jaas.config" => PlainUsers::default().add_jaas(value)?,
            "sasl.mechanism.inter.broker.protocol" => match Mechanism::from_name(value) {
                Some(Mechanism::Plain | Mechanism::Scram(_)) => {}
                _ => {
                    return Err(format!(
                        "brokers log in to each other with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not `{value}`"
                    ));
                }
            },
            "sasl.oauthbearer.jwks.endpoint.url" => {
                oauthbearer::jwks_path(value)?;
            }
            "sasl.oauthbearer.clock.skew.seconds" => {
                value
                    .parse::<u64>()
                    .map_err(|_| "must be a number of seconds".to_string())?;
            }
            "oauthbearer.sasl.server.callback.handler.class" if value != OAUTH_VALIDATOR => {
                return Err(format!("the handler served is {OAUTH_VALIDATOR}"));
            }
            "scram-sha-256.sasl.jaas.config"
            | "scram-sha-512.sasl.jaas.config"
            | "oauthbearer.sasl.jaas.config" => {
                // Kafka's ScramLoginModule takes no server options: checked, then unused.
                PlainUsers::default().add_jaas(value)?
            }
            "connections.max.reauth.ms" | "connection.failed.authentication.delay.ms" => {
                value
                    .parse::<u64>()
                    .map_err(|_| "must be a number of milliseconds".to_string())?;
            }
            "sasl.server.max.receive.size" => {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v >= 64)
                    .ok_or("must be a number of bytes, at least 64")?;
            }
            _ => {}
        }
        if key.ends_with("sasl.jaas.config") && listener.is_none() {
            return Err(
                "set it for a listener: listener.name.<listener>.<mechanism>.sasl.jaas.config"
                    .into(),
            );
        }
        self.0.insert(listener, key, value);
        Ok(true)
    }

    /// The value of `key` in force on `listener` (Spool's default when not given).
    pub fn get(&self, listener: &str, key: &str) -> Option<&str> {
        self.0
            .get(listener, key)
            .or_else(|| DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
    }

    /// The number `key` is on `listener` (0 when unset or not a number).
    pub(crate) fn number(&self, listener: &str, key: &str) -> u64 {
        self.get(listener, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// OAUTHBEARER's validator on `listener`: reads the JWKS file.
    fn token_validator(&self, listener: &str) -> Result<TokenValidator, String> {
        let url = self
            .get(listener, "sasl.oauthbearer.jwks.endpoint.url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                format!("listener `{listener}` enables OAUTHBEARER: set sasl.oauthbearer.jwks.endpoint.url to a JWKS file")
            })?;
        let path = oauthbearer::jwks_path(url)?;
        let jwks = std::fs::read_to_string(path).map_err(|e| {
            format!("cannot read `{path}` (sasl.oauthbearer.jwks.endpoint.url): {e}")
        })?;
        TokenValidator::new(TokenSettings {
            jwks: &jwks,
            issuer: self
                .get(listener, "sasl.oauthbearer.expected.issuer")
                .filter(|i| !i.is_empty()),
            audience: list_items(
                self.get(listener, "sasl.oauthbearer.expected.audience")
                    .unwrap_or(""),
            )
            .map(str::to_string)
            .collect(),
            sub_claim: self
                .get(listener, "sasl.oauthbearer.sub.claim.name")
                .unwrap_or("sub"),
            clock_skew_seconds: self.number(listener, "sasl.oauthbearer.clock.skew.seconds"),
        })
        .map_err(|e| format!("`{path}` (sasl.oauthbearer.jwks.endpoint.url): {e}"))
    }

    /// What SASL listener `listener` serves: reads the PLAIN users file if one is set.
    pub fn listener(&self, listener: &str) -> Result<ListenerSasl, String> {
        let mechanisms: Vec<Mechanism> =
            list_items(self.get(listener, "sasl.enabled.mechanisms").unwrap_or(""))
                .filter_map(Mechanism::from_name)
                .collect();
        if mechanisms.is_empty() {
            return Err(format!(
                "listener `{listener}` is SASL but sasl.enabled.mechanisms is empty"
            ));
        }
        let mut plain = PlainUsers::default();
        if let Some(jaas) = self.get(listener, "plain.sasl.jaas.config") {
            plain.add_jaas(jaas)?;
        }
        if let Some(path) = self
            .get(listener, "sasl.plain.users.file")
            .filter(|p| !p.is_empty())
        {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{path}` (sasl.plain.users.file): {e}"))?;
            plain
                .add_file(&text)
                .map_err(|e| format!("`{path}` (sasl.plain.users.file): {e}"))?;
        }
        let oauth = if mechanisms.contains(&Mechanism::OAuthBearer) {
            Some(self.token_validator(listener)?)
        } else {
            None
        };
        if mechanisms.contains(&Mechanism::Plain) && plain.is_empty() {
            return Err(format!(
                "listener `{listener}` enables PLAIN but has no users: set listener.name.{}.plain.sasl.jaas.config or sasl.plain.users.file",
                listener.to_ascii_lowercase()
            ));
        }
        Ok(ListenerSasl {
            mechanisms,
            plain,
            oauth,
            reauth_ms: self.number(listener, "connections.max.reauth.ms"),
            max_receive_bytes: self.number(listener, "sasl.server.max.receive.size") as usize,
            failed_delay_ms: self.number(listener, "connection.failed.authentication.delay.ms"),
        })
    }
}

/// What a SASL listener serves, read once at start.
#[derive(Debug)]
pub struct ListenerSasl {
    pub mechanisms: Vec<Mechanism>,
    plain: PlainUsers,
    /// OAUTHBEARER's keys and expected claims, when it is enabled.
    oauth: Option<TokenValidator>,
    /// `connections.max.reauth.ms`: how long a session lasts (0: for ever).
    pub reauth_ms: u64,
    /// `sasl.server.max.receive.size`: the largest frame read before login.
    pub max_receive_bytes: usize,
    /// `connection.failed.authentication.delay.ms`.
    pub failed_delay_ms: u64,
}

/// The SASL settings of every SASL listener, by listener name.
pub fn sasl_listeners(
    config: &BrokerConfig,
) -> Result<BTreeMap<String, Arc<ListenerSasl>>, String> {
    config
        .listeners
        .iter()
        .filter(|l| {
            config
                .security_protocol(&l.name)
                .is_some_and(|p| p.starts_with("SASL_"))
        })
        .map(|l| Ok((l.name.clone(), Arc::new(config.sasl.listener(&l.name)?))))
        .collect()
}

/// One connection's logins: the first, and re-authentications.
pub struct Authenticator {
    sasl: Arc<ListenerSasl>,
    state: State,
    /// Who logged in, once someone has.
    user: Option<String>,
    /// How long the last login lasts, in milliseconds (0: for ever).
    session_ms: u64,
}

enum State {
    /// Waiting for SaslHandshake.
    Handshake,
    Plain,
    Scram(ScramServer),
    OAuthBearer,
}

/// What a SaslAuthenticate request led to.
pub enum Authenticated {
    /// The exchange goes on: send the response.
    Continue(SaslAuthenticateResponse),
    /// Logged in as this user: send the response.
    Done(SaslAuthenticateResponse, String),
    /// Refused: wait `connection.failed.authentication.delay.ms`, send the response and
    /// close the connection.
    Failed(SaslAuthenticateResponse),
}

impl Authenticator {
    pub fn new(sasl: Arc<ListenerSasl>) -> Authenticator {
        Authenticator {
            sasl,
            state: State::Handshake,
            user: None,
            session_ms: 0,
        }
    }

    pub fn settings(&self) -> &ListenerSasl {
        &self.sasl
    }

    /// How long the last login lasts, in milliseconds (0: until the connection closes):
    /// `connections.max.reauth.ms`, and for OAUTHBEARER no longer than the token.
    pub fn session_ms(&self) -> u64 {
        self.session_ms
    }

    /// SaslHandshake: picks the mechanism. The answer, and whether the connection may go
    /// on (an unknown mechanism, or a handshake in the middle of an exchange, closes it).
    pub fn handshake(&mut self, request: &SaslHandshakeRequest) -> (SaslHandshakeResponse, bool) {
        let mechanisms = self
            .sasl
            .mechanisms
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let chosen = self
            .sasl
            .mechanisms
            .iter()
            .copied()
            .find(|m| m.name() == request.mechanism);
        let (error, ok) = match (&self.state, chosen) {
            (State::Handshake, Some(mechanism)) => {
                self.state = match mechanism {
                    Mechanism::Plain => State::Plain,
                    Mechanism::Scram(m) => State::Scram(ScramServer::new(m)),
                    Mechanism::OAuthBearer => State::OAuthBearer,
                };
                (ErrorCode::None, true)
            }
            (State::Handshake, None) => (ErrorCode::UnsupportedSaslMechanism, false),
            _ => (ErrorCode::IllegalSaslState, false),
        };
        (
            SaslHandshakeResponse {
                error_code: error.code(),
                mechanisms,
            },
            ok,
        )
    }

    /// Starts over for a re-authentication (KIP-368): the next request is SaslHandshake.
    pub fn restart(&mut self) {
        self.state = State::Handshake;
    }

    /// SaslAuthenticate: one step of the chosen mechanism. `scram_credential` finds a
    /// user's SCRAM credential for a mechanism.
    pub fn authenticate(
        &mut self,
        request: &SaslAuthenticateRequest,
        scram_credential: impl FnOnce(&str, scram::Mechanism) -> Option<Credential>,
    ) -> Authenticated {
        let state = std::mem::replace(&mut self.state, State::Handshake);
        // OAUTHBEARER: when the token expires (seconds since the epoch).
        let mut token_expiry = None;
        let stepped = match state {
            State::Handshake => Err((
                ErrorCode::IllegalSaslState,
                "SaslAuthenticate before SaslHandshake".to_string(),
            )),
            State::Plain => self
                .sasl
                .plain
                .authenticate(&request.auth_bytes)
                .map(|user| Step::Done {
                    user,
                    response: Vec::new(),
                })
                .map_err(|e| (ErrorCode::SaslAuthenticationFailed, e.to_string())),
            State::OAuthBearer => self
                .bearer(&request.auth_bytes)
                .map(|accepted| {
                    token_expiry = Some(accepted.expires_at);
                    Step::Done {
                        user: accepted.principal,
                        response: Vec::new(),
                    }
                })
                .map_err(|e| (ErrorCode::SaslAuthenticationFailed, e)),
            State::Scram(mut server) => {
                let mechanism = server.mechanism();
                let step = server
                    .step(&request.auth_bytes, |user| {
                        scram_credential(user, mechanism)
                    })
                    .map_err(|e| (ErrorCode::SaslAuthenticationFailed, e.to_string()));
                if matches!(step, Ok(Step::Continue(_))) {
                    self.state = State::Scram(server);
                }
                step
            }
        };
        let response =
            |error: ErrorCode, message: Option<String>, bytes: Vec<u8>| SaslAuthenticateResponse {
                error_code: error.code(),
                error_message: message,
                auth_bytes: bytes.into(),
                ..Default::default()
            };
        match stepped {
            Ok(Step::Continue(bytes)) => {
                Authenticated::Continue(response(ErrorCode::None, None, bytes))
            }
            Ok(Step::Done {
                user,
                response: bytes,
            }) => {
                // A re-authentication must keep the connection's user.
                if let Some(previous) = self.user.as_ref().filter(|p| **p != user) {
                    return Authenticated::Failed(response(
                        ErrorCode::SaslAuthenticationFailed,
                        Some(format!(
                            "Cannot change principals during re-authentication from User:{previous} to User:{user}"
                        )),
                        Vec::new(),
                    ));
                }
                self.user = Some(user.clone());
                self.session_ms = session_ms(self.sasl.reauth_ms, token_expiry);
                let mut ok = response(ErrorCode::None, None, bytes);
                ok.session_lifetime_ms = i64::try_from(self.session_ms).unwrap_or(i64::MAX);
                Authenticated::Done(ok, user)
            }
            Err((error, message)) => {
                Authenticated::Failed(response(error, Some(message), Vec::new()))
            }
        }
    }
}

impl Authenticator {
    /// OAUTHBEARER: the token's principal and expiry, or why it is refused.
    fn bearer(&self, message: &[u8]) -> Result<oauthbearer::Accepted, String> {
        let validator = self
            .sasl
            .oauth
            .as_ref()
            .ok_or("OAUTHBEARER is not configured")?;
        let (authzid, token) = oauthbearer::parse_message(message)?;
        let accepted = validator.validate(token)?;
        if authzid.is_some_and(|id| id != accepted.principal) {
            return Err("the authorization ID is not the token's principal".into());
        }
        Ok(accepted)
    }
}

/// A login's lifetime in milliseconds (0: for ever): `connections.max.reauth.ms` (0 when
/// unset), and no longer than the token it was made with, as Kafka reckons it.
fn session_ms(reauth_ms: u64, token_expiry_seconds: Option<u64>) -> u64 {
    let Some(expiry) = token_expiry_seconds else {
        return reauth_ms;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // At least a millisecond: 0 would mean "for ever".
    let remaining = expiry.saturating_mul(1000).saturating_sub(now_ms).max(1);
    if reauth_ms == 0 {
        remaining
    } else {
        remaining.min(reauth_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_settings_and_session_lifetimes() {
        let mut settings = SaslSettings::default();
        assert_eq!(
            settings.set(None, "sasl.enabled.mechanisms", "OAUTHBEARER"),
            Ok(true)
        );
        assert!(
            settings
                .set(
                    None,
                    "sasl.oauthbearer.jwks.endpoint.url",
                    "https://idp/jwks"
                )
                .is_err(),
            "keys are never fetched"
        );
        assert!(
            settings
                .set(
                    Some("SASL_SSL"),
                    "oauthbearer.sasl.server.callback.handler.class",
                    "com.example.Handler"
                )
                .is_err()
        );
        // Enabled without keys: the listener cannot start.
        assert!(settings.listener("SASL_SSL").is_err());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        assert_eq!(session_ms(0, None), 0);
        assert_eq!(session_ms(5000, None), 5000);
        assert!((9_000..=10_000).contains(&session_ms(0, Some(now + 10))));
        assert_eq!(session_ms(3000, Some(now + 10)), 3000);
        assert_eq!(session_ms(3000, Some(now - 10)), 1);
    }

    #[test]
    fn settings_go_by_listener_and_bad_ones_are_refused() {
        let mut settings = SaslSettings::default();
        assert_eq!(
            settings
                .set(None, "sasl.enabled.mechanisms", "GSSAPI")
                .map_err(|_| ()),
            Err(())
        );
        assert!(
            settings
                .set(
                    None,
                    "plain.sasl.jaas.config",
                    "PlainLoginModule required user_a=\"b\";"
                )
                .is_err(),
            "JAAS settings belong to a listener"
        );
        assert_eq!(
            settings
                .set(None, "sasl.server.max.receive.size", "10")
                .map_err(|_| ()),
            Err(())
        );
        assert_eq!(
            settings.set(None, "sasl.kerberos.service.name", "kafka"),
            Ok(false)
        );
        assert_eq!(
            settings.set(Some("external"), "sasl.enabled.mechanisms", "PLAIN"),
            Ok(true)
        );
        // PLAIN without users stops the start.
        assert!(settings.listener("EXTERNAL").is_err());
        let jaas = "org.apache.kafka.common.security.plain.PlainLoginModule required user_a=\"b\";";
        assert_eq!(
            settings.set(Some("external"), "plain.sasl.jaas.config", jaas),
            Ok(true)
        );
        assert_eq!(
            settings.set(None, "connections.max.reauth.ms", "60000"),
            Ok(true)
        );
        let external = settings.listener("EXTERNAL").unwrap();
        assert_eq!(external.mechanisms, [Mechanism::Plain]);
        assert_eq!(
            (
                external.reauth_ms,
                external.max_receive_bytes,
                external.failed_delay_ms
            ),
            (60_000, 524_288, 100)
        );
        let internal = settings.listener("INTERNAL").unwrap();
        assert_eq!(
            internal.mechanisms,
            [
                Mechanism::Scram(scram::Mechanism::Sha256),
                Mechanism::Scram(scram::Mechanism::Sha512)
            ]
        );
    }
}
