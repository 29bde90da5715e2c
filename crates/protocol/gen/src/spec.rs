//! The spec format and its parser.
//!
//! A spec file describes one Kafka API (its request and response) or one internal record.
//! It is line-based and indentation-structured:
//!
//! ```text
//! # Produce: append record batches to partition leaders.
//! api Produce key=0 versions=3-13 flexible=9+
//!
//! request
//!   transactional_id string  nullable default=null
//!   topic_data [TopicProduceData]
//!     name string  v=3-12 ignorable
//!     topic_id uuid  v=13+ ignorable
//!
//! response
//!   ...
//! struct NodeEndpoint      (a structure shared by several fields of the section above)
//!   ...
//! ```
//!
//! A field line is `name type attributes…`. Types: `bool i8 i16 i32 i64 u16 u32 f64 string
//! bytes records uuid`, `[T]` for arrays, and a capitalised name for a structure, whose
//! fields follow indented one level deeper (or are given once by a `struct` block).
//! Attributes: `v=R` the versions the field exists in (default: all), `null=R` or
//! `nullable` (all versions), `tag=N` a tagged field (then `v=` gives its tagged versions),
//! `default=X`, and `ignorable` (writing a non-default value in a version without the field
//! is silently dropped instead of being an error). Ranges: `3`, `3-8`, `3+`, `none`.
//! Record files start with `record Name [type=N] versions=R flexible=R` and list fields
//! directly.

use std::fmt;

/// An inclusive version range; `max == i16::MAX` means "and later", `min > max` means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: i16,
    pub max: i16,
}

impl Range {
    pub const NONE: Range = Range { min: 1, max: 0 };

    pub fn is_empty(&self) -> bool {
        self.min > self.max
    }

    pub fn intersect(&self, other: &Range) -> Range {
        Range {
            min: self.min.max(other.min),
            max: self.max.min(other.max),
        }
    }

    /// Whether every version of `other` is in `self`.
    pub fn covers(&self, other: &Range) -> bool {
        other.is_empty() || (self.min <= other.min && other.max <= self.max)
    }

