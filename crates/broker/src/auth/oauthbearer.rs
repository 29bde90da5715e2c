//! SASL/OAUTHBEARER (RFC 7628, Kafka's KIP-255 and KIP-768 validation): the client sends a
//! JSON Web Token, which the broker checks against keys it was given, never fetching
//! anything a token names.
//!
//! - Keys: a JWKS file named by `sasl.oauthbearer.jwks.endpoint.url` (a `file:` URL or a
//!   path), read at start. A token's `kid` picks the key; the key's type picks the
//!   algorithms (RSA: RS256/384/512 and PS256/384/512; EC: ES256/384). `none` and HMAC
//!   are never accepted.
//! - Claims: `exp` is required and checked with `sasl.oauthbearer.clock.skew.seconds`
//!   (30) of leeway, as are `nbf` and `iat` when present; `iss` must equal
//!   `sasl.oauthbearer.expected.issuer` and `aud` include one of
//!   `sasl.oauthbearer.expected.audience` when they are set. The principal is the claim
//!   `sasl.oauthbearer.sub.claim.name` (`sub`).
//! - The login lasts until the token expires (or `connections.max.reauth.ms`, if
//!   shorter); clients that support KIP-368 log in again with a fresh token.

use std::collections::BTreeMap;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// What the broker checks tokens against.
pub struct TokenValidator {
    /// Keys by `kid` (a key without one is listed under "").
    keys: BTreeMap<String, (DecodingKey, Vec<Algorithm>)>,
    issuer: Option<String>,
    audience: Vec<String>,
    sub_claim: String,
    clock_skew_seconds: u64,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The settings a validator is built from.
pub struct TokenSettings<'a> {
    pub jwks: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: Vec<String>,
    pub sub_claim: &'a str,
    pub clock_skew_seconds: u64,
}

/// A token accepted: who, and until when (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub principal: String,
    pub expires_at: u64,
}

/// The JWKS file a `sasl.oauthbearer.jwks.endpoint.url` names: a `file:` URL or a path.
/// Network URLs are refused: the broker does not fetch keys.
pub fn jwks_path(url: &str) -> Result<&str, String> {
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(path);
    }
    if let Some(path) = url.strip_prefix("file:") {
        return Ok(path);
    }
    if url.contains("://") {
        return Err(format!(
            "`{url}`: keys are read from a local JWKS file (file:/path), never fetched"
        ));
    }
    Ok(url)
}

impl TokenValidator {
    /// Builds a validator from the JWKS document `jwks` (its text).
    pub fn new(settings: TokenSettings<'_>) -> Result<TokenValidator, String> {
        let set: JwkSet =
            serde_json::from_str(settings.jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = BTreeMap::new();
        for jwk in &set.keys {
            let algorithms = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
                AlgorithmParameters::EllipticCurve(_) => vec![Algorithm::ES256, Algorithm::ES384],
                // Symmetric and other keys are not for verifying clients' tokens.
                _ => continue,
            };
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| format!("a key does not read: {e}"))?;
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, (key, algorithms));
        }
        if keys.is_empty() {
            return Err("the JWKS document has no RSA or EC key".into());
        }
        Ok(TokenValidator {
            keys,
            issuer: settings.issuer.map(str::to_string),
            audience: settings.audience,
            sub_claim: settings.sub_claim.to_string(),
            clock_skew_seconds: settings.clock_skew_seconds,
        })
    }

    /// Checks a token: its signature, expiry and claims.
    pub fn validate(&self, token: &str) -> Result<Accepted, String> {
        let header = decode_header(token).map_err(|e| format!("not a signed JWT: {e}"))?;
        let kid = header.kid.unwrap_or_default();
        let (key, algorithms) = self
            .keys
            .get(&kid)
            .ok_or_else(|| format!("no key `{kid}` in the JWKS"))?;
        if !algorithms.contains(&header.alg) {
            return Err(format!(
                "algorithm {:?} does not fit key `{kid}`",
                header.alg
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.clock_skew_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
        }
        let claims = decode::<BTreeMap<String, Value>>(token, key, &validation)
            .map_err(|e| format!("the token is not valid: {e}"))?
            .claims;
        let principal = claims
            .get(&self.sub_claim)
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("the token has no `{}` claim", self.sub_claim))?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or("the token's `exp` is not a number of seconds")?;
        Ok(Accepted {
            principal: principal.to_string(),
            expires_at,
        })
    }
}

