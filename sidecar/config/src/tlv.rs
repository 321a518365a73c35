//! The TLV allow-list's entries: a TLV type written as a name or a number.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use trueip_proxy_header::kind;

/// A TLV type in the allow-list, written as a name (`authority`) or a number (`0xEA`, `234`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlvKind(pub u8);

/// The names accepted in `tlv_allow`, with the type each stands for.
const TLV_NAMES: &[(&str, u8)] = &[
    ("alpn", kind::ALPN),
    ("authority", kind::AUTHORITY),
    ("noop", kind::NOOP),
    ("unique-id", kind::UNIQUE_ID),
    ("ssl", kind::SSL),
    ("netns", kind::NETNS),
    ("gcp", kind::GCP),
    ("aws", kind::AWS),
    ("azure", kind::AZURE),
];

impl std::str::FromStr for TlvKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(&(_, k)) = TLV_NAMES.iter().find(|(name, _)| *name == s) {
            return Ok(Self(k));
        }
        let number = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u8::from_str_radix(hex, 16),
            None => s.parse(),
        };
        match number {
            Ok(kind::CRC32C) => {
                Err("crc32c is never passed on (set `crc32c: true` to add a fresh one)".into())
            }
            Ok(k) => Ok(Self(k)),
            Err(_) => {
                let names: Vec<_> = TLV_NAMES.iter().map(|(n, _)| *n).collect();
                Err(format!(
                    "unknown TLV `{s}`, expected a number 0..=255 or one of {}",
                    names.join(", ")
                ))
            }
        }
    }
}

impl<'de> Deserialize<'de> for TlvKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = TlvKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TLV name or a number 0..=255")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TlvKind, E> {
                u8::try_from(v)
                    .map_err(|_| E::custom(format!("TLV type {v} is over 255")))
                    .and_then(|k| k.to_string().parse().map_err(E::custom))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TlvKind, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("TLV type {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TlvKind, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for TlvKind {
    /// By name where it has one (as users write them), by number otherwise.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match TLV_NAMES.iter().find(|&&(_, k)| k == self.0) {
            Some((name, _)) => s.serialize_str(name),
            None => s.serialize_u8(self.0),
        }
    }
}