    fn parse(text: &str) -> Result<Range, String> {
        let number = |s: &str| {
            s.parse::<i16>()
                .map_err(|_| format!("bad version range `{text}`"))
        };
        if text == "none" {
            Ok(Range::NONE)
        } else if let Some(min) = text.strip_suffix('+') {
            Ok(Range {
                min: number(min)?,
                max: i16::MAX,
            })
        } else if let Some((min, max)) = text.split_once('-') {
            Ok(Range {
                min: number(min)?,
                max: number(max)?,
            })
        } else {
            let v = number(text)?;
            Ok(Range { min: v, max: v })
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            write!(f, "none")
        } else if self.max == i16::MAX {
            write!(f, "{}+", self.min)
        } else if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U16,
    U32,
    F64,
    String,
    Bytes,
    Records,
    Uuid,
    Array(Box<FieldType>),
    Struct(String),
}

impl FieldType {
    fn parse(text: &str) -> Result<FieldType, String> {
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let inner = FieldType::parse(inner)?;
            if matches!(inner, FieldType::Array(_) | FieldType::Records) {
                return Err(format!("unsupported array element type `{text}`"));
            }
            return Ok(FieldType::Array(Box::new(inner)));
        }
        Ok(match text {
            "bool" => FieldType::Bool,
            "i8" => FieldType::I8,
            "i16" => FieldType::I16,
            "i32" => FieldType::I32,
            "i64" => FieldType::I64,
            "u16" => FieldType::U16,
            "u32" => FieldType::U32,
            "f64" => FieldType::F64,
            "string" => FieldType::String,
            "bytes" => FieldType::Bytes,
            "records" => FieldType::Records,
            "uuid" => FieldType::Uuid,
            name if name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                FieldType::Struct(name.to_string())
            }
            other => return Err(format!("unknown type `{other}`")),
        })
    }

    /// The structure this type names, directly or as array elements.
    pub fn struct_name(&self) -> Option<&str> {
        match self {
            FieldType::Struct(name) => Some(name),
            FieldType::Array(inner) => inner.struct_name(),
            _ => None,
        }
    }

    pub fn can_be_null(&self) -> bool {
        matches!(
            self,
            FieldType::String
                | FieldType::Bytes
                | FieldType::Records
                | FieldType::Array(_)
                | FieldType::Struct(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    /// Versions the field exists in; for a tagged field, its tagged versions.
    pub versions: Range,
    pub nullable: Range,
    pub tag: Option<u32>,
    pub default: Option<String>,
    pub ignorable: bool,
    /// Fields of the structure this field defines inline.
    pub children: Vec<Field>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct StructDef {
    pub name: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
    Record,
}

/// One message: a request, a response or a record, with its shared structures.
#[derive(Debug, Clone)]
pub struct MessageSpec {
    pub name: String,
    pub kind: MessageKind,
    pub versions: Range,
    pub flexible: Range,
    pub fields: Vec<Field>,
    pub common_structs: Vec<StructDef>,
}

#[derive(Debug, Clone)]
pub enum SpecKind {
    Api { key: i16 },
    Record { record_type: Option<i16> },
}

/// A whole spec file.
#[derive(Debug, Clone)]
pub struct SpecFile {
    pub file_name: String,
    pub name: String,
    pub kind: SpecKind,
    pub summary: String,
    pub messages: Vec<MessageSpec>,
}

struct Line<'a> {
    number: usize,
    indent: usize,
    words: Vec<&'a str>,
}

/// Splits a line into words, keeping a quoted `default="…"` value whole.
fn split_words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let end = if let Some(after) = rest.strip_prefix("default=\"") {
            after
                .find('"')
                .map(|i| i + "default=\"".len() + 1)
                .unwrap_or(rest.len())
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    words
}

fn attribute<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Parses one spec file.
pub fn parse(file_name: &str, text: &str) -> Result<SpecFile, String> {
    let at = |line: usize, msg: String| format!("{file_name}:{line}: {msg}");
    let mut summary = String::new();
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        if raw.trim_start().starts_with('#') && summary.is_empty() && lines.is_empty() {
            summary = raw.trim_start().trim_start_matches('#').trim().to_string();
        }
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        if indent % 2 != 0 || content.contains('\t') {
            return Err(at(number, "indent with multiples of two spaces".into()));
        }
        lines.push(Line {
            number,
            indent: indent / 2,
            words: split_words(content),
        });
    }
    let Some(header) = lines.first() else {
        return Err(format!("{file_name}: empty spec"));
    };
    let range_attr = |words: &[&str], key: &str, line: usize| -> Result<Range, String> {
        let text = attribute(words, key).ok_or_else(|| at(line, format!("missing `{key}=`")))?;
        Range::parse(text).map_err(|e| at(line, e))
    };
    let versions = range_attr(&header.words, "versions", header.number)?;
    let flexible = range_attr(&header.words, "flexible", header.number)?.intersect(&Range {
        min: versions.min,
        max: i16::MAX,
    });
    let name = header
        .words
        .get(1)
        .ok_or_else(|| at(header.number, "missing name".into()))?
        .to_string();
    let number_attr = |key: &str| -> Result<Option<i16>, String> {
        attribute(&header.words, key)
            .map(|v| {
                v.parse::<i16>()
                    .map_err(|_| at(header.number, format!("bad `{key}`")))
            })
            .transpose()
    };
    let kind = match header.words[0] {
        "api" => SpecKind::Api {
            key: number_attr("key")?.ok_or_else(|| at(header.number, "missing `key=`".into()))?,
        },
        "record" => SpecKind::Record {
            record_type: number_attr("type")?,
        },
        other => {
            return Err(at(
                header.number,
                format!("expected `api` or `record`, found `{other}`"),
            ));
        }
    };

    let mut messages: Vec<MessageSpec> = Vec::new();
    if let SpecKind::Record { .. } = kind {
        messages.push(MessageSpec {
            name: name.clone(),
            kind: MessageKind::Record,
            versions,
            flexible,
            fields: Vec::new(),
            common_structs: Vec::new(),
        });
    }
    // Where the lines below a block header go: the message's fields or a common struct.
    enum Target {
        None,
        Message,
        Struct,
    }
    let mut target = if messages.is_empty() {
        Target::None
    } else {
        Target::Message
    };
    let mut block: Vec<&Line> = Vec::new();
    let flush = |target: &Target,
                 block: &mut Vec<&Line>,
                 messages: &mut Vec<MessageSpec>|
     -> Result<(), String> {
        let fields = parse_fields(block, 1, file_name)?;
        block.clear();
        let Some(message) = messages.last_mut() else {
            return if fields.is_empty() {
                Ok(())
            } else {
                Err(format!("{file_name}: fields outside a section"))
            };
        };
        match target {
            Target::None => {}
            Target::Message => message.fields = fields,
            Target::Struct => {
                if let Some(s) = message.common_structs.last_mut() {
                    s.fields = fields;
                }
            }
        }
        Ok(())
    };
    for line in &lines[1..] {
        if line.indent > 0 {
            block.push(line);
            continue;
        }
        flush(&target, &mut block, &mut messages)?;
        match line.words[0] {
            "request" | "response" if matches!(kind, SpecKind::Api { .. }) => {
                let (suffix, kind) = if line.words[0] == "request" {
                    ("Request", MessageKind::Request)
                } else {
                    ("Response", MessageKind::Response)
                };
                let flexible = match attribute(&line.words, "flexible") {
                    Some(r) => Range::parse(r).map_err(|e| at(line.number, e))?,
                    None => flexible,
                };
                messages.push(MessageSpec {
                    name: format!("{name}{suffix}"),
                    kind,
                    versions,
                    flexible,
                    fields: Vec::new(),
                    common_structs: Vec::new(),
                });
                target = Target::Message;
            }
            "struct" => {
                let struct_name = line
                    .words
                    .get(1)
                    .ok_or_else(|| at(line.number, "missing struct name".into()))?;
                let message = messages
                    .last_mut()
                    .ok_or_else(|| at(line.number, "struct before any section".into()))?;
                message.common_structs.push(StructDef {
                    name: struct_name.to_string(),
                    fields: Vec::new(),
                });
                target = Target::Struct;
            }
            other => return Err(at(line.number, format!("unexpected `{other}`"))),
        }
    }
    flush(&target, &mut block, &mut messages)?;
    let spec = SpecFile {
        file_name: file_name.to_string(),
        name,
        kind,
        summary,
        messages,
    };
    validate(&spec)?;
    Ok(spec)
}

fn parse_fields(lines: &[&Line], depth: usize, file_name: &str) -> Result<Vec<Field>, String> {
    let at = |line: usize, msg: String| format!("{file_name}:{line}: {msg}");
    let mut fields = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.indent != depth {
            return Err(at(line.number, format!("expected indent level {depth}")));
        }
        let mut end = i + 1;
        while end < lines.len() && lines[end].indent > depth {
            end += 1;
        }
        let words = &line.words;
        if words.len() < 2 {
            return Err(at(line.number, "a field needs a name and a type".into()));
        }
        for w in &words[2..] {
            let key = w.split('=').next().unwrap_or("");
            if !matches!(
                key,
                "v" | "null" | "nullable" | "tag" | "default" | "ignorable"
            ) {
                return Err(at(line.number, format!("unknown attribute `{w}`")));
            }
        }
        let range = |key: &str, fallback: Range| -> Result<Range, String> {
            match attribute(words, key) {
                Some(r) => Range::parse(r).map_err(|e| at(line.number, e)),
                None => Ok(fallback),
            }
        };
        let all = Range {
            min: 0,
            max: i16::MAX,
        };
        let nullable = if words.contains(&"nullable") {
            all
        } else {
            range("null", Range::NONE)?
        };
        let tag = attribute(words, "tag")
            .map(|t| {
                t.parse::<u32>()
                    .map_err(|_| at(line.number, format!("bad tag `{t}`")))
            })
            .transpose()?;
        let default = attribute(words, "default").map(|d| d.trim_matches('"').to_string());
        fields.push(Field {
            name: words[0].to_string(),
            ty: FieldType::parse(words[1]).map_err(|e| at(line.number, e))?,
            versions: range("v", all)?,
            nullable,
            tag,
            default,
            ignorable: words.contains(&"ignorable"),
            children: parse_fields(&lines[i + 1..end], depth + 1, file_name)?,
            line: line.number,
        });
        i = end;
    }
    Ok(fields)
}

