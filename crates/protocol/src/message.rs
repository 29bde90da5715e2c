//! The trait every generated message implements.

use std::fmt::Debug;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::wire::{VersionRange, Wire};

/// A top-level Kafka message (request, response or internal record) with a version range.
///
/// A value holds the union of the fields of every version; `encode` and `decode` take the
/// version to use. Fields that a version lacks keep their defaults.
pub trait Message: Wire + Default + Clone + PartialEq + Debug {
    const NAME: &'static str;
    const VERSIONS: VersionRange;
    /// Versions using compact strings, bytes and arrays and carrying tagged fields.
    const FLEXIBLE_VERSIONS: VersionRange;

    /// Appends the message, encoded at `version`, to `buf`.
    fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), EncodeError> {
        if !Self::VERSIONS.contains(version) {
            return Err(EncodeError::UnsupportedVersion {
                message: Self::NAME,
                version,
            });
        }
        self.write(buf, Self::FLEXIBLE_VERSIONS.contains(version), version)
    }

    /// Decodes the message at `version` from the front of `buf`, consuming what it reads.
    /// Bytes and records fields share `buf`'s memory rather than copying it.
    fn decode(buf: &mut Bytes, version: i16) -> Result<Self, DecodeError> {
        if !Self::VERSIONS.contains(version) {
            return Err(DecodeError::UnsupportedVersion {
                message: Self::NAME,
                version,
            });
        }
        Self::read(buf, Self::FLEXIBLE_VERSIONS.contains(version), version)
    }

    /// Encodes into a new buffer.
    fn to_bytes(&self, version: i16) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf, version)?;
        Ok(buf.freeze())
    }

    /// Encodes as an int16 version followed by the message at that version: the form of
    /// stored group and transaction records and of consumer-protocol subscriptions and
    /// assignments.
    fn to_versioned_bytes(&self, version: i16) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        self.encode(&mut buf, version)?;
        Ok(buf.freeze())
    }

    /// Reads what [`Message::to_versioned_bytes`] wrote; a version this code does not
    /// know is an error.
    fn from_versioned_bytes(buf: Bytes) -> Result<Self, DecodeError> {
        let (version, mut body) = split_version(buf)?;
        Self::decode(&mut body, version)
    }

    /// Like [`Message::from_versioned_bytes`], but a version newer than this code knows
    /// is read as the newest it knows (newer versions only add fields), as Kafka reads
    /// consumer-protocol metadata and its own stored records.
    fn from_versioned_bytes_newest(buf: Bytes) -> Result<Self, DecodeError> {
        let (version, mut body) = split_version(buf)?;
        Self::decode(&mut body, version.clamp(0, Self::VERSIONS.max))
    }
}

/// The int16 version at the front of `buf`, and the rest.
fn split_version(mut buf: Bytes) -> Result<(i16, Bytes), DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Truncated {
            needed: 2,
            remaining: buf.remaining(),
        });
    }
    Ok((buf.get_i16(), buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ApiVersionsRequest, ProduceResponse, produce_response};
    use crate::wire::RawTaggedField;

    #[test]
    fn versioned_bytes_carry_their_version_and_newer_ones_read_as_the_newest() {
        use crate::internal::ConsumerProtocolSubscription;
        let subscription = ConsumerProtocolSubscription {
            topics: vec!["a".into()],
            ..Default::default()
        };
        let bytes = subscription.to_versioned_bytes(1).unwrap();
        assert_eq!(&bytes[..2], &[0, 1]);
        assert_eq!(
            ConsumerProtocolSubscription::from_versioned_bytes(bytes.clone()).unwrap(),
            subscription
        );
        // The same body under a version from the future.
        let mut future = BytesMut::from(&bytes[..]);
        future[..2].copy_from_slice(&99i16.to_be_bytes());
        let future = future.freeze();
        assert!(ConsumerProtocolSubscription::from_versioned_bytes(future.clone()).is_err());
        let max = ConsumerProtocolSubscription::VERSIONS.max;
        let newest = subscription.to_versioned_bytes(max).unwrap();
        let mut future_newest = BytesMut::from(&newest[..]);
        future_newest[..2].copy_from_slice(&99i16.to_be_bytes());
        assert_eq!(
            ConsumerProtocolSubscription::from_versioned_bytes_newest(future_newest.freeze())
                .unwrap(),
            subscription
        );
        assert!(matches!(
            ConsumerProtocolSubscription::from_versioned_bytes_newest(Bytes::from_static(b"\x00")),
            Err(DecodeError::Truncated {
                needed: 2,
                remaining: 1
            })
        ));
    }

    #[test]
    fn a_value_the_version_cannot_carry_is_an_encode_error() {
        // node_endpoints is a non-ignorable tagged field of ProduceResponse v10+.
        let response = ProduceResponse {
            node_endpoints: vec![produce_response::NodeEndpoint::default()],
            ..Default::default()
        };
        assert!(response.to_bytes(10).is_ok());
        assert!(matches!(
            response.to_bytes(9),
            Err(EncodeError::FieldNotInVersion {
                field: "node_endpoints",
                ..
            })
        ));
        // ApiVersions v0-v2 have no tagged fields at all.
        let request = ApiVersionsRequest {
            unknown_tagged_fields: vec![RawTaggedField {
                tag: 7,
                data: Bytes::new(),
            }],
            ..Default::default()
        };
        assert!(request.to_bytes(3).is_ok());
        assert!(matches!(
            request.to_bytes(2),
            Err(EncodeError::TaggedFieldsNotInVersion { .. })
        ));
    }

    #[test]
    fn versions_outside_the_range_are_refused_both_ways() {
        assert!(matches!(
            ApiVersionsRequest::default().to_bytes(5),
            Err(EncodeError::UnsupportedVersion { version: 5, .. })
        ));
        let mut empty = Bytes::new();
        assert!(matches!(
            ApiVersionsRequest::decode(&mut empty, -1),
            Err(DecodeError::UnsupportedVersion { version: -1, .. })
        ));
    }
}
