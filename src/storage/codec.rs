//! Byte encodings for table keys and values.
//!
//! Keys use an order-preserving, self-delimiting encoding so that composite keys sort by their
//! components in order and a prefix of components selects exactly the matching rows:
//! - strings and byte strings: every 0x00 byte becomes 0x00 0xFF, then a 0x00 0x01 terminator
//!   (so "a" < "a\0" < "ab", and no encoded component is a prefix of another);
//! - `u64`: eight bytes big-endian; fixed-size byte arrays as they are.
//!
//! Values are serde_json behind one version byte. The version is declared per table in the
//! catalogue; a value written under another version is refused until a migration rewrites it.

use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde::{Serialize, de::DeserializeOwned};

/// A type that can be a table key, or a leading part of one.
pub trait KeyCodec: Sized {
    /// Append this key's encoding to `out`.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// Read one key of this type from the front of `input`, advancing it.
    fn decode_key(input: &mut &[u8]) -> Result<Self, String>;

    /// The full encoding of this key.
    fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_key(&mut out);
        out
    }

    /// Decode a whole key, refusing trailing bytes.
    fn from_key_bytes(mut bytes: &[u8]) -> Result<Self, String> {
        let key = Self::decode_key(&mut bytes)?;
        if bytes.is_empty() { Ok(key) } else { Err(format!("{} trailing key bytes", bytes.len())) }
    }
}

fn encode_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

fn decode_escaped(input: &mut &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) => {
                *input = &input[i + 2..];
                return Ok(out);
            }
            _ => return Err("bad escape in key component".to_owned()),
        }
    }
    Err("unterminated key component".to_owned())
}

impl KeyCodec for Vec<u8> {
    fn encode_key(&self, out: &mut Vec<u8>) {
        encode_escaped(self, out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        decode_escaped(input)
    }
}

impl KeyCodec for String {
    fn encode_key(&self, out: &mut Vec<u8>) {
        encode_escaped(self.as_bytes(), out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        String::from_utf8(decode_escaped(input)?).map_err(|e| e.to_string())
    }
}

impl KeyCodec for u64 {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        let (head, rest) = input.split_first_chunk::<8>().ok_or("short u64 key")?;
        *input = rest;
        Ok(u64::from_be_bytes(*head))
    }
}

impl<const N: usize> KeyCodec for [u8; N] {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        let (head, rest) = input.split_first_chunk::<N>().ok_or("short fixed-size key")?;
        *input = rest;
        Ok(*head)
    }
}

/// Matrix identifiers are keyed by their string form; decoding re-validates them.
macro_rules! string_key {
    ($($ty:ty),*) => {$(
        impl KeyCodec for $ty {
            fn encode_key(&self, out: &mut Vec<u8>) {
                encode_escaped(self.as_bytes(), out);
            }
            fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
                let s = String::decode_key(input)?;
                <$ty>::try_from(s).map_err(|e| e.to_string())
            }
        }
    )*};
}
string_key!(OwnedUserId, OwnedRoomId, OwnedEventId, OwnedRoomAliasId);

impl KeyCodec for OwnedDeviceId {
    fn encode_key(&self, out: &mut Vec<u8>) {
        encode_escaped(self.as_bytes(), out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        Ok(String::decode_key(input)?.into())
    }
}

impl<A: KeyCodec, B: KeyCodec> KeyCodec for (A, B) {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
        self.1.encode_key(out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        Ok((A::decode_key(input)?, B::decode_key(input)?))
    }
}

impl<A: KeyCodec, B: KeyCodec, C: KeyCodec> KeyCodec for (A, B, C) {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
        self.1.encode_key(out);
        self.2.encode_key(out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        Ok((A::decode_key(input)?, B::decode_key(input)?, C::decode_key(input)?))
    }
}

impl<A: KeyCodec, B: KeyCodec, C: KeyCodec, D: KeyCodec> KeyCodec for (A, B, C, D) {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
        self.1.encode_key(out);
        self.2.encode_key(out);
        self.3.encode_key(out);
    }
    fn decode_key(input: &mut &[u8]) -> Result<Self, String> {
        Ok((A::decode_key(input)?, B::decode_key(input)?, C::decode_key(input)?, D::decode_key(input)?))
    }
}

/// Encode a value behind its table's version byte.
pub fn encode_value<V: Serialize>(version: u8, value: &V) -> Result<Vec<u8>, String> {
    let mut out = vec![version];
    serde_json::to_writer(&mut out, value).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decode a value, refusing any version other than the one the catalogue declares.
pub fn decode_value<V: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<V, String> {
    match bytes.split_first() {
        Some((&found, body)) if found == version => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Some((&found, _)) => Err(format!(
            "value has version {found}, this build reads version {version}: a migration is missing"
        )),
        None => Err("empty value".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<K: KeyCodec>(k: &K) -> Vec<u8> {
        k.to_key_bytes()
    }

    #[test]
    fn string_keys_sort_like_strings() {
        let mut words = vec!["ab", "a", "a\0", "b", "", "a\0\0", "\u{ff}"];
        let mut encoded: Vec<_> = words.iter().map(|w| enc(&w.to_string())).collect();
        words.sort();
        encoded.sort();
        let decoded: Vec<String> = encoded.iter().map(|e| String::from_key_bytes(e).unwrap()).collect();
        assert_eq!(decoded, words);
    }

    #[test]
    fn composite_keys_sort_by_components_and_prefix_selects() {
        let keys = [("a".to_string(), 2u64), ("a".to_string(), 10), ("ab".to_string(), 1)];
        let encoded: Vec<_> = keys.iter().map(enc).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded);
        let prefix = enc(&"a".to_string());
        let matching = encoded.iter().filter(|e| e.starts_with(&prefix)).count();
        assert_eq!(matching, 2, "prefix of component `a` must not match `ab`");
        for (k, e) in keys.iter().zip(&encoded) {
            assert_eq!(&<(String, u64)>::from_key_bytes(e).unwrap(), k);
        }
    }

    #[test]
    fn malformed_keys_are_errors_not_panics() {
        assert!(String::from_key_bytes(b"a").is_err());
        assert!(String::from_key_bytes(&[0, 7]).is_err());
        assert!(u64::from_key_bytes(&[1, 2]).is_err());
        assert!(String::from_key_bytes(&[b'a', 0, 1, b'x']).is_err());
        assert!(OwnedUserId::from_key_bytes(&enc(&"not a user".to_string())).is_err());
    }

    #[test]
    fn values_carry_their_version() {
        let bytes = encode_value(3, &vec![1, 2]).unwrap();
        assert_eq!(decode_value::<Vec<i32>>(3, &bytes).unwrap(), vec![1, 2]);
        let err = decode_value::<Vec<i32>>(4, &bytes).unwrap_err();
        assert!(err.contains("migration"), "{err}");
        assert!(decode_value::<Vec<i32>>(3, &[]).is_err());
    }
}