/// Checks what the generator relies on: structures are defined once, tags are unique and
/// only used in flexible versions, nullability only on types that can be null, defaults
/// parse for their type.
fn validate(spec: &SpecFile) -> Result<(), String> {
    for message in &spec.messages {
        let mut names: Vec<String> = vec![message.name.clone()];
        let mut referenced: Vec<(String, usize)> = Vec::new();
        let check =
            |fields: &[Field], names: &mut Vec<String>, referenced: &mut Vec<(String, usize)>| {
                validate_fields(spec, message, fields, names, referenced)
            };
        check(&message.fields, &mut names, &mut referenced)?;
        for s in &message.common_structs {
            if names.contains(&s.name) {
                return Err(format!(
                    "{}: structure {} defined twice",
                    spec.file_name, s.name
                ));
            }
            names.push(s.name.clone());
            check(&s.fields, &mut names, &mut referenced)?;
        }
        for (name, line) in referenced {
            if !names.contains(&name) {
                return Err(format!(
                    "{}:{line}: structure {name} is never defined",
                    spec.file_name
                ));
            }
        }
    }
    Ok(())
}

fn validate_fields(
    spec: &SpecFile,
    message: &MessageSpec,
    fields: &[Field],
    names: &mut Vec<String>,
    referenced: &mut Vec<(String, usize)>,
) -> Result<(), String> {
    let at = |line: usize, msg: String| format!("{}:{line}: {msg}", spec.file_name);
    let mut tags: Vec<u32> = Vec::new();
    let mut field_names: Vec<&str> = Vec::new();
    for f in fields {
        if field_names.contains(&f.name.as_str()) {
            return Err(at(f.line, format!("field {} appears twice", f.name)));
        }
        field_names.push(&f.name);
        if !f
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(at(
                f.line,
                format!("field names are snake_case: `{}`", f.name),
            ));
        }
        let present = f.versions.intersect(&message.versions);
        if present.is_empty() {
            return Err(at(
                f.line,
                format!("field {} exists in no supported version", f.name),
            ));
        }
        if let Some(tag) = f.tag {
            if tags.contains(&tag) {
                return Err(at(f.line, format!("tag {tag} used twice")));
            }
            tags.push(tag);
            if !message.flexible.covers(&present) {
                return Err(at(
                    f.line,
                    format!("tagged field {} outside flexible versions", f.name),
                ));
            }
        }
        if !f.nullable.intersect(&present).is_empty() && !f.ty.can_be_null() {
            return Err(at(
                f.line,
                format!("field {} of type {:?} cannot be nullable", f.name, f.ty),
            ));
        }
        if let Some(default) = &f.default {
            check_default(&f.ty, default, f.nullable.intersect(&present).is_empty())
                .map_err(|e| at(f.line, e))?;
        }
        match (f.ty.struct_name(), f.children.is_empty()) {
            (Some(name), false) => {
                if names.iter().any(|n| n == name) {
                    return Err(at(f.line, format!("structure {name} defined twice")));
                }
                names.push(name.to_string());
                validate_fields(spec, message, &f.children, names, referenced)?;
            }
            (Some(name), true) => referenced.push((name.to_string(), f.line)),
            (None, false) => {
                return Err(at(
                    f.line,
                    format!("field {} has children but is not a structure", f.name),
                ));
            }
            (None, true) => {}
        }
    }
    Ok(())
}

