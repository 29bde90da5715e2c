//! Errors of encoding and decoding. They describe what was wrong with the bytes or the
//! value; mapping them to a Kafka error code for a client is the broker's job.

use thiserror::Error;

/// Why bytes could not be decoded into a value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated input: needed {needed} bytes, {remaining} remain")]
    Truncated { needed: usize, remaining: usize },
    #[error("{what} length {length} exceeds the {remaining} bytes remaining")]
    LengthExceedsRemaining {
        what: &'static str,
        length: u64,
        remaining: usize,
    },
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("varint longer than its type allows")]
    VarintTooLong,
    #[error("string of {0} bytes exceeds the protocol's limit of 32767")]
    StringTooLong(usize),
    #[error("null where the version does not allow it")]
    NullNotAllowed,
    #[error("invalid nullable-structure marker {0}")]
    InvalidStructMarker(i8),
    #[error("tagged field {tag} is repeated or out of ascending order")]
    TaggedFieldsOutOfOrder { tag: u32 },
    #[error("tagged field {tag} was not read to its declared end")]
    TaggedFieldSizeMismatch { tag: u32 },
    #[error("{message} does not support version {version}")]
    UnsupportedVersion { message: &'static str, version: i16 },
    #[error("{0} bytes follow the end of the message")]
    TrailingBytes(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge { size: u64, limit: usize },
    #[error("negative frame size {0}")]
    NegativeFrameSize(i32),
    #[error("corrupt record batch: {0}")]
    CorruptRecordBatch(&'static str),
    #[error("invalid record batch: {0}")]
    InvalidRecordBatch(&'static str),
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    #[error("decompression failed: {0}")]
    Decompression(String),
    #[error("decompressed data exceeds the limit of {limit} bytes")]
    DecompressedTooLarge { limit: usize },
}

/// Why a value could not be encoded at the requested version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{message} does not support version {version}")]
    UnsupportedVersion { message: &'static str, version: i16 },
    #[error("{message}.{field} has a non-default value but does not exist in version {version}")]
    FieldNotInVersion {
        message: &'static str,
        field: &'static str,
        version: i16,
    },
    #[error("{message}.{field} is null but not nullable in version {version}")]
    NullNotAllowed {
        message: &'static str,
        field: &'static str,
        version: i16,
    },
    #[error("{message} has unknown tagged fields but version {version} has no tagged fields")]
    TaggedFieldsNotInVersion { message: &'static str, version: i16 },
    #[error("length {0} is too large for its length prefix")]
    TooLong(usize),
    #[error("record offset delta {0} is not after the previous record's")]
    OffsetsOutOfOrder(i32),
    #[error("two tagged fields share one tag")]
    DuplicateTag,
    #[error("compression failed: {0}")]
    Compression(String),
}
