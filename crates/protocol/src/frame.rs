//! Size-prefixed frames, and whole requests and responses in and out of them.
//!
//! Every Kafka request and response travels as a frame: a big-endian i32 size, then that
//! many bytes. [`FrameDecoder`] cuts frames out of a stream buffer and refuses a frame
//! larger than its limit as soon as the four size bytes have arrived, before any of the body
//! is read or buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::header::{RequestHeader, ResponseHeader};
use crate::messages::{ApiKey, RequestBody, ResponseBody};

/// Kafka's default `socket.request.max.bytes`: 100 MiB.
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 100 * 1024 * 1024;

/// The size of a frame's length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Reads the body size from a frame's four-byte prefix, refusing sizes over `limit`.
pub fn frame_size(prefix: [u8; 4], limit: usize) -> Result<usize, DecodeError> {
    let size = i32::from_be_bytes(prefix);
    if size < 0 {
        return Err(DecodeError::NegativeFrameSize(size));
    }
    let size = size as usize;
    if size > limit {
        return Err(DecodeError::FrameTooLarge {
            size: size as u64,
            limit,
        });
    }
    Ok(size)
}

/// Cuts frames out of a buffer that a connection reads into.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder { max_frame_bytes }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Returns the next whole frame body, `None` if more bytes are needed, or an error when
    /// the declared size is invalid (the connection should then be closed: the stream can
    /// no longer be trusted).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if buf.len() < FRAME_PREFIX_BYTES {
            return Ok(None);
        }
        let prefix = [buf[0], buf[1], buf[2], buf[3]];
        let size = frame_size(prefix, self.max_frame_bytes)?;
        if buf.len() < FRAME_PREFIX_BYTES + size {
            return Ok(None);
        }
        buf.advance(FRAME_PREFIX_BYTES);
        Ok(Some(buf.split_to(size).freeze()))
    }
}

/// Appends a frame whose body `write_body` produces, filling in the size afterwards.
pub fn write_frame(
    buf: &mut BytesMut,
    write_body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_i32(0);
    write_body(buf)?;
    let size = buf.len() - start - FRAME_PREFIX_BYTES;
    let size = i32::try_from(size).map_err(|_| EncodeError::TooLong(size))?;
    buf[start..start + FRAME_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Encodes a request (header and body) as a frame.
pub fn encode_request(header: &RequestHeader, body: &RequestBody) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    write_frame(&mut buf, |buf| {
        header.encode(buf)?;
        body.encode(buf, header.request_api_version)
    })?;
    Ok(buf.freeze())
}

/// A request that could not be decoded, with what is known of it so the broker can answer
/// or close the connection as Kafka does.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDecodeError {
    /// The header, when it could be read.
    pub header: Option<RequestHeader>,
    pub error: DecodeError,
}

/// Decodes a request frame body (without its size prefix) into its header and body.
pub fn decode_request(
    mut frame: Bytes,
) -> Result<(RequestHeader, RequestBody), RequestDecodeError> {
    let header = RequestHeader::decode(&mut frame).map_err(|error| RequestDecodeError {
        header: None,
        error,
    })?;
    let Some(api_key) = header.api_key() else {
        return Err(RequestDecodeError {
            error: DecodeError::UnknownApiKey(header.request_api_key),
            header: Some(header),
        });
    };
    match RequestBody::decode(api_key, header.request_api_version, &mut frame) {
        // Bytes after the body are ignored, as Kafka ignores them: librdkafka's "all topics"
        // Metadata request (v9+) carries three, a 4-byte placeholder it never shrinks to a
        // 1-byte array count.
        Ok(body) => Ok((header, body)),
        Err(error) => Err(RequestDecodeError {
            header: Some(header),
            error,
        }),
    }
}