fn check_default(ty: &FieldType, default: &str, never_null: bool) -> Result<(), String> {
    let bad = || Err(format!("default `{default}` does not fit {ty:?}"));
    if default == "null" {
        return if never_null {
            Err(format!(
                "default null on a field that is never nullable ({ty:?})"
            ))
        } else {
            Ok(())
        };
    }
    let ok = match ty {
        FieldType::Bool => default == "true" || default == "false",
        FieldType::I8 => default.parse::<i8>().is_ok(),
        FieldType::I16 => default.parse::<i16>().is_ok(),
        FieldType::I32 => default.parse::<i32>().is_ok(),
        FieldType::I64 => default.parse::<i64>().is_ok(),
        FieldType::U16 => default.parse::<u16>().is_ok(),
        FieldType::U32 => default.parse::<u32>().is_ok(),
        FieldType::F64 => default.parse::<f64>().is_ok(),
        FieldType::String => true,
        _ => false,
    };
    if ok { Ok(()) } else { bad() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Example: a test API.
api Example key=99 versions=1-4 flexible=3+

request
  name string  nullable default=null
  items [Item]  v=2+
    id i32  default=-1
    note string  tag=0 v=3+ ignorable

response
  error_code i16
  node Node  tag=1 v=4+

struct Node
  host string
";

    #[test]
    fn parses_sections_nesting_attributes_and_common_structs() {
        let spec = parse("example.spec", SAMPLE).unwrap();
        assert_eq!(spec.summary, "Example: a test API.");
        assert!(matches!(spec.kind, SpecKind::Api { key: 99 }));
        let request = &spec.messages[0];
        assert_eq!(request.name, "ExampleRequest");
        assert_eq!(
            request.flexible,
            Range {
                min: 3,
                max: i16::MAX
            }
        );
        assert_eq!(
            request.fields[1].versions,
            Range {
                min: 2,
                max: i16::MAX
            }
        );
        assert_eq!(request.fields[1].children[1].tag, Some(0));
        assert_eq!(request.fields[1].children[0].default.as_deref(), Some("-1"));
        let response = &spec.messages[1];
        assert_eq!(response.common_structs[0].name, "Node");
        assert_eq!(response.common_structs[0].fields[0].name, "host");
    }

    #[test]
    fn rejects_tagged_fields_outside_flexible_versions() {
        let text = SAMPLE.replace("tag=1 v=4+", "tag=1 v=1+");
        assert!(
            parse("example.spec", &text)
                .unwrap_err()
                .contains("outside flexible")
        );
    }

    #[test]
    fn rejects_undefined_structures_and_bad_defaults() {
        let text = SAMPLE.replace("struct Node", "struct Other");
        assert!(
            parse("example.spec", &text)
                .unwrap_err()
                .contains("never defined")
        );
        let text = SAMPLE.replace("default=-1", "default=x");
        assert!(
            parse("example.spec", &text)
                .unwrap_err()
                .contains("does not fit")
        );
    }
}
