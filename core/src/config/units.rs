//! Durations typed once, at load. A setting keeps the unit its key names (`lock_ttl_ms =
//! 30000`, `stuck_after_secs = 300`), so files and variables are unchanged, and is a
//! [`Duration`] from then on: `#[serde(rename = "lock_ttl_ms", with = "units::ms")]`.
//!
//! Each accepts a non-negative integer, or a string of digits (a quoted TOML value, or a
//! gateway table built as JSON); anything else (a fraction, a negative number) is refused
//! with the unit in the message.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

/// A whole number of `unit`s.
struct Whole(&'static str);

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number of {}", self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        v.trim()
            .parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

fn whole<'de, D: Deserializer<'de>>(d: D, unit: &'static str) -> Result<u64, D::Error> {
    d.deserialize_any(Whole(unit))
}

fn saturating(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `*_ms` keys.
pub mod ms {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(saturating(d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        whole(d, "milliseconds").map(Duration::from_millis)
    }
}

/// `*_secs` keys.
pub mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        whole(d, "seconds").map(Duration::from_secs)
    }
}

/// `*_mins` keys.
pub mod mins {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs() / 60)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        whole(d, "minutes").map(|m| Duration::from_secs(m.saturating_mul(60)))
    }
}

/// `*_hours` keys.
pub mod hours {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs() / 3_600)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        whole(d, "hours").map(|h| Duration::from_secs(h.saturating_mul(3_600)))
    }
}

/// Optional `*_ms` keys (absent = `None`).
pub mod opt_ms {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&saturating(d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct Opt;
        impl<'de> Visitor<'de> for Opt {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of milliseconds")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                super::ms::deserialize(d).map(Some)
            }
        }
        d.deserialize_option(Opt)
    }
}

/// A list of `*_secs`: a sequence (`[0, 5, 300]`), or a comma-separated string
/// (`PAYGATE_DISPATCHER_RETRY_SCHEDULE_SECS=0,5,300`), or one number.
pub mod secs_list {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for d in list {
            seq.serialize_element(&d.as_secs())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of whole seconds (`[0, 5, 300]` or \"0,5,300\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(vec![Duration::from_secs(v)])
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Whole("seconds")
                    .visit_i64(v)
                    .map(|v| vec![Duration::from_secs(v)])
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.split(',')
                    .map(|part| Whole("seconds").visit_str(part).map(Duration::from_secs))
                    .collect()
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                struct Secs(Duration);
                impl<'de> de::Deserialize<'de> for Secs {
                    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        super::secs::deserialize(d).map(Secs)
                    }
                }
                let mut list = Vec::new();
                while let Some(Secs(d)) = seq.next_element()? {
                    list.push(d);
                }
                Ok(list)
            }
        }
        d.deserialize_any(List)
    }
}

/// A list of TCP ports: a sequence (`[443, 8443]`), a comma-separated string
/// (`PAYGATE_DESTINATIONS_ALLOWED_PORTS=443,8443`), or one number.
pub mod ports_list {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[u16], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for port in list {
            seq.serialize_element(port)?;
        }
        seq.end()
    }

    fn port<E: de::Error>(v: u64) -> Result<u16, E> {
        u16::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"a port"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<u16>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ports (`[443, 8443]` or \"443,8443\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                port(v).map(|p| vec![p])
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Whole("ports").visit_i64(v).and_then(port).map(|p| vec![p])
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.split(',')
                    .map(|part| Whole("ports").visit_str(part).and_then(port))
                    .collect()
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                struct Port(u16);
                impl<'de> de::Deserialize<'de> for Port {
                    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        whole(d, "ports").and_then(port).map(Port)
                    }
                }
                let mut list = Vec::new();
                while let Some(Port(p)) = seq.next_element()? {
                    list.push(p);
                }
                Ok(list)
            }
        }
        d.deserialize_any(List)
    }
}
