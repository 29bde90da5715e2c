//! Spool's Kafka wire protocol: bytes in, values out.
//!
//! Every Kafka API and every record Spool stores is described by a spec of ours under
//! `spec/`; `spool-protocol-gen` turns those into the modules [`messages`] (requests and
//! responses, [`messages::ApiKey`], [`messages::RequestBody`]) and [`internal`] (records of
//! the internal topics and the metadata log). Around them this crate holds what is written
//! by hand: the primitive encodings ([`wire`]), request and response headers
//! ([`header`]), size-prefixed frames ([`frame`]), Kafka's error codes ([`ErrorCode`]),
//! the zero-copy record batch view ([`record_batch`]) and the compression codecs
//! ([`compression`]).
//!
//! Nothing here does I/O. Decoding never trusts a length it reads: each is checked against
//! the bytes that remain before memory is set aside for it.

pub mod compat;
pub mod compression;
pub mod error;
pub mod error_code;
pub mod frame;
pub mod header;
pub mod message;
pub mod record_batch;
pub mod wire;

#[cfg(any(test, feature = "sample"))]
pub mod sample;

#[cfg(test)]
mod hostile_input_tests;

#[rustfmt::skip]
pub mod internal;
#[rustfmt::skip]
pub mod messages;

pub use error::{DecodeError, EncodeError};
pub use error_code::ErrorCode;
pub use message::Message;
pub use wire::{Uuid, VersionRange, Wire};