/// Encodes a response as a frame, with the header version its API and version call for.
pub fn encode_response(
    correlation_id: i32,
    version: i16,
    body: &ResponseBody,
) -> Result<Bytes, EncodeError> {
    let header_version = body.api_key().response_header_version(version);
    let header = ResponseHeader {
        correlation_id,
        unknown_tagged_fields: Vec::new(),
    };
    let mut buf = BytesMut::with_capacity(size_hint(body));
    write_frame(&mut buf, |buf| {
        header.encode(buf, header_version)?;
        body.encode(buf, version)
    })?;
    Ok(buf.freeze())
}

/// Room to reserve for a response up front, so a fetch response carrying megabytes of
/// records is written into one allocation instead of one that doubles and copies.
fn size_hint(body: &ResponseBody) -> usize {
    const SMALL: usize = 256;
    const PER_PARTITION: usize = 64;
    match body {
        ResponseBody::Fetch(fetch) => fetch
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| PER_PARTITION + p.records.as_ref().map_or(0, |r| r.len()))
            .sum::<usize>()
            .saturating_add(SMALL),
        _ => SMALL,
    }
}

/// Decodes a response frame body (without its size prefix) of a request of `api_key` at
/// `version`: the caller knows both from the request it sent.
pub fn decode_response(
    api_key: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(ResponseHeader, ResponseBody), DecodeError> {
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))?;
    let body = ResponseBody::decode(api_key, version, &mut frame)?;
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::MetadataRequest;

    #[test]
    fn frames_are_cut_only_when_complete() {
        let decoder = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&[0, 0, 0, 3, b'a', b'b'][..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"cd");
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!(&buf[..], b"d");
    }

    #[test]
    fn oversized_frame_is_refused_from_its_prefix_alone() {
        let decoder = FrameDecoder::new(SOCKET_REQUEST_MAX_BYTES_DEFAULT);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(DecodeError::FrameTooLarge {
                size: 2_147_483_647,
                ..
            })
        ));
        let mut negative = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
        assert_eq!(
            decoder.decode(&mut negative),
            Err(DecodeError::NegativeFrameSize(-2))
        );
    }

    #[test]
    fn request_frame_round_trips() {
        let header = RequestHeader {
            request_api_key: ApiKey::Metadata as i16,
            request_api_version: 12,
            correlation_id: 5,
            client_id: Some("spool-test".into()),
            unknown_tagged_fields: Vec::new(),
        };
        let body = RequestBody::Metadata(MetadataRequest {
            topics: None,
            ..MetadataRequest::default()
        });
        let mut frame = BytesMut::from(&encode_request(&header, &body).unwrap()[..]);
        let body_bytes = FrameDecoder::new(1024).decode(&mut frame).unwrap().unwrap();
        let (decoded_header, decoded_body) = decode_request(body_bytes).unwrap();
        assert_eq!(decoded_header, header);
        assert_eq!(decoded_body, body);
    }

    #[test]
    fn librdkafkas_all_topics_metadata_request_with_surplus_bytes_decodes() {
        // Captured from confluent-kafka 2.16 (librdkafka) list_topics(): Metadata v13 whose
        // topic count is a 4-byte zero placeholder, then allow_auto_topic_creation=true.
        let raw: &[u8] = &[
            0x00, 0x03, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x03, 0x00, 0x07, b'r', b'd', b'k', b'a',
            b'f', b'k', b'a', 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        ];
        let (header, body) = decode_request(Bytes::copy_from_slice(raw)).unwrap();
        assert_eq!(
            (header.request_api_key, header.request_api_version),
            (3, 13)
        );
        let RequestBody::Metadata(metadata) = body else {
            panic!("{body:?}")
        };
        assert_eq!(metadata.topics, None, "all topics");
    }

    #[test]
    fn metadata_request_whose_body_claims_two_billion_topics_fails_cleanly() {
        // Header for Metadata v4 (classic encoding), then a topic count of 0x7fffffff.
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0, 3, 0, 4, 0, 0, 0, 1, 0xff, 0xff]);
        frame.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        let err = decode_request(frame.freeze()).unwrap_err();
        assert!(matches!(
            err.error,
            DecodeError::LengthExceedsRemaining { what: "array", .. }
        ));
        assert_eq!(err.header.map(|h| h.correlation_id), Some(1));
    }
}
