//! Bytes that are usually text (paths, link targets, xattr names) in JSON: a plain string when
//! they are valid UTF-8, `{"hex": "..."}` when they are not. File names on Linux are bytes; a
//! name that is not UTF-8 must survive a backup unchanged.

use std::fmt;

use serde::de::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::entry::{hex, unhex};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct ByteText(pub Vec<u8>);

impl fmt::Debug for ByteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[derive(Serialize)]
struct Hex<'a> {
    hex: &'a str,
}

/// Write bytes as [`ByteText`] does, without owning them.
pub(crate) fn serialize_bytes<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(bytes) {
        Ok(t) => s.serialize_str(t),
        Err(_) => Hex { hex: &hex(bytes) }.serialize(s),
    }
}

impl Serialize for ByteText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_bytes(&self.0, s)
    }
}

/// A string, or a map with the one key `hex`. Written as a visitor rather than an untagged
/// enum: serde buffers every untagged value in an intermediate tree before it tries the
/// variants, and every path, link and xattr of a manifest is one (it was most of the time of
/// reading a manifest).
struct ByteTextVisitor;

impl<'de> serde::de::Visitor<'de> for ByteTextVisitor {
    type Value = ByteText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a string or {"hex": "<hex digits>"}"#)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<ByteText, E> {
        Ok(ByteText(v.as_bytes().to_vec()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<ByteText, E> {
        Ok(ByteText(v.into_bytes()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ByteText, A::Error> {
        let mut found: Option<Vec<u8>> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "hex" {
                return Err(A::Error::unknown_field(&key, &["hex"]));
            }
            if found.is_some() {
                return Err(A::Error::duplicate_field("hex"));
            }
            let digits: std::borrow::Cow<'de, str> = map.next_value()?;
            found = Some(unhex(&digits).map_err(A::Error::custom)?);
        }
        found
            .map(ByteText)
            .ok_or_else(|| A::Error::missing_field("hex"))
    }
}

impl<'de> Deserialize<'de> for ByteText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ByteTextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        for b in [
            b"etc/hosts".to_vec(),
            b"a\nb".to_vec(),
            vec![0x66, 0xff, 0xfe, 0x0a],
            Vec::new(),
        ] {
            let j = serde_json::to_string(&ByteText(b.clone())).unwrap();
            let back: ByteText = serde_json::from_str(&j).unwrap();
            assert_eq!(back.0, b, "{j}");
        }
        assert_eq!(
            serde_json::to_string(&ByteText(vec![0xff])).unwrap(),
            r#"{"hex":"ff"}"#
        );
    }
}

#[cfg(test)]
mod hex_input {
    use super::ByteText;

    #[test]
    fn hex_that_is_not_ascii_is_an_error() {
        for bad in [
            r#"{"hex":"aéa"}"#,
            r#"{"hex":"é0"}"#,
            r#"{"hex":"0g"}"#,
            r#"{"hex":"abc"}"#,
            r#"{"hex":"ab","x":1}"#,
            r#"{}"#,
            r#"12"#,
        ] {
            assert!(serde_json::from_str::<ByteText>(bad).is_err(), "{bad}");
        }
    }
}
