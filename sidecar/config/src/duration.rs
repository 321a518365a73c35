//! Durations as the configuration spells them (`5s`, `250ms`), parsed by a visitor so that an
//! error names the key and the line, and written back the same way (`#[serde(with)]`).

use std::{fmt, time::Duration};

use serde::{Deserializer, Serializer, de};

/// Parses `5s`, `250ms`, `1m 30s`. A visitor, so that an error carries the key and the line;
/// public so that files that hold the sidecar's durations (the injector's) spell them alike.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 5s or 250ms")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|e| {
                E::custom(format!(
                    "`{v}` is not a duration ({e}); write e.g. 5s or 250ms"
                ))
            })
        }
    }
    d.deserialize_str(Visitor)
}

/// Writes a duration as [`deserialize`] reads it (`5s`, `1m 30s`, `250ms`): how the injector
/// writes a pod's sidecar file.
pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*duration))
}
