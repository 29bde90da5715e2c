//! SASL/PLAIN (RFC 4616): the client sends its user name and password in one message.
//! Only safe under TLS (SASL_SSL); the broker compares passwords in constant time.
//!
//! Users come from Kafka's JAAS option form, `user_<name>="<password>"`, given in
//! `listener.name.<listener>.plain.sasl.jaas.config`, or from a file of `name=password`
//! lines named by `sasl.plain.users.file`.

use std::collections::BTreeMap;

use subtle::ConstantTimeEq;

/// The longest PLAIN message a client may send.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Users and their passwords.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainUsers(BTreeMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    #[error("Invalid PLAIN message: {0}")]
    Malformed(&'static str),
    #[error("Authentication failed: Invalid username or password")]
    InvalidCredentials,
    #[error(
        "Authentication failed: Client requested an authorization id that is different from username"
    )]
    AuthorizationId,
}

impl PlainUsers {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the users of a JAAS configuration (`user_<name>="<password>"` options; the
    /// module's own `username` and `password` are the broker's client identity, not users).
    pub fn add_jaas(&mut self, jaas: &str) -> Result<(), String> {
        for (key, value) in jaas_options(jaas)? {
            if let Some(user) = key.strip_prefix("user_") {
                self.0.insert(user.to_string(), value);
            }
        }
        Ok(())
    }

    /// Adds the users of a file of `name=password` lines (blank lines and lines starting
    /// with `#` are skipped).
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((name, password)) if !name.trim().is_empty() && !password.is_empty() => {
                    self.0.insert(name.trim().to_string(), password.to_string());
                }
                _ => return Err(format!("line {} is not `name=password`", number + 1)),
            }
        }
        Ok(())
    }

    /// Checks a PLAIN message (`[authzid] NUL user NUL password`); the user it logs in.
    pub fn authenticate(&self, message: &[u8]) -> Result<String, PlainError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(PlainError::Malformed("too long"));
        }
        let message =
            std::str::from_utf8(message).map_err(|_| PlainError::Malformed("not UTF-8"))?;
        let mut parts = message.split('\0');
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PlainError::Malformed("expected three NUL-separated parts"));
        };
        if user.is_empty() {
            return Err(PlainError::Malformed("no user name"));
        }
        if password.is_empty() {
            return Err(PlainError::Malformed("no password"));
        }
        if !authzid.is_empty() && authzid != user {
            return Err(PlainError::AuthorizationId);
        }
        // An unknown user costs the same comparison as a known one.
        let (known, expected) = match self.0.get(user) {
            Some(expected) => (true, expected.as_bytes()),
            None => (false, password.as_bytes()),
        };
        let same = expected.ct_eq(password.as_bytes()).unwrap_u8() == 1;
        if known && same {
            Ok(user.to_string())
        } else {
            Err(PlainError::InvalidCredentials)
        }
    }
}

/// The `username` and `password` options of a JAAS entry: the identity this broker logs
/// in to others with. `None` when the entry has no `username`.
pub fn jaas_login(jaas: &str) -> Result<Option<(String, String)>, String> {
    let options = jaas_options(jaas)?;
    let option = |name: &str| {
        options
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    Ok(option("username").map(|user| (user, option("password").unwrap_or_default())))
}

/// The options of a JAAS login module entry:
/// `<module class> <flag> key="value" key=value … ;`.
fn jaas_options(jaas: &str) -> Result<Vec<(String, String)>, String> {
    let mut rest = jaas.trim();
    rest = rest
        .strip_suffix(';')
        .ok_or("a JAAS entry ends with `;`")?
        .trim_end();
    let mut words = rest.splitn(3, char::is_whitespace);
    let (Some(_module), Some(flag)) = (words.next(), words.next()) else {
        return Err("expected `<login module> <flag> options…;`".into());
    };
    if !["required", "requisite", "sufficient", "optional"].contains(&flag) {
        return Err(format!("`{flag}` is not a JAAS control flag"));
    }
    let mut rest = words.next().unwrap_or("").trim_start();
    let mut options = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("option `{rest}` has no value"))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("bad option name `{key}`"));
        }
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                let end = end.ok_or_else(|| format!("option `{key}` has an unclosed quote"))?;
                (value, &quoted[end..])
            }
            None => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        options.push((key.to_string(), value));
        rest = remaining.trim_start();
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> PlainUsers {
        let mut users = PlainUsers::default();
        let jaas = r#"org.apache.kafka.common.security.plain.PlainLoginModule required
            username="admin" password="admin-secret"
            user_admin="admin-secret" user_alice="alice \"quoted\" secret";"#;
        assert_eq!(users.add_jaas(jaas), Ok(()));
        assert_eq!(users.add_file("# users\n\nbob=b=b\n"), Ok(()));
        users
    }

    proptest::proptest! {
        /// Arbitrary bytes log in only as the password they carry allows.
        #[test]
        fn arbitrary_messages_log_in_only_with_a_password(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            if let Ok(user) = users().authenticate(&raw) {
                let ok = ["admin", "alice", "bob"].contains(&user.as_str());
                proptest::prop_assert!(ok, "logged in as {user}");
            }
        }
    }

    #[test]
    fn users_log_in_with_their_password_only() {
        let users = users();
        assert_eq!(
            users.authenticate(b"\0admin\0admin-secret"),
            Ok("admin".into())
        );
        assert_eq!(
            users.authenticate(b"alice\0alice\0alice \"quoted\" secret"),
            Ok("alice".into())
        );
        assert_eq!(users.authenticate(b"\0bob\0b=b"), Ok("bob".into()));
        assert_eq!(
            users.authenticate(b"\0alice\0admin-secret"),
            Err(PlainError::InvalidCredentials)
        );
        assert_eq!(
            users.authenticate(b"\0mallory\0x"),
            Err(PlainError::InvalidCredentials)
        );
        // The module's own username/password options are not a user.
        assert_eq!(
            users.authenticate(b"\0username\0admin"),
            Err(PlainError::InvalidCredentials)
        );
        assert_eq!(
            users.authenticate(b"admin\0alice\0alice \"quoted\" secret"),
            Err(PlainError::AuthorizationId)
        );
        for bad in [
            &b""[..],
            b"\0admin",
            b"\0\0x",
            b"\0admin\0",
            b"a\0b\0c\0d",
            b"\0\xff\0x",
        ] {
            assert!(
                matches!(users.authenticate(bad), Err(PlainError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_jaas_and_user_files_are_refused() {
        let mut users = PlainUsers::default();
        assert!(
            users
                .add_jaas("PlainLoginModule required user_a=\"x\"")
                .is_err()
        );
        assert!(
            users
                .add_jaas("PlainLoginModule always user_a=\"x\";")
                .is_err()
        );
        assert!(
            users
                .add_jaas("PlainLoginModule required user_a=\"x;")
                .is_err()
        );
        assert!(users.add_jaas("PlainLoginModule required user_a;").is_err());
        assert!(users.add_file("alice\n").is_err());
        assert!(users.add_file("alice=\n").is_err());
        assert!(users.is_empty());
    }
}