/// The token in an OAUTHBEARER client message: `gs2-header ^A auth=Bearer <token> ^A
/// [key=value ^A]* ^A` (RFC 7628). An authorization ID, if given, must name the token's
/// principal (checked by the caller).
pub fn parse_message(message: &[u8]) -> Result<(Option<String>, &str), String> {
    let text = std::str::from_utf8(message).map_err(|_| "not UTF-8")?;
    let (gs2, rest) = text.split_once('\u{1}').ok_or("no GS2 header")?;
    let authzid = match gs2.strip_prefix("n,") {
        Some("") | Some(",") => None,
        Some(rest) => {
            let id = rest
                .strip_prefix("a=")
                .and_then(|r| r.strip_suffix(','))
                .ok_or("bad authorization ID")?;
            Some(id.to_string())
        }
        None => return Err("channel binding is not supported".into()),
    };
    let body = rest
        .strip_suffix("\u{1}\u{1}")
        .ok_or("the message is not terminated")?;
    let mut token = None;
    for pair in body.split('\u{1}') {
        let (key, value) = pair.split_once('=').ok_or("bad key/value pair")?;
        if key == "auth" {
            let bearer = value
                .strip_prefix("Bearer ")
                .ok_or("auth is not a Bearer token")?;
            token = Some(bearer.trim());
        }
    }
    Ok((authzid, token.filter(|t| !t.is_empty()).ok_or("no token")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_read_as_rfc_7628_writes_them() {
        assert_eq!(
            parse_message(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"),
            Ok((None, "abc.def.ghi"))
        );
        assert_eq!(
            parse_message(b"n,a=alice,\x01host=h\x01auth=Bearer t\x01traceId=x\x01\x01"),
            Ok((Some("alice".into()), "t"))
        );
        for bad in [
            &b""[..],
            b"n,,",
            b"y,,\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer t\x01",
            b"n,,\x01host=h\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"\xff",
        ] {
            assert!(parse_message(bad).is_err(), "{bad:?}");
        }
    }

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header, encode};

    /// A P-256 key: its JWKS entry (as `kid`) and its signing key.
    fn key(kid: &str) -> (String, EncodingKey) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        let (x, y) = point[1..].split_at(32);
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        );
        (jwk, EncodingKey::from_ec_der(&pair.serialize_der()))
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        encode(&header, &claims, key).unwrap()
    }

    #[test]
    fn tokens_are_checked_against_the_keys_and_the_expected_claims() {
        let (jwk, signer) = key("k1");
        let (_, stranger) = key("k1");
        let jwks = format!(r#"{{"keys":[{jwk}]}}"#);
        let validator = TokenValidator::new(TokenSettings {
            jwks: &jwks,
            issuer: Some("https://idp.example"),
            audience: vec!["spool".into()],
            sub_claim: "sub",
            clock_skew_seconds: 30,
        })
        .unwrap();
        let claims = |exp: u64| serde_json::json!({"sub": "alice", "iss": "https://idp.example", "aud": "spool", "exp": exp});
        let exp = now() + 600;
        assert_eq!(
            validator.validate(&token(&signer, "k1", claims(exp))),
            Ok(Accepted {
                principal: "alice".into(),
                expires_at: exp
            })
        );
        let refused = [
            // Expired beyond the clock skew.
            token(&signer, "k1", claims(now() - 120)),
            // Another key under the same ID, and an unknown ID.
            token(&stranger, "k1", claims(exp)),
            token(&signer, "k2", claims(exp)),
            // Another issuer, another audience, no subject, no expiry.
            token(
                &signer,
                "k1",
                serde_json::json!({"sub": "alice", "iss": "x", "aud": "spool", "exp": exp}),
            ),
            token(
                &signer,
                "k1",
                serde_json::json!({"sub": "alice", "iss": "https://idp.example", "aud": "other", "exp": exp}),
            ),
            token(
                &signer,
                "k1",
                serde_json::json!({"iss": "https://idp.example", "aud": "spool", "exp": exp}),
            ),
            token(
                &signer,
                "k1",
                serde_json::json!({"sub": "alice", "iss": "https://idp.example", "aud": "spool"}),
            ),
        ];
        for token in refused {
            assert!(validator.validate(&token).is_err(), "{token}");
        }
        // An unsigned token ("alg": "none") is not even read.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(claims(exp).to_string())
        );
        assert!(validator.validate(&unsigned).is_err());
    }

    #[test]
    fn only_local_jwks_files_are_read() {
        assert_eq!(
            jwks_path("file:///etc/spool/jwks.json"),
            Ok("/etc/spool/jwks.json")
        );
        assert_eq!(
            jwks_path("/etc/spool/jwks.json"),
            Ok("/etc/spool/jwks.json")
        );
        assert!(jwks_path("https://idp.example/jwks").is_err());
    }
}
