//! Request and response headers.
//!
//! Request header v1 carries the API key, API version, correlation ID and client ID; v2
//! adds tagged fields. The client ID stays a classic (i16-length) nullable string even in
//! v2, so that a broker can read it before it knows whether the request is flexible.
//! Response header v0 is the correlation ID alone; v1 adds tagged fields. Which version a
//! message uses follows from its API and version ([`ApiKey::request_header_version`]).

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::messages::ApiKey;
use crate::wire::{TaggedFieldsWriter, UnknownTaggedFields, Wire, read_tagged_fields};

/// The header of every request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHeader {
    /// The API key as sent; it may name an API this crate does not know.
    pub request_api_key: i16,
    pub request_api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub unknown_tagged_fields: UnknownTaggedFields,
}

impl RequestHeader {
    /// The known API this header addresses, if any.
    pub fn api_key(&self) -> Option<ApiKey> {
        ApiKey::from_i16(self.request_api_key)
    }

    /// The header version this request uses. Unknown APIs are read as v1, which is enough
    /// to answer them with an error carrying the right correlation ID.
    pub fn header_version(&self) -> i16 {
        match self.api_key() {
            Some(key) => key.request_header_version(self.request_api_version),
            None => 1,
        }
    }

    /// Decodes a request header from the front of a request frame.
    pub fn decode(buf: &mut Bytes) -> Result<RequestHeader, DecodeError> {
        let mut header = RequestHeader {
            request_api_key: i16::read(buf, false, 0)?,
            request_api_version: i16::read(buf, false, 0)?,
            correlation_id: i32::read(buf, false, 0)?,
            client_id: None,
            unknown_tagged_fields: Vec::new(),
        };
        header.client_id = Option::<String>::read(buf, false, 0)?;
        if header.header_version() >= 2 {
            header.unknown_tagged_fields = read_tagged_fields(buf, |_, _| Ok(false))?;
        }
        Ok(header)
    }

    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.request_api_key.write(buf, false, 0)?;
        self.request_api_version.write(buf, false, 0)?;
        self.correlation_id.write(buf, false, 0)?;
        self.client_id.write(buf, false, 0)?;
        if self.header_version() >= 2 {
            TaggedFieldsWriter::new().finish(buf, &self.unknown_tagged_fields)?;
        }
        Ok(())
    }
}

/// The header of every response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHeader {
    pub correlation_id: i32,
    pub unknown_tagged_fields: UnknownTaggedFields,
}

impl ResponseHeader {
    pub fn decode(buf: &mut Bytes, header_version: i16) -> Result<ResponseHeader, DecodeError> {
        let correlation_id = i32::read(buf, false, 0)?;
        let unknown_tagged_fields = if header_version >= 1 {
            read_tagged_fields(buf, |_, _| Ok(false))?
        } else {
            Vec::new()
        };
        Ok(ResponseHeader {
            correlation_id,
            unknown_tagged_fields,
        })
    }

    pub fn encode(&self, buf: &mut BytesMut, header_version: i16) -> Result<(), EncodeError> {
        self.correlation_id.write(buf, false, 0)?;
        if header_version >= 1 {
            TaggedFieldsWriter::new().finish(buf, &self.unknown_tagged_fields)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: ApiKey, version: i16) -> RequestHeader {
        RequestHeader {
            request_api_key: key as i16,
            request_api_version: version,
            correlation_id: 42,
            client_id: Some("rdkafka".into()),
            unknown_tagged_fields: Vec::new(),
        }
    }

    #[test]
    fn flexible_requests_use_header_v2_and_others_v1() {
        assert_eq!(header(ApiKey::Produce, 8).header_version(), 1);
        assert_eq!(header(ApiKey::Produce, 9).header_version(), 2);
        // A version newer than any we know stays flexible: flexible ranges are open-ended.
        assert_eq!(header(ApiKey::ApiVersions, 99).header_version(), 2);
    }

    #[test]
    fn request_header_round_trips_and_keeps_a_classic_client_id_in_v2() {
        let h = header(ApiKey::Metadata, 12);
        let mut buf = BytesMut::new();
        h.encode(&mut buf).unwrap();
        // key, version, correlation id, i16 length + "rdkafka", empty tagged fields.
        assert_eq!(buf.len(), 2 + 2 + 4 + 2 + 7 + 1);
        let mut bytes = buf.freeze();
        assert_eq!(RequestHeader::decode(&mut bytes).unwrap(), h);
        assert!(bytes.is_empty());
    }

    #[test]
    fn unknown_api_key_still_yields_the_correlation_id() {
        let mut bytes = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 7, 0xff, 0xff]);
        let h = RequestHeader::decode(&mut bytes).unwrap();
        assert_eq!(h.api_key(), None);
        assert_eq!(h.correlation_id, 7);
    }

    #[test]
    fn api_versions_responses_always_use_header_v0() {
        assert_eq!(ApiKey::ApiVersions.response_header_version(4), 0);
        assert_eq!(ApiKey::Metadata.response_header_version(12), 1);
        assert_eq!(ApiKey::Metadata.response_header_version(8), 0);
    }
}
