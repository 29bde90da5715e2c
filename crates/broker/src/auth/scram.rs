//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), the server's side, as Kafka
//! speaks them: no channel binding, the `tokenauth` extension ignored.
//!
//! The server keeps per user and mechanism only the salt, the iteration count, the stored
//! key H(HMAC(salted password, "Client Key")) and the server key
//! HMAC(salted password, "Server Key"). It checks that the client-final message carries the
//! nonce of the exchange (Kafka CVE-2024-56128) and compares keys in constant time. An
//! unknown user gets the same exchange as a known one with a wrong password, so the answers
//! do not tell which users exist.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The longest SCRAM message a client may send.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The fewest iterations a credential may have (Kafka's minimum).
pub const MIN_ITERATIONS: i32 = 4096;
/// The most iterations a credential may have (Kafka's maximum).
pub const MAX_ITERATIONS: i32 = 16384;
/// Random bytes in the server's part of the nonce.
const SERVER_NONCE_BYTES: usize = 24;

/// The SCRAM mechanisms, numbered as AlterUserScramCredentials and the metadata records
/// number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    Sha256 = 1,
    Sha512 = 2,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    pub fn from_id(id: i8) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| *m as i8 == id)
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: the error case never happens, and an empty
        // answer would match nothing.
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            <M as hmac::digest::KeyInit>::new_from_slice(key)
                .map(|mac| mac.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default()
        }
        match self {
            Mechanism::Sha256 => run::<Hmac<Sha256>>(key, data),
            Mechanism::Sha512 => run::<Hmac<Sha512>>(key, data),
        }
    }

    fn output_len(self) -> usize {
        match self {
            Mechanism::Sha256 => 32,
            Mechanism::Sha512 => 64,
        }
    }
}

/// What the server keeps of a SCRAM password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub iterations: i32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// The credential of a salted password (what AlterUserScramCredentials carries: the
    /// client ran PBKDF2); the salted password itself is not kept.
    pub fn from_salted_password(
        mechanism: Mechanism,
        salt: &[u8],
        iterations: i32,
        salted_password: &[u8],
    ) -> Credential {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        Credential {
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    /// A credential nobody knows the password of: what an unknown user is checked against.
    fn unknowable(mechanism: Mechanism) -> Credential {
        let random = |len: usize| {
            let mut bytes = vec![0; len];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            bytes
        };
        Credential {
            salt: random(16),
            iterations: MIN_ITERATIONS,
            stored_key: random(mechanism.output_len()),
            server_key: random(mechanism.output_len()),
        }
    }
}

/// Why an exchange failed. The message goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("Invalid SCRAM {0} message: {1}")]
    Malformed(&'static str, &'static str),
    #[error(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {0}"
    )]
    InvalidCredentials(&'static str),
    #[error(
        "Authentication failed: client requested an authorization id different from its user name"
    )]
    AuthorizationId,
}

/// The result of one step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated as `user`; send `response` (the server-final message).
    Done { user: String, response: Vec<u8> },
}

/// One server-side exchange.
pub struct ScramServer {
    mechanism: Mechanism,
    state: State,
}

enum State {
    First,
    Final(Box<Pending>),
    Finished,
}

/// What the server remembers between its first message and the client's final one.
struct Pending {
    user: String,
    /// False for an unknown user: the exchange goes on and fails at the end.
    known: bool,
    credential: Credential,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    client_nonce: String,
    /// The client's nonce followed by the server's.
    nonce: String,
}

impl ScramServer {
    pub fn new(mechanism: Mechanism) -> ScramServer {
        ScramServer {
            mechanism,
            state: State::First,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Takes the client's next message; `lookup` finds a user's credential for this
    /// mechanism.
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
    ) -> Result<Step, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match state {
            State::First => {
                let (pending, server_first) = self.first(message, lookup)?;
                self.state = State::Final(Box::new(pending));
                Ok(Step::Continue(server_first.into_bytes()))
            }
            State::Final(pending) => self.last(message, &pending),
            State::Finished => Err(ScramError::Malformed("client", "the exchange is over")),
        }
    }

