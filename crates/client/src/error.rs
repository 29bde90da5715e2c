//! What can go wrong talking to brokers. Every error names where it happened: the broker
//! (its address, and node ID once known), and for Kafka errors the topic and partition or
//! group the code came back for, so that an operator reading it knows where to look.

use spool_protocol::ErrorCode;
use thiserror::Error;

#[derive(Debug, Clone, Error)]
pub enum Error {
    /// The broker could not be reached, or the connection broke.
    #[error("broker {broker}: {reason}")]
    Connection { broker: String, reason: String },
    /// A request got no answer within the request timeout.
    #[error("broker {broker}: no answer to {api} within {timeout_ms} ms")]
    Timeout {
        broker: String,
        api: &'static str,
        timeout_ms: u64,
    },
    /// The broker supports no version of an API this client speaks.
    #[error("broker {broker}: does not support {api} in any version this client speaks")]
    Unsupported { broker: String, api: &'static str },
    /// The broker answered with a Kafka error code.
    #[error("{context}: {} ({})", code.name(), message.as_deref().unwrap_or(code.message()))]
    Kafka {
        code: ErrorCode,
        /// Where the error came back: "topic orders partition 3 on broker 1", "group g".
        context: String,
        /// The broker's own message, when it sent one.
        message: Option<String>,
    },
    /// An answer that could not be decoded, or a request that could not be encoded.
    #[error("broker {broker}: {reason}")]
    Protocol { broker: String, reason: String },
    /// A mistake in what was asked (an unknown topic name in an assignment, a bad setting).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A Kafka error for `code` with its context, or `None` when the code is NONE.
    pub fn kafka(code: i16, context: impl Into<String>, message: Option<String>) -> Option<Error> {
        let code = ErrorCode::from_wire(code);
        (code != ErrorCode::None).then(|| Error::Kafka {
            code,
            context: context.into(),
            message: message.filter(|m| !m.is_empty()),
        })
    }

    /// `Ok` for NONE, otherwise the Kafka error for `code` with its context.
    pub fn check(code: i16, context: impl Into<String>, message: Option<String>) -> Result<()> {
        match Error::kafka(code, context, message) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The Kafka error code, if this is a Kafka error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether sending again (after a metadata refresh) may succeed: a retriable Kafka
    /// error, a broken connection or a timeout.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka { code, .. } => code.is_retriable(),
            Error::Connection { .. } | Error::Timeout { .. } => true,
            Error::Unsupported { .. } | Error::Protocol { .. } | Error::Invalid(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
