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

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for ByteText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => Repr::Hex { hex: hex(&self.0) }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ByteText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(ByteText(t.into_bytes())),
            Repr::Hex { hex } => unhex(&hex).map(ByteText).map_err(D::Error::custom),
        }
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
        ] {
            assert!(serde_json::from_str::<ByteText>(bad).is_err(), "{bad}");
        }
    }
}