    fn first(
        &self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
    ) -> Result<(Pending, String), ScramError> {
        let malformed = |why| ScramError::Malformed("client-first", why);
        let message = text(message).ok_or(malformed("not printable text"))?;
        // gs2-header: a channel-binding flag this server accepts ("n": the client does not
        // bind; "y": it could, but thinks the server cannot), then an optional authzid.
        let (flag, rest) = message.split_once(',').ok_or(malformed("no GS2 header"))?;
        if flag != "n" && flag != "y" {
            return Err(malformed("channel binding is not supported"));
        }
        let (authzid, bare) = rest.split_once(',').ok_or(malformed("no GS2 header"))?;
        let gs2_header = format!("{flag},{authzid},");
        let mut fields = bare.split(',');
        let user = fields
            .next()
            .and_then(|f| f.strip_prefix("n="))
            .ok_or(malformed("no user name"))
            .and_then(|name| sasl_name(name).ok_or(malformed("bad user name")))?;
        let client_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .filter(|n| valid_nonce(n))
            .ok_or(malformed("no valid nonce"))?;
        // Extensions (Kafka's `tokenauth`) follow as key=value; none changes anything here.
        if fields.any(|f| !f.contains('=')) {
            return Err(malformed("bad extension"));
        }
        if !authzid.is_empty() {
            let requested = authzid
                .strip_prefix("a=")
                .and_then(sasl_name)
                .ok_or(malformed("bad authorization id"))?;
            if requested != user {
                return Err(ScramError::AuthorizationId);
            }
        }
        let (known, credential) = match lookup(&user) {
            Some(credential) => (true, credential),
            None => (false, Credential::unknowable(self.mechanism)),
        };
        let mut server_nonce = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&credential.salt),
            credential.iterations
        );
        Ok((
            Pending {
                user,
                known,
                credential,
                gs2_header,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                client_nonce: client_nonce.to_string(),
                nonce,
            },
            server_first,
        ))
    }

    fn last(&self, message: &[u8], pending: &Pending) -> Result<Step, ScramError> {
        let malformed = |why| ScramError::Malformed("client-final", why);
        let message = text(message).ok_or(malformed("not printable text"))?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(malformed("no client proof"))?;
        let mut fields = without_proof.split(',');
        let binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .and_then(|c| STANDARD.decode(c).ok())
            .ok_or(malformed("no channel binding"))?;
        if binding != pending.gs2_header.as_bytes() {
            return Err(malformed("channel binding does not match the GS2 header"));
        }
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(malformed("no nonce"))?;
        // The nonce must be this exchange's: a client-final message recorded from another
        // exchange does not log in (Kafka CVE-2024-56128).
        // librdkafka before 2.6.1 sends its own nonce again in front of the exchange's
        // (`r=<client nonce><client nonce><server nonce>`). That form carries the server
        // nonce whole too, so it is accepted; Kafka 4 refuses it.
        let exact = nonce.as_bytes().ct_eq(pending.nonce.as_bytes());
        let repeated = nonce
            .strip_prefix(pending.client_nonce.as_str())
            .is_some_and(|rest| rest.as_bytes().ct_eq(pending.nonce.as_bytes()).into());
        if exact.unwrap_u8() != 1 && !repeated {
            return Err(malformed("the nonce is not the exchange's"));
        }
        let proof = STANDARD
            .decode(proof)
            .ok()
            .filter(|p| p.len() == self.mechanism.output_len())
            .ok_or(malformed("bad client proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            pending.client_first_bare, pending.server_first
        );
        let credential = &pending.credential;
        let client_signature = self
            .mechanism
            .hmac(&credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let matches = self
            .mechanism
            .hash(&client_key)
            .ct_eq(&credential.stored_key)
            .unwrap_u8()
            == 1;
        if !matches || !pending.known {
            return Err(ScramError::InvalidCredentials(self.mechanism.name()));
        }
        let server_signature = self
            .mechanism
            .hmac(&credential.server_key, auth_message.as_bytes());
        Ok(Step::Done {
            user: pending.user.clone(),
            response: format!("v={}", STANDARD.encode(server_signature)).into_bytes(),
        })
    }
}

/// A password salted as SCRAM salts it (PBKDF2 with the mechanism's HMAC).
fn salted_password(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0; mechanism.output_len()];
    match mechanism {
        Mechanism::Sha256 => {
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out)
        }
        Mechanism::Sha512 => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out)
        }
    }
    out
}

