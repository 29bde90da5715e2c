//! The records inside a batch: lazy iteration, headers decoded on demand, and the zigzag
//! varints the record format uses.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// A record header: a string key and a nullable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// The headers of a record, decoded on demand from the record's bytes (already checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeaders {
    count: usize,
    data: Bytes,
}

impl RecordHeaders {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordHeader> + '_ {
        let mut data = self.data.clone();
        (0..self.count).map_while(move |_| {
            let key = read_nullable_bytes(&mut data).ok()??;
            let value = read_nullable_bytes(&mut data).ok()?;
            Some(RecordHeader { key, value })
        })
    }
}

/// One record, with its offset and timestamp resolved against its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub attributes: i8,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: RecordHeaders,
}

/// The records of one batch, decoded lazily.
#[derive(Debug, Clone)]
pub struct Records {
    pub(super) data: Bytes,
    pub(super) remaining_count: usize,
    pub(super) base_offset: i64,
    pub(super) base_timestamp: i64,
    pub(super) log_append_time: Option<i64>,
}

impl Iterator for Records {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining_count == 0 {
            return None;
        }
        self.remaining_count -= 1;
        let result = self.decode_next();
        if result.is_err() {
            self.remaining_count = 0;
        }
        Some(result)
    }
}

impl Records {
    fn decode_next(&mut self) -> Result<Record, DecodeError> {
        let length = read_varint(&mut self.data)?;
        if length < 0 || length as usize > self.data.len() {
            return Err(DecodeError::InvalidRecordBatch(
                "record length exceeds the batch",
            ));
        }
        let mut body = self.data.split_to(length as usize);
        let attributes = read_i8(&mut body)?;
        let timestamp_delta = read_varlong(&mut body)?;
        let offset_delta = read_varint(&mut body)?;
        let key = read_nullable_bytes(&mut body)?;
        let value = read_nullable_bytes(&mut body)?;
        let header_count = read_varint(&mut body)?;
        // Each header takes at least two bytes: two varint lengths.
        if header_count < 0 || header_count as usize > body.len() / 2 {
            return Err(DecodeError::InvalidRecordBatch(
                "header count exceeds the record",
            ));
        }
        // Headers stay in the record's bytes: they are walked here to check them, and decoded
        // again only when someone asks. Building them eagerly would let a small compressed
        // batch of empty headers expand 32-fold in memory.
        let headers = RecordHeaders {
            count: header_count as usize,
            data: body.clone(),
        };
        for _ in 0..header_count {
            read_nullable_bytes(&mut body)?
                .ok_or(DecodeError::InvalidRecordBatch("null header key"))?;
            read_nullable_bytes(&mut body)?;
        }
        if !body.is_empty() {
            return Err(DecodeError::InvalidRecordBatch(
                "record longer than its fields",
            ));
        }
        Ok(Record {
            offset: self.base_offset.wrapping_add(i64::from(offset_delta)),
            timestamp: self
                .log_append_time
                .unwrap_or(self.base_timestamp.wrapping_add(timestamp_delta)),
            attributes,
            key,
            value,
            headers,
        })
    }
}

fn read_i8(buf: &mut Bytes) -> Result<i8, DecodeError> {
    let Some(&byte) = buf.first() else {
        return Err(DecodeError::InvalidRecordBatch("truncated record"));
    };
    let _ = buf.split_to(1);
    Ok(byte as i8)
}

/// Reads a zigzag-encoded varlong of at most ten bytes.
pub fn read_varlong(buf: &mut Bytes) -> Result<i64, DecodeError> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let Some(&byte) = buf.get(i) else {
            return Err(DecodeError::InvalidRecordBatch("truncated varint"));
        };
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let _ = buf.split_to(i + 1);
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err(DecodeError::VarintTooLong)
}

/// Reads a zigzag-encoded varint of at most five bytes.
pub fn read_varint(buf: &mut Bytes) -> Result<i32, DecodeError> {
    let mut raw: u32 = 0;
    for i in 0..5 {
        let Some(&byte) = buf.get(i) else {
            return Err(DecodeError::InvalidRecordBatch("truncated varint"));
        };
        if i == 4 && byte > 0x0f {
            return Err(DecodeError::VarintTooLong);
        }
        raw |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let _ = buf.split_to(i + 1);
            return Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32));
        }
    }
    Err(DecodeError::VarintTooLong)
}

fn read_nullable_bytes(buf: &mut Bytes) -> Result<Option<Bytes>, DecodeError> {
    let length = read_varint(buf)?;
    if length == -1 {
        return Ok(None);
    }
    if length < 0 || length as usize > buf.len() {
        return Err(DecodeError::InvalidRecordBatch(
            "field length exceeds the record",
        ));
    }
    Ok(Some(buf.split_to(length as usize)))
}

pub fn write_varlong(buf: &mut BytesMut, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        buf.put_u8((raw as u8) | 0x80);
        raw >>= 7;
    }
    buf.put_u8(raw as u8);
}

pub fn write_varint(buf: &mut BytesMut, value: i32) {
    write_varlong(buf, i64::from(value));
}

pub(super) fn write_nullable_bytes(
    buf: &mut BytesMut,
    value: Option<&[u8]>,
) -> Result<(), EncodeError> {
    match value {
        None => write_varint(buf, -1),
        Some(v) => {
            write_varint(
                buf,
                i32::try_from(v.len()).map_err(|_| EncodeError::TooLong(v.len()))?,
            );
            buf.put_slice(v);
        }
    }
    Ok(())
}
