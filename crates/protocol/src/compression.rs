//! The compression codecs of record batches: gzip, snappy, lz4 and zstd.
//!
//! The broker stores batches compressed exactly as produced and only decompresses where it
//! must look inside (validation of record counts, compaction, schema checks). Every
//! decompression takes a limit: the output is read through a cap, so a small "zip bomb"
//! cannot make the broker allocate gigabytes.
//!
//! Snappy comes in two shapes: Java clients write snappy-java's framing (a magic header,
//! then length-prefixed blocks); librdkafka and others may send a raw snappy block. Both
//! are read; the framed form is written, as Java does.

use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::error::{DecodeError, EncodeError};

/// A record batch's compression codec: attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec of a batch from its attributes.
    pub fn from_attributes(attributes: i16) -> Result<Compression, DecodeError> {
        Compression::from_id((attributes & 0x07) as u8)
    }

    pub fn from_id(id: u8) -> Result<Compression, DecodeError> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(DecodeError::UnknownCompression(other)),
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// The name used by `compression.type`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// snappy-java's stream header: a marker byte, "SNAPPY", a zero, then two i32 versions.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;
/// snappy-java's default block size; blocks we write are no larger.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

/// Reads at most `limit` bytes from `reader`, failing if it holds more.
fn read_capped(reader: impl Read, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Decompression(e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

fn snappy_raw(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let length =
        snap::raw::decompress_len(block).map_err(|e| DecodeError::Decompression(e.to_string()))?;
    if out.len().saturating_add(length) > limit {
        return Err(DecodeError::DecompressedTooLarge { limit });
    }
    let start = out.len();
    out.resize(start + length, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| DecodeError::Decompression(e.to_string()))?;
    Ok(())
}

fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
        let mut rest = &data[XERIAL_HEADER_BYTES..];
        // snappy-java ignores a tail too short to hold a block length.
        while rest.len() >= 4 {
            // Streams may be concatenated: a block length that spells the magic's first four
            // bytes starts another stream header.
            if rest.len() >= XERIAL_HEADER_BYTES && rest.starts_with(XERIAL_MAGIC) {
                rest = &rest[XERIAL_HEADER_BYTES..];
                continue;
            }
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if length > rest.len() {
                return Err(DecodeError::Decompression(
                    "snappy block longer than its input".into(),
                ));
            }
            snappy_raw(&rest[..length], limit, &mut out)?;
            rest = &rest[length..];
        }
    } else {
        snappy_raw(data, limit, &mut out)?;
    }
    Ok(out)
}

/// Decompresses `data` compressed with `codec`, refusing output beyond `limit` bytes.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let out = match codec {
        Compression::None => {
            if data.len() > limit {
                return Err(DecodeError::DecompressedTooLarge { limit });
            }
            data.to_vec()
        }
        Compression::Gzip => read_capped(flate2::read::MultiGzDecoder::new(data), limit)?,
        Compression::Snappy => snappy_decompress(data, limit)?,
        Compression::Lz4 => read_capped(lz4_flex::frame::FrameDecoder::new(data), limit)?,
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(data)
                .map_err(|e| DecodeError::Decompression(e.to_string()))?;
            // A frame may declare a window of up to 128 MiB. Allow no more than the output
            // limit needs, but never less than 16 MiB: streaming compressors size the window
            // from the level (up to 8 MiB at the levels clients use), not from the content.
            let window_log = (usize::BITS - limit.leading_zeros()).clamp(24, 27);
            decoder
                .window_log_max(window_log)
                .map_err(|e| DecodeError::Decompression(e.to_string()))?;
            read_capped(decoder, limit)?
        }
    };
    Ok(Bytes::from(out))
}

fn encode_error(e: io::Error) -> EncodeError {
    EncodeError::Compression(e.to_string())
}

/// Compresses `data` with `codec`, in the form Kafka's Java client writes.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Bytes, EncodeError> {
    let out = match codec {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(encode_error)?;
            encoder.finish().map_err(encode_error)?
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + data.len());
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for chunk in data.chunks(XERIAL_BLOCK_BYTES) {
                let block = encoder
                    .compress_vec(chunk)
                    .map_err(|e| EncodeError::Compression(e.to_string()))?;
                let length =
                    u32::try_from(block.len()).map_err(|_| EncodeError::TooLong(block.len()))?;
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(data).map_err(encode_error)?;
            encoder
                .finish()
                .map_err(|e| EncodeError::Compression(e.to_string()))?
        }
        Compression::Zstd => zstd::stream::encode_all(data, 3).map_err(encode_error)?,
    };
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_data() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample_data();
        for codec in Compression::ALL {
            let compressed = compress(codec, &data).unwrap();
            assert_eq!(
                &decompress(codec, &compressed, data.len()).unwrap()[..],
                &data[..],
                "{}",
                codec.name()
            );
        }
    }

    #[test]
    fn output_beyond_the_limit_is_refused_for_every_codec() {
        let data = vec![0u8; 1 << 20];
        for codec in Compression::ALL {
            let compressed = compress(codec, &data).unwrap();
            assert_eq!(
                decompress(codec, &compressed, 1000),
                Err(DecodeError::DecompressedTooLarge { limit: 1000 }),
                "{}",
                codec.name()
            );
        }
    }

    #[test]
    fn raw_snappy_blocks_are_read_too() {
        let data = sample_data();
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            &decompress(Compression::Snappy, &raw, data.len()).unwrap()[..],
            &data[..]
        );
    }

    #[test]
    fn concatenated_snappy_java_streams_are_read_whole() {
        let first = compress(Compression::Snappy, b"first half, ").unwrap();
        let second = compress(Compression::Snappy, b"second half").unwrap();
        let mut both = first.to_vec();
        both.extend_from_slice(&second);
        both.extend_from_slice(&[0, 0]); // a short tail, which snappy-java ignores
        assert_eq!(
            &decompress(Compression::Snappy, &both, 1000).unwrap()[..],
            b"first half, second half"
        );
    }

    #[test]
    fn garbage_fails_to_decompress_without_panicking() {
        let garbage: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37)).collect();
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                decompress(codec, &garbage, 1 << 20).is_err(),
                "{}",
                codec.name()
            );
        }
    }

    #[test]
    fn codec_ids_match_kafka_attributes() {
        assert_eq!(
            Compression::from_attributes(0b0001_0100).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::from_attributes(0x0b).unwrap(),
            Compression::Lz4
        );
        assert_eq!(
            Compression::from_attributes(5),
            Err(DecodeError::UnknownCompression(5))
        );
    }
}
