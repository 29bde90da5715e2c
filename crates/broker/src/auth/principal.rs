//! The principal of a client certificate: its subject as an RFC 2253 distinguished name
//! (the form Kafka's Java side prints, e.g. `CN=alice,OU=eng,O=Example`), turned into a
//! user name by `ssl.principal.mapping.rules` (KIP-371).
//!
//! The rules are tried in order; the first whose pattern matches the whole name gives the
//! user. `DEFAULT` gives the name unchanged; `RULE:pattern/replacement/` rewrites it, with
//! an optional `L` or `U` after the last slash to lower- or upper-case the result.

use regex::Regex;
use x509_parser::der_parser::asn1_rs::ToDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// `ssl.principal.mapping.rules`, parsed.
#[derive(Debug, Clone)]
pub struct MappingRules(Vec<Rule>);

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Rewrite {
        pattern: Regex,
        /// In the `regex` crate's form (`${1}`, `$$`).
        replacement: String,
        case: Case,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

impl Default for MappingRules {
    fn default() -> Self {
        MappingRules(vec![Rule::Default])
    }
}

impl MappingRules {
    pub fn parse(value: &str) -> Result<MappingRules, String> {
        let mut rules = Vec::new();
        let mut rest = value.trim();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("DEFAULT") {
                rules.push(Rule::Default);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("RULE:") {
                let (pattern, after) =
                    until_slash(after).ok_or("a RULE needs pattern/replacement/")?;
                let (replacement, after) =
                    until_slash(after).ok_or("a RULE needs pattern/replacement/")?;
                let (case, after) = match after.chars().next() {
                    Some('L') => (Case::Lower, &after[1..]),
                    Some('U') => (Case::Upper, &after[1..]),
                    _ => (Case::Keep, after),
                };
                let pattern = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("bad pattern `{pattern}`: {e}"))?;
                rules.push(Rule::Rewrite {
                    pattern,
                    replacement: replacement_for_regex(replacement),
                    case,
                });
                rest = after;
            } else {
                return Err(format!(
                    "`{rest}` is neither DEFAULT nor RULE:pattern/replacement/"
                ));
            }
            rest = rest.trim_start();
            match rest.chars().next() {
                None => {}
                Some(',' | '\n') => rest = rest[1..].trim_start(),
                Some(_) => return Err(format!("expected `,` before `{rest}`")),
            }
        }
        if rules.is_empty() {
            return Err("no rules".into());
        }
        Ok(MappingRules(rules))
    }

    /// The user a distinguished name maps to; `None` when no rule applies.
    pub fn apply(&self, name: &str) -> Option<String> {
        self.0.iter().find_map(|rule| match rule {
            Rule::Default => Some(name.to_string()),
            Rule::Rewrite {
                pattern,
                replacement,
                case,
            } => {
                if !pattern.is_match(name) {
                    return None;
                }
                let user = pattern.replace(name, replacement.as_str()).into_owned();
                Some(match case {
                    Case::Keep => user,
                    Case::Lower => user.to_lowercase(),
                    Case::Upper => user.to_uppercase(),
                })
            }
        })
    }
}

/// The text up to the next unescaped `/`, and what follows that slash.
fn until_slash(text: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '/' => return Some((&text[..i], &text[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A Java replacement (`$1`, `\x` for a literal x) in the `regex` crate's form.
fn replacement_for_regex(java: &str) -> String {
    let mut out = String::new();
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {}
            },
            '$' => {
                let mut group = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    group.push(*d);
                    chars.next();
                }
                if group.is_empty() {
                    out.push_str("$$");
                } else {
                    out.push_str(&format!("${{{group}}}"));
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The subject of a DER certificate as RFC 2253 prints it: the last RDN first, attribute
/// types by their keyword (CN, OU, …) or dotted OID with the value in hex DER.
pub fn subject_name(certificate: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(certificate).ok()?;
    let rdns: Vec<String> = certificate
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type().to_id_string();
                    let keyword = KEYWORDS.iter().find(|(id, _)| *id == oid).map(|(_, k)| *k);
                    match (keyword, attribute.as_str()) {
                        (Some(keyword), Ok(value)) => format!("{keyword}={}", escape(value)),
                        _ => {
                            let der = attribute.attr_value().to_der_vec().unwrap_or_default();
                            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
                            format!("{oid}=#{hex}")
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    Some(rdns.into_iter().rev().collect::<Vec<_>>().join(","))
}

/// The keywords RFC 2253 output uses, by OID.
const KEYWORDS: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
];

/// An attribute value with RFC 2253's escapes.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_rewrite_the_first_matching_name_and_default_keeps_it() {
        let rules = MappingRules::parse(
            r"RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,RULE:^CN=([a-z]+)\/x,O=(.*)$/$1@$2/U,
              DEFAULT",
        )
        .unwrap();
        assert_eq!(
            rules
                .apply("CN=kafka-app,OU=ServiceUsers,O=Example")
                .as_deref(),
            Some("kafka-app")
        );
        assert_eq!(rules.apply("CN=bob/x,O=acme").as_deref(), Some("BOB@ACME"));
        assert_eq!(
            rules.apply("CN=alice,O=Example").as_deref(),
            Some("CN=alice,O=Example")
        );
        let lower = MappingRules::parse("RULE:^CN=([^,]*).*$/$1x/L").unwrap();
        assert_eq!(lower.apply("CN=Alice,O=X").as_deref(), Some("alicex"));
        assert_eq!(lower.apply("O=X"), None, "no rule applies");
        assert_eq!(
            MappingRules::default().apply("CN=a").as_deref(),
            Some("CN=a")
        );
        for bad in [
            "",
            "RULE:abc",
            "RULE:a/b",
            "RULE:(/x/",
            "DEFAULT DEFAULT",
            "NONE",
        ] {
            assert!(MappingRules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificate_subject_reads_as_rfc_2253_prints_it() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CountryName, "US");
        name.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        name.push(rcgen::DnType::OrganizationalUnitName, "eng");
        name.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_name(certificate.der()).as_deref(),
            Some(r"CN=alice,OU=eng,O=Example\, Inc.,C=US")
        );
        assert_eq!(subject_name(b"not a certificate"), None);
        assert_eq!(escape(" #a+b "), r"\ #a\+b\ ");
    }
}
