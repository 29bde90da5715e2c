//! The trait every generated message implements.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ApiVersionsRequest, ProduceResponse, produce_response};
    use crate::wire::RawTaggedField;

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
