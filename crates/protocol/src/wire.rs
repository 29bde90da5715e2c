//! The primitive encodings of the Kafka protocol and the traits generated code builds on.
//!
//! Every value on the wire is one of a handful of primitive shapes: fixed-width big-endian
//! integers, unsigned varints, length-prefixed strings, bytes and arrays (in a "classic"
//! form with fixed-width lengths and a "compact" form with varint lengths used by flexible
//! versions), UUIDs, and the tagged-field buffer that ends every structure in a flexible
//! version. [`Wire`] reads and writes one such value; generated message types implement it
//! for their structures.
//!
//! Decoding treats every length on the wire as hostile: it is compared with the bytes that
//! remain before anything is allocated for it, so a four-byte frame claiming two billion
//! elements fails at once instead of asking the allocator for gigabytes.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// An inclusive range of message versions. `min > max` means "no version".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: i16,
    pub max: i16,
}

impl VersionRange {
    pub const NONE: VersionRange = VersionRange { min: 1, max: 0 };

    pub const fn new(min: i16, max: i16) -> Self {
        VersionRange { min, max }
    }

    pub const fn contains(&self, version: i16) -> bool {
        self.min <= version && version <= self.max
    }

    pub const fn is_empty(&self) -> bool {
        self.min > self.max
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            write!(f, "none")
        } else if self.max == i16::MAX {
            write!(f, "{}+", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// A UUID as Kafka sends it: 16 bytes, most significant first. Topic IDs use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID, which Kafka uses to mean "no ID".
    pub const ZERO: Uuid = Uuid([0; 16]);

    pub fn from_u128(value: u128) -> Self {
        Uuid(value.to_be_bytes())
    }

    pub fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One tagged field this version of the code does not know, kept so that it survives a
/// decode and re-encode unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTaggedField {
    pub tag: u32,
    pub data: Bytes,
}

/// The unknown tagged fields of one structure, in the order they were read.
pub type UnknownTaggedFields = Vec<RawTaggedField>;

/// A value with a Kafka wire encoding.
///
/// `flexible` selects the compact encodings of strings, bytes and arrays; `version` is
/// passed down to nested structures, whose fields depend on it.
pub trait Wire: Sized {
    /// The fewest bytes one value can occupy on the wire. Array decoding uses it to reject
    /// element counts that cannot fit in the bytes that remain.
    const MIN_WIRE_BYTES: usize = 1;

    fn write(&self, buf: &mut BytesMut, flexible: bool, version: i16) -> Result<(), EncodeError>;
    fn read(buf: &mut Bytes, flexible: bool, version: i16) -> Result<Self, DecodeError>;
}

/// Fails unless `needed` bytes remain.
#[inline]
pub fn ensure_remaining(buf: &Bytes, needed: usize) -> Result<(), DecodeError> {
    if buf.remaining() < needed {
        return Err(DecodeError::Truncated {
            needed,
            remaining: buf.remaining(),
        });
    }
    Ok(())
}

macro_rules! fixed_width {
    ($ty:ty, $size:expr, $get:ident, $put:ident) => {
        impl Wire for $ty {
            const MIN_WIRE_BYTES: usize = $size;

            #[inline]
            fn write(&self, buf: &mut BytesMut, _: bool, _: i16) -> Result<(), EncodeError> {
                buf.$put(*self);
                Ok(())
            }

            #[inline]
            fn read(buf: &mut Bytes, _: bool, _: i16) -> Result<Self, DecodeError> {
                ensure_remaining(buf, $size)?;
                Ok(buf.$get())
            }
        }
    };
}

fixed_width!(i8, 1, get_i8, put_i8);
fixed_width!(i16, 2, get_i16, put_i16);
fixed_width!(i32, 4, get_i32, put_i32);
fixed_width!(i64, 8, get_i64, put_i64);
fixed_width!(u16, 2, get_u16, put_u16);
fixed_width!(u32, 4, get_u32, put_u32);
fixed_width!(f64, 8, get_f64, put_f64);

impl Wire for bool {
    fn write(&self, buf: &mut BytesMut, _: bool, _: i16) -> Result<(), EncodeError> {
        buf.put_u8(u8::from(*self));
        Ok(())
    }

    fn read(buf: &mut Bytes, _: bool, _: i16) -> Result<Self, DecodeError> {
        ensure_remaining(buf, 1)?;
        // Kafka reads any non-zero byte as true.
        Ok(buf.get_u8() != 0)
    }
}

impl Wire for Uuid {
    const MIN_WIRE_BYTES: usize = 16;

    fn write(&self, buf: &mut BytesMut, _: bool, _: i16) -> Result<(), EncodeError> {
        buf.put_slice(&self.0);
        Ok(())
    }

    fn read(buf: &mut Bytes, _: bool, _: i16) -> Result<Self, DecodeError> {
        ensure_remaining(buf, 16)?;
        let mut bytes = [0u8; 16];
        buf.copy_to_slice(&mut bytes);
        Ok(Uuid(bytes))
    }
}

/// Writes an unsigned varint (LEB128, 7 bits a byte, least significant group first).
#[inline]
pub fn write_unsigned_varint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Reads an unsigned 32-bit varint; more than five bytes is an error, as in Kafka.
#[inline]
pub fn read_unsigned_varint(buf: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..5 {
        ensure_remaining(buf, 1)?;
        let byte = buf.get_u8();
        if i == 4 && byte > 0x0f {
            return Err(DecodeError::VarintTooLong);
        }
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::VarintTooLong)
}

/// The number of bytes `value` takes as an unsigned varint.
pub fn unsigned_varint_len(value: u32) -> usize {
    match value {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        _ => 5,
    }
}

/// Reads the length prefix of a string, bytes or array. Returns `None` for null.
///
/// Classic strings use an i16, classic bytes and arrays an i32; compact forms use an
/// unsigned varint holding length + 1, where 0 means null.
#[inline]
fn read_length(
    buf: &mut Bytes,
    flexible: bool,
    classic_i16: bool,
) -> Result<Option<usize>, DecodeError> {
    let length: i64 = if flexible {
        i64::from(read_unsigned_varint(buf)?) - 1
    } else if classic_i16 {
        i64::from(i16::read(buf, false, 0)?)
    } else {
        i64::from(i32::read(buf, false, 0)?)
    };
    if length == -1 {
        return Ok(None);
    }
    if length < 0 {
        return Err(DecodeError::NegativeLength(length));
    }
    Ok(Some(length as usize))
}

#[inline]
fn write_length(
    buf: &mut BytesMut,
    flexible: bool,
    classic_i16: bool,
    length: Option<usize>,
) -> Result<(), EncodeError> {
    match (flexible, length) {
        (true, None) => write_unsigned_varint(buf, 0),
        (true, Some(n)) => {
            let n = u32::try_from(n)
                .ok()
                .and_then(|n| n.checked_add(1))
                .ok_or(EncodeError::TooLong(n))?;
            write_unsigned_varint(buf, n);
        }
        (false, None) if classic_i16 => buf.put_i16(-1),
        (false, None) => buf.put_i32(-1),
        (false, Some(n)) if classic_i16 => {
            buf.put_i16(i16::try_from(n).map_err(|_| EncodeError::TooLong(n))?)
        }
        (false, Some(n)) => buf.put_i32(i32::try_from(n).map_err(|_| EncodeError::TooLong(n))?),
    }
    Ok(())
}

/// Takes `length` bytes off the front of `buf` without copying.
#[inline]
fn take(buf: &mut Bytes, length: usize, what: &'static str) -> Result<Bytes, DecodeError> {
    if length > buf.remaining() {
        return Err(DecodeError::LengthExceedsRemaining {
            what,
            length: length as u64,
            remaining: buf.remaining(),
        });
    }
    Ok(buf.split_to(length))
}

/// The longest string Kafka reads or writes: its classic length prefix is an i16, and the
/// compact form keeps the same limit.
pub const STRING_BYTES_MAX: usize = i16::MAX as usize;

fn read_string_body(buf: &mut Bytes, length: usize) -> Result<String, DecodeError> {
    if length > STRING_BYTES_MAX {
        return Err(DecodeError::StringTooLong(length));
    }
    let raw = take(buf, length, "string")?;
    // Kafka replaces invalid UTF-8 rather than failing, so an old client with a Latin-1
    // client ID is still answered; do the same.
    Ok(match String::from_utf8(raw.to_vec()) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

fn check_string_length(s: &str) -> Result<(), EncodeError> {
    if s.len() > STRING_BYTES_MAX {
        return Err(EncodeError::TooLong(s.len()));
    }
    Ok(())
}

impl Wire for Option<String> {
    fn write(&self, buf: &mut BytesMut, flexible: bool, _: i16) -> Result<(), EncodeError> {
        if let Some(s) = self {
            check_string_length(s)?;
        }
        write_length(buf, flexible, true, self.as_ref().map(String::len))?;
        if let Some(s) = self {
            buf.put_slice(s.as_bytes());
        }
        Ok(())
    }

    fn read(buf: &mut Bytes, flexible: bool, _: i16) -> Result<Self, DecodeError> {
        match read_length(buf, flexible, true)? {
            None => Ok(None),
            Some(length) => read_string_body(buf, length).map(Some),
        }
    }
}

impl Wire for String {
    fn write(&self, buf: &mut BytesMut, flexible: bool, _: i16) -> Result<(), EncodeError> {
        check_string_length(self)?;
        write_length(buf, flexible, true, Some(self.len()))?;
        buf.put_slice(self.as_bytes());
        Ok(())
    }

    fn read(buf: &mut Bytes, flexible: bool, _: i16) -> Result<Self, DecodeError> {
        match read_length(buf, flexible, true)? {
            None => Err(DecodeError::NullNotAllowed),
            Some(length) => read_string_body(buf, length),
        }
    }
}

impl Wire for Option<Bytes> {
    fn write(&self, buf: &mut BytesMut, flexible: bool, _: i16) -> Result<(), EncodeError> {
        write_length(buf, flexible, false, self.as_ref().map(Bytes::len))?;
        if let Some(b) = self {
            buf.put_slice(b);
        }
        Ok(())
    }

    fn read(buf: &mut Bytes, flexible: bool, _: i16) -> Result<Self, DecodeError> {
        match read_length(buf, flexible, false)? {
            None => Ok(None),
            Some(length) => take(buf, length, "bytes").map(Some),
        }
    }
}

impl Wire for Bytes {
    fn write(&self, buf: &mut BytesMut, flexible: bool, _: i16) -> Result<(), EncodeError> {
        write_length(buf, flexible, false, Some(self.len()))?;
        buf.put_slice(self);
        Ok(())
    }

    fn read(buf: &mut Bytes, flexible: bool, _: i16) -> Result<Self, DecodeError> {
        match read_length(buf, flexible, false)? {
            None => Err(DecodeError::NullNotAllowed),
            Some(length) => take(buf, length, "bytes"),
        }
    }
}

/// The most bytes a freshly decoded array reserves up front. Larger arrays grow as their
/// elements are actually decoded, so memory follows the input rather than its claims.
const ARRAY_PREALLOCATION_BYTES_MAX: usize = 4096;

fn read_array_body<T: Wire>(
    buf: &mut Bytes,
    count: usize,
    flexible: bool,
    version: i16,
) -> Result<Vec<T>, DecodeError> {
    let min_bytes = T::MIN_WIRE_BYTES.max(1);
    if count > buf.remaining() / min_bytes {
        return Err(DecodeError::LengthExceedsRemaining {
            what: "array",
            length: count as u64,
            remaining: buf.remaining(),
        });
    }
    let element_bytes = std::mem::size_of::<T>().max(1);
    let mut items = Vec::with_capacity(count.min(ARRAY_PREALLOCATION_BYTES_MAX / element_bytes));
    for _ in 0..count {
        items.push(T::read(buf, flexible, version)?);
    }
    Ok(items)
}

fn write_array_body<T: Wire>(
    buf: &mut BytesMut,
    items: &[T],
    flexible: bool,
    version: i16,
) -> Result<(), EncodeError> {
    for item in items {
        item.write(buf, flexible, version)?;
    }
    Ok(())
}

impl<T: Wire> Wire for Vec<T> {
    fn write(&self, buf: &mut BytesMut, flexible: bool, version: i16) -> Result<(), EncodeError> {
        write_length(buf, flexible, false, Some(self.len()))?;
        write_array_body(buf, self, flexible, version)
    }

    fn read(buf: &mut Bytes, flexible: bool, version: i16) -> Result<Self, DecodeError> {
        match read_length(buf, flexible, false)? {
            None => Err(DecodeError::NullNotAllowed),
            Some(count) => read_array_body(buf, count, flexible, version),
        }
    }
}

impl<T: Wire> Wire for Option<Vec<T>> {
    fn write(&self, buf: &mut BytesMut, flexible: bool, version: i16) -> Result<(), EncodeError> {
        write_length(buf, flexible, false, self.as_ref().map(Vec::len))?;
        if let Some(items) = self {
            write_array_body(buf, items, flexible, version)?;
        }
        Ok(())
    }

    fn read(buf: &mut Bytes, flexible: bool, version: i16) -> Result<Self, DecodeError> {
        match read_length(buf, flexible, false)? {
            None => Ok(None),
            Some(count) => read_array_body(buf, count, flexible, version).map(Some),
        }
    }
}

/// Writes the marker of a nullable structure: -1 for null, 1 for present.
pub fn write_struct_marker(buf: &mut BytesMut, present: bool) {
    buf.put_i8(if present { 1 } else { -1 });
}

/// Reads the marker of a nullable structure.
pub fn read_struct_marker(buf: &mut Bytes) -> Result<bool, DecodeError> {
    match i8::read(buf, false, 0)? {
        -1 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::InvalidStructMarker(other)),
    }
}

/// Collects the tagged fields of one structure while it is encoded, then writes them in
/// ascending tag order, merged with the unknown ones that were kept from decoding.
#[derive(Default)]
pub struct TaggedFieldsWriter {
    fields: Vec<(u32, BytesMut)>,
}

impl TaggedFieldsWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes one known tagged field.
    pub fn add<T: Wire>(&mut self, tag: u32, value: &T, version: i16) -> Result<(), EncodeError> {
        let mut data = BytesMut::new();
        value.write(&mut data, true, version)?;
        self.fields.push((tag, data));
        Ok(())
    }

    pub fn finish(
        mut self,
        buf: &mut BytesMut,
        unknown: &[RawTaggedField],
    ) -> Result<(), EncodeError> {
        for field in unknown {
            self.fields
                .push((field.tag, BytesMut::from(&field.data[..])));
        }
        // Known fields are added in spec order, which is tag order; a stable sort keeps it
        // so and places unknown tags where they belong.
        self.fields.sort_by_key(|(tag, _)| *tag);
        if self.fields.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(EncodeError::DuplicateTag);
        }
        let count = u32::try_from(self.fields.len())
            .map_err(|_| EncodeError::TooLong(self.fields.len()))?;
        write_unsigned_varint(buf, count);
        for (tag, data) in self.fields {
            write_unsigned_varint(buf, tag);
            let size = u32::try_from(data.len()).map_err(|_| EncodeError::TooLong(data.len()))?;
            write_unsigned_varint(buf, size);
            buf.put_slice(&data);
        }
        Ok(())
    }
}

/// Reads the tagged-field buffer of one structure, handing each field's bytes to
/// `known`, which returns `false` for tags it does not recognise; those are returned.
pub fn read_tagged_fields(
    buf: &mut Bytes,
    mut known: impl FnMut(u32, &mut Bytes) -> Result<bool, DecodeError>,
) -> Result<UnknownTaggedFields, DecodeError> {
    let count = read_unsigned_varint(buf)? as usize;
    // Each tagged field takes at least two bytes (tag and size).
    if count > buf.remaining() / 2 {
        return Err(DecodeError::LengthExceedsRemaining {
            what: "tagged fields",
            length: count as u64,
            remaining: buf.remaining(),
        });
    }
    let mut unknown = Vec::new();
    let mut previous_tag: Option<u32> = None;
    for _ in 0..count {
        let tag = read_unsigned_varint(buf)?;
        // KIP-482: tags appear once each, in ascending order. Accepting anything else would
        // decode messages that cannot be written back.
        if previous_tag.is_some_and(|previous| tag <= previous) {
            return Err(DecodeError::TaggedFieldsOutOfOrder { tag });
        }
        previous_tag = Some(tag);
        let size = read_unsigned_varint(buf)? as usize;
        let mut data = take(buf, size, "tagged field")?;
        if known(tag, &mut data)? {
            if data.has_remaining() {
                return Err(DecodeError::TaggedFieldSizeMismatch { tag });
            }
        } else {
            unknown.push(RawTaggedField { tag, data });
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + fmt::Debug>(value: T, flexible: bool) {
        let mut buf = BytesMut::new();
        value.write(&mut buf, flexible, 0).unwrap();
        let mut bytes = buf.freeze();
        assert_eq!(T::read(&mut bytes, flexible, 0).unwrap(), value);
        assert!(bytes.is_empty());
    }

    #[test]
    fn varints_round_trip_at_every_width_boundary() {
        for value in [
            0,
            1,
            127,
            128,
            16383,
            16384,
            2_097_151,
            2_097_152,
            268_435_455,
            268_435_456,
            u32::MAX,
        ] {
            let mut buf = BytesMut::new();
            write_unsigned_varint(&mut buf, value);
            assert_eq!(buf.len(), unsigned_varint_len(value));
            assert_eq!(read_unsigned_varint(&mut buf.freeze()).unwrap(), value);
        }
    }

    #[test]
    fn varint_longer_than_five_bytes_is_rejected() {
        let mut bytes = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(
            read_unsigned_varint(&mut bytes),
            Err(DecodeError::VarintTooLong)
        );
    }

    #[test]
    fn strings_bytes_and_arrays_round_trip_in_both_forms() {
        for flexible in [false, true] {
            round_trip(String::from("spool"), flexible);
            round_trip(Some(String::from("é")), flexible);
            round_trip(None::<String>, flexible);
            round_trip(Bytes::from_static(b"\x00\x01"), flexible);
            round_trip(None::<Bytes>, flexible);
            round_trip(vec![1i32, -2, 3], flexible);
            round_trip(Some(vec![String::from("a")]), flexible);
            round_trip(None::<Vec<i64>>, flexible);
        }
    }

    #[test]
    fn huge_array_count_is_refused_before_allocating() {
        let mut bytes = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        let err = Vec::<i32>::read(&mut bytes, false, 0).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::LengthExceedsRemaining { what: "array", .. }
        ));
    }

    #[test]
    fn string_length_beyond_the_buffer_is_refused() {
        let mut bytes = Bytes::from_static(&[0x7f, 0xff, b'a']);
        assert!(matches!(
            String::read(&mut bytes, false, 0),
            Err(DecodeError::LengthExceedsRemaining { what: "string", .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_replaced_as_kafka_does() {
        let mut bytes = Bytes::from_static(&[0x00, 0x02, 0xe9, b'A']);
        assert_eq!(String::read(&mut bytes, false, 0).unwrap(), "\u{fffd}A");
    }

    #[test]
    fn strings_longer_than_an_i16_length_are_refused_in_both_forms() {
        let long = "x".repeat(STRING_BYTES_MAX + 1);
        for flexible in [false, true] {
            assert!(long.write(&mut BytesMut::new(), flexible, 0).is_err());
        }
        let mut compact = BytesMut::new();
        write_unsigned_varint(&mut compact, (STRING_BYTES_MAX + 2) as u32);
        compact.put_slice(long.as_bytes());
        assert_eq!(
            String::read(&mut compact.freeze(), true, 0),
            Err(DecodeError::StringTooLong(STRING_BYTES_MAX + 1))
        );
    }

    #[test]
    fn null_for_a_non_nullable_string_is_an_error() {
        let mut bytes = Bytes::from_static(&[0xff, 0xff]);
        assert_eq!(
            String::read(&mut bytes, false, 0),
            Err(DecodeError::NullNotAllowed)
        );
    }

    #[test]
    fn repeated_or_descending_tags_are_refused() {
        // Two tagged fields, tag 5 then tag 5 (each one byte long), then 5 then 2.
        for (second, name) in [(5u8, "repeated"), (2, "descending")] {
            let mut bytes = Bytes::copy_from_slice(&[2, 5, 1, 0xaa, second, 1, 0xbb]);
            assert_eq!(
                read_tagged_fields(&mut bytes, |_, _| Ok(false)),
                Err(DecodeError::TaggedFieldsOutOfOrder {
                    tag: u32::from(second)
                }),
                "{name}"
            );
        }
    }

    #[test]
    fn uuid_displays_in_canonical_form() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
    }

    #[test]
    fn unknown_tagged_fields_come_back_in_tag_order() {
        let mut writer = TaggedFieldsWriter::new();
        writer.add(1, &7i32, 0).unwrap();
        let unknown = vec![
            RawTaggedField {
                tag: 9,
                data: Bytes::from_static(b"x"),
            },
            RawTaggedField {
                tag: 0,
                data: Bytes::new(),
            },
        ];
        let mut buf = BytesMut::new();
        writer.finish(&mut buf, &unknown).unwrap();
        let mut bytes = buf.freeze();
        let mut seen = Vec::new();
        let rest = read_tagged_fields(&mut bytes, |tag, data| {
            seen.push(tag);
            if tag == 1 {
                assert_eq!(i32::read(data, true, 0)?, 7);
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, vec![0, 1, 9]);
        assert_eq!(rest.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![0, 9]);
    }
}