/// The client's proof for `auth_message` and the server signature that must come back.
fn client_proof(mechanism: Mechanism, salted: &[u8], auth_message: &str) -> (Vec<u8>, Vec<u8>) {
    let client_key = mechanism.hmac(salted, b"Client Key");
    let stored_key = mechanism.hash(&client_key);
    let signature = mechanism.hmac(&stored_key, auth_message.as_bytes());
    let proof = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_key = mechanism.hmac(salted, b"Server Key");
    (proof, mechanism.hmac(&server_key, auth_message.as_bytes()))
}

/// Why the server's side of an exchange is not accepted by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SCRAM server {0}")]
pub struct ServerRefused(pub String);

/// The client's side of an exchange: how this broker logs in to another one.
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    client_first_bare: String,
    nonce: String,
    /// The server signature the exchange must end with, once the final message is sent.
    expected: Option<Vec<u8>>,
}

impl ScramClient {
    pub fn new(mechanism: Mechanism, user: &str, password: &str) -> ScramClient {
        let mut nonce = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let nonce = STANDARD.encode(nonce);
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            mechanism,
            password: password.to_string(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            expected: None,
        }
    }

    /// The client-first message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client-final message answering the server-first one. The server's nonce must
    /// extend this client's, and its iteration count be within Kafka's bounds (a server
    /// cannot make this broker spin).
    pub fn last(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ServerRefused> {
        let refused = |why: &str| ServerRefused(why.to_string());
        let server_first = text(server_first).ok_or(refused("sent a message that is not text"))?;
        if let Some(error) = server_first.strip_prefix("e=") {
            return Err(refused(&format!("refused: {error}")));
        }
        let field = |key: &str| server_first.split(',').find_map(|f| f.strip_prefix(key));
        let nonce = field("r=")
            .filter(|n| n.len() > self.nonce.len() && n.starts_with(&self.nonce))
            .filter(|n| valid_nonce(n))
            .ok_or(refused("did not extend the client's nonce"))?;
        let salt = field("s=")
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or(refused("sent no salt"))?;
        let iterations = field("i=")
            .and_then(|i| i.parse::<i32>().ok())
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or(refused("asked for an iteration count out of bounds"))?;
        let salted = salted_password(
            self.mechanism,
            &self.password,
            &salt,
            iterations.unsigned_abs(),
        );
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let (proof, signature) = client_proof(self.mechanism, &salted, &auth_message);
        self.expected = Some(signature);
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proves it knows the credential.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ServerRefused> {
        let refused = |why: &str| ServerRefused(why.to_string());
        let server_final = text(server_final).ok_or(refused("sent a message that is not text"))?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(refused(&format!("refused: {error}")));
        }
        let signature = server_final
            .strip_prefix("v=")
            .and_then(|v| STANDARD.decode(v).ok());
        match (&self.expected, signature) {
            (Some(expected), Some(signature)) if expected.ct_eq(&signature).unwrap_u8() == 1 => {
                Ok(())
            }
            _ => Err(refused("did not prove it knows the credential")),
        }
    }
}

/// A message as text: UTF-8 within the size bound, with no control characters.
fn text(message: &[u8]) -> Option<&str> {
    if message.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    std::str::from_utf8(message)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

/// A `saslname`: `=2C` stands for `,` and `=3D` for `=`; any other `=` is an error.
fn sasl_name(encoded: &str) -> Option<String> {
    let mut name = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('=') {
        name.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        name.push(match escape {
            "=2C" => ',',
            "=3D" => '=',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    Some(name).filter(|n| !n.is_empty())
}

/// A nonce: printable ASCII without commas.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A credential for `password`, as an administrator would set it.
    pub(crate) fn credential(mechanism: Mechanism, password: &str) -> Credential {
        let salt = b"0123456789abcdef";
        let salted = salted_password(mechanism, password, salt, MIN_ITERATIONS as u32);
        Credential::from_salted_password(mechanism, salt, MIN_ITERATIONS, &salted)
    }

    /// The client's final message for a server-first message, and the server signature
    /// it expects.
    pub(crate) fn client_final(
        mechanism: Mechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        client_final_with_nonce(mechanism, password, client_first_bare, server_first, "")
    }

    /// The same with `prefix` in front of the nonce, as librdkafka before 2.6.1 sends it.
    fn client_final_with_nonce(
        mechanism: Mechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        prefix: &str,
    ) -> (String, Vec<u8>) {
        let field = |key: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or_default()
                .to_string()
        };
        let salt = STANDARD.decode(field("s=")).unwrap_or_default();
        let iterations: u32 = field("i=").parse().unwrap_or(1);
        let salted = salted_password(mechanism, password, &salt, iterations);
        let without_proof = format!("c=biws,r={prefix}{}", field("r="));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let (proof, signature) = client_proof(mechanism, &salted, &auth_message);
        (
            format!("{without_proof},p={}", STANDARD.encode(proof)),
            signature,
        )
    }

    proptest::proptest! {
        // Each case derives keys (PBKDF2) four times: few cases; the fuzz target explores.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// Hostile client messages are refused, never a panic: raw bytes as the first
        /// message, and a valid final message with bytes changed, cut or added.
        #[test]
        fn altered_client_messages_are_refused(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            at in 0usize..400,
            cut in 0usize..4,
            insert in "[ -~]{0,4}",
        ) {
            for mechanism in [Mechanism::Sha256, Mechanism::Sha512] {
                let mut server = ScramServer::new(mechanism);
                let first = server.step(&raw, lookup(mechanism));
                if let Ok(Step::Continue(_)) = first {
                    // Whatever follows a random first message cannot log in.
                    proptest::prop_assert!(server.step(&raw, lookup(mechanism)).is_err());
                }
                let mut unchanged = true;
                let outcome = exchange(mechanism, "alice", "alice-secret", |good| {
                    let at = at.min(good.len());
                    let end = (at + cut).min(good.len());
                    let mut altered = good.clone();
                    if altered.is_char_boundary(at) && altered.is_char_boundary(end) {
                        altered.replace_range(at..end, &insert);
                    }
                    unchanged = altered == good;
                    altered
                });
                proptest::prop_assert_eq!(outcome.is_ok(), unchanged);
            }
        }
    }

    fn lookup(mechanism: Mechanism) -> impl Fn(&str) -> Option<Credential> {
        move |user: &str| (user == "alice").then(|| credential(mechanism, "alice-secret"))
    }

    /// Runs a whole exchange; the final step's outcome.
    fn exchange(
        mechanism: Mechanism,
        user: &str,
        password: &str,
        tamper: impl FnOnce(String) -> String,
    ) -> Result<Step, ScramError> {
        exchange_with_nonce(mechanism, user, password, "", tamper)
    }

    fn exchange_with_nonce(
        mechanism: Mechanism,
        user: &str,
        password: &str,
        prefix: &str,
        tamper: impl FnOnce(String) -> String,
    ) -> Result<Step, ScramError> {
        let mut server = ScramServer::new(mechanism);
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let Step::Continue(server_first) =
            server.step(format!("n,,{bare}").as_bytes(), lookup(mechanism))?
        else {
            panic!("the first step finished the exchange");
        };
        let server_first = String::from_utf8(server_first).unwrap_or_default();
        let (final_message, _) =
            client_final_with_nonce(mechanism, password, &bare, &server_first, prefix);
        server.step(tamper(final_message).as_bytes(), lookup(mechanism))
    }

    #[test]
    fn the_right_password_logs_in_with_either_mechanism_and_the_server_proves_itself() {
        for mechanism in Mechanism::ALL {
            let mut server = ScramServer::new(mechanism);
            let bare = "n=alice,r=rOprNGfwEbeRWgbNEkqO";
            let Ok(Step::Continue(first)) =
                server.step(format!("n,,{bare}").as_bytes(), lookup(mechanism))
            else {
                panic!("no server-first message");
            };
            let first = String::from_utf8(first).unwrap_or_default();
            assert!(first.starts_with("r=rOprNGfwEbeRWgbNEkqO"), "{first}");
            assert!(first.ends_with(",i=4096"), "{first}");
            let (last, expected_signature) = client_final(mechanism, "alice-secret", bare, &first);
            let Ok(Step::Done { user, response }) = server.step(last.as_bytes(), lookup(mechanism))
            else {
                panic!("{} did not log in", mechanism.name());
            };
            assert_eq!(user, "alice");
            assert_eq!(
                String::from_utf8(response).unwrap_or_default(),
                format!("v={}", STANDARD.encode(expected_signature))
            );
        }
    }

    /// Runs `client` against a server, `tamper` changing the server-first message; the
    /// client's verdict on the server-final message, or why it refused earlier.
    fn client_exchange(
        mut client: ScramClient,
        mechanism: Mechanism,
        tamper: impl FnOnce(String) -> String,
    ) -> Result<(), String> {
        let mut server = ScramServer::new(mechanism);
        let Ok(Step::Continue(first)) = server.step(&client.first(), lookup(mechanism)) else {
            return Err("the server refused client-first".into());
        };
        let first = tamper(String::from_utf8(first).unwrap_or_default());
        let last = client.last(first.as_bytes()).map_err(|e| e.to_string())?;
        match server.step(&last, lookup(mechanism)) {
            Ok(Step::Done { response, .. }) => client.verify(&response).map_err(|e| e.to_string()),
            Ok(Step::Continue(_)) => Err("the server wants more".into()),
            Err(e) => Err(format!("server: {e}")),
        }
    }

    #[test]
    fn the_client_logs_in_and_checks_what_the_server_asks_and_proves() {
        for mechanism in Mechanism::ALL {
            let client = ScramClient::new(mechanism, "alice", "alice-secret");
            assert_eq!(client_exchange(client, mechanism, |f| f), Ok(()));
            let wrong = ScramClient::new(mechanism, "alice", "wrong");
            assert_eq!(
                client_exchange(wrong, mechanism, |f| f),
                Err(format!(
                    "server: {}",
                    ScramError::InvalidCredentials(mechanism.name())
                ))
            );
        }
        let m = Mechanism::Sha256;
        let client = || ScramClient::new(m, "alice", "alice-secret");
        // A server that does not extend the client's nonce, or asks for too many or too few
        // iterations, is refused before any key is derived.
        let refused = |what: &str| Err(format!("SCRAM server {what}"));
        assert_eq!(
            client_exchange(client(), m, |f| f.replacen("r=", "r=x", 1)),
            refused("did not extend the client's nonce")
        );
        for iterations in ["i=100000", "i=1", "i=-4096", "i=many"] {
            assert_eq!(
                client_exchange(client(), m, |f| f.replace("i=4096", iterations)),
                refused("asked for an iteration count out of bounds"),
                "{iterations}"
            );
        }
        assert_eq!(
            client_exchange(client(), m, |_| "e=unknown-user".into()),
            refused("refused: unknown-user")
        );
        // A server-final message that does not prove the credential.
        let mut proven = client();
        let mut server = ScramServer::new(m);
        let Ok(Step::Continue(first)) = server.step(&proven.first(), lookup(m)) else {
            panic!("no server-first message");
        };
        proven.last(&first).unwrap_or_default();
        for forged in [&b"v=AAAA"[..], b"", b"v=", b"e=invalid-proof"] {
            assert!(proven.verify(forged).is_err(), "{forged:?}");
        }
        // Names with `,` and `=` are escaped as RFC 5802 says.
        let escaped = ScramClient::new(m, "a,b=c", "x");
        assert!(
            String::from_utf8(escaped.first())
                .unwrap_or_default()
                .starts_with("n,,n=a=2Cb=3Dc,r=")
        );
    }

    #[test]
    fn wrong_passwords_unknown_users_and_tampered_messages_fail() {
        let failed = Err(ScramError::InvalidCredentials("SCRAM-SHA-512"));
        let m = Mechanism::Sha512;
        assert_eq!(exchange(m, "alice", "wrong", |f| f), failed);
        assert_eq!(exchange(m, "mallory", "alice-secret", |f| f), failed);
        // A proof of the right length but the wrong value.
        let flipped = |f: String| {
            let (head, proof) = f.rsplit_once(",p=").unwrap_or_default();
            let mut bytes = STANDARD.decode(proof).unwrap_or_default();
            bytes[0] ^= 1;
            format!("{head},p={}", STANDARD.encode(bytes))
        };
        assert_eq!(exchange(m, "alice", "alice-secret", flipped), failed);
        // Another nonce (a replayed client-final message) is refused before the proof is
        // looked at.
        let other_nonce = |f: String| f.replacen(",r=fyko", ",r=xyko", 1);
        assert_eq!(
            exchange(m, "alice", "alice-secret", other_nonce),
            Err(ScramError::Malformed(
                "client-final",
                "the nonce is not the exchange's"
            ))
        );
        // The form of librdkafka before 2.6.1 (its nonce twice) logs in; the same with a
        // server nonce of another exchange does not.
        let client_nonce = "fyko+d2lbbFgONRv9qkxdawL";
        assert!(matches!(
            exchange_with_nonce(m, "alice", "alice-secret", client_nonce, |f| f),
            Ok(Step::Done { .. })
        ));
        assert!(exchange_with_nonce(m, "alice", "alice-secret", "fyko", |f| f).is_err());
        let bound = |f: String| f.replacen("c=biws", "c=eSws", 1);
        assert!(matches!(
            exchange(m, "alice", "alice-secret", bound),
            Err(ScramError::Malformed("client-final", _))
        ));
    }

    #[test]
    fn a_replayed_final_message_does_not_log_in_to_a_new_exchange() {
        let m = Mechanism::Sha256;
        let bare = "n=alice,r=abc";
        let mut first_server = ScramServer::new(m);
        let Ok(Step::Continue(first)) =
            first_server.step(format!("n,,{bare}").as_bytes(), lookup(m))
        else {
            panic!("no server-first message");
        };
        let (recorded, _) = client_final(
            m,
            "alice-secret",
            bare,
            &String::from_utf8(first).unwrap_or_default(),
        );
        let mut second_server = ScramServer::new(m);
        assert!(matches!(
            second_server.step(format!("n,,{bare}").as_bytes(), lookup(m)),
            Ok(Step::Continue(_))
        ));
        assert!(second_server.step(recorded.as_bytes(), lookup(m)).is_err());
        // The exchange is over after its final message, whatever it said.
        assert!(second_server.step(b"anything", lookup(m)).is_err());
    }

    #[test]
    fn client_first_messages_are_checked() {
        let m = Mechanism::Sha256;
        let first = |message: &[u8]| ScramServer::new(m).step(message, lookup(m));
        for bad in [
            &b""[..],
            b"n,,",
            b"p=tls-unique,,n=alice,r=abc",
            b"n,,r=abc",
            b"n,,n=alice",
            b"n,,n=alice,r=",
            b"n,,n=al=ice,r=abc",
            b"n,,n=alice,r=a,bc",
            b"n,,n=alice,r=abc\x01",
            b"n,,n=\xff,r=abc",
        ] {
            assert!(
                matches!(first(bad), Err(ScramError::Malformed(..))),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            first(b"n,a=bob,n=alice,r=abc"),
            Err(ScramError::AuthorizationId)
        );
        assert!(matches!(
            first(b"n,a=alice,n=alice,r=abc,tokenauth=true"),
            Ok(Step::Continue(_))
        ));
        let long = format!("n,,n={},r=abc", "a".repeat(MAX_MESSAGE_BYTES));
        assert!(first(long.as_bytes()).is_err());
        assert_eq!(sasl_name("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(sasl_name("a=2"), None);
    }
}
