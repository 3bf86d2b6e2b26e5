//! Server signing keys as the key API carries them (`/_matrix/key/v2/server`, the notary's
//! `/_matrix/key/v2/query`): checking a server's published keys — its name, its own
//! signature by every key it lists, its validity — and reading the public keys out.

use std::collections::BTreeMap;

use serde_json::Value as JsonValue;

/// One server's keys, as read from a checked key response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKeySet {
    /// Until when (ms since the epoch) the response may be used.
    pub valid_until_ms: u64,
    /// Key ID (`ed25519:abc`) → base64 public key, of keys in use.
    pub verify_keys: BTreeMap<String, String>,
    /// Key ID → (base64 public key, when it stopped being used).
    pub old_verify_keys: BTreeMap<String, (String, u64)>,
}

impl ServerKeySet {
    /// The public key of `key_id` valid at `at_ms`: a key in use (while the response is
    /// valid), or an old one before its `expired_ts`.
    pub fn key_at(&self, key_id: &str, at_ms: u64) -> Option<&str> {
        if let Some(key) = self.verify_keys.get(key_id)
            && at_ms <= self.valid_until_ms
        {
            return Some(key);
        }
        match self.old_verify_keys.get(key_id) {
            Some((key, expired)) if at_ms < *expired => Some(key),
            _ => None,
        }
    }
}

/// Check a key response claimed to be `server_name`'s: the name, a `valid_until_ts`, at
/// least one key, and a valid signature of the server by every key it lists as in use.
pub fn check_key_response(server_name: &str, response: &JsonValue) -> Result<ServerKeySet, String> {
    if response.get("server_name").and_then(JsonValue::as_str) != Some(server_name) {
        return Err(format!("the keys are not {server_name}'s"));
    }
    let valid_until_ms =
        response.get("valid_until_ts").and_then(JsonValue::as_u64).ok_or("no `valid_until_ts`")?;
    let mut verify_keys = BTreeMap::new();
    for (id, entry) in response.get("verify_keys").and_then(JsonValue::as_object).ok_or("no `verify_keys`")? {
        let key = entry.get("key").and_then(JsonValue::as_str).ok_or_else(|| format!("{id} has no `key`"))?;
        verify_keys.insert(id.clone(), key.to_owned());
    }
    if verify_keys.is_empty() {
        return Err("no key in `verify_keys`".into());
    }
    for (id, key) in &verify_keys {
        if !id.starts_with("ed25519:") {
            continue;
        }
        super::keys::verify_signature(response, server_name, id, key)
            .map_err(|e| format!("not signed by its own key {id}: {e}"))?;
    }
    let mut old_verify_keys = BTreeMap::new();
    if let Some(old) = response.get("old_verify_keys").and_then(JsonValue::as_object) {
        for (id, entry) in old {
            let (Some(key), Some(expired)) = (
                entry.get("key").and_then(JsonValue::as_str),
                entry.get("expired_ts").and_then(JsonValue::as_u64),
            ) else {
                continue;
            };
            old_verify_keys.insert(id.clone(), (key.to_owned(), expired));
        }
    }
    Ok(ServerKeySet { valid_until_ms, verify_keys, old_verify_keys })
}

#[cfg(test)]
mod tests {
    use ruma::{CanonicalJsonObject, signatures::Ed25519KeyPair};
    use serde_json::json;

    use super::*;

    fn signed(name: &str, pair: &Ed25519KeyPair, mut body: JsonValue) -> JsonValue {
        let mut object: CanonicalJsonObject = serde_json::from_value(body.take()).unwrap();
        ruma::signatures::sign_json(name, pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }

    fn pair(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
    }

    fn b64(pair: &Ed25519KeyPair) -> String {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, pair.public_key())
    }

    #[test]
    fn a_self_signed_response_is_read_and_a_forged_one_refused() {
        let key = pair("a");
        let body = json!({
            "server_name": "example.org",
            "valid_until_ts": 1000,
            "verify_keys": {"ed25519:a": {"key": b64(&key)}},
            "old_verify_keys": {"ed25519:old": {"key": "b2xk", "expired_ts": 500}},
        });
        let set = check_key_response("example.org", &signed("example.org", &key, body.clone())).unwrap();
        assert_eq!(set.key_at("ed25519:a", 1000), Some(b64(&key).as_str()));
        assert_eq!(set.key_at("ed25519:a", 1001), None);
        assert_eq!(set.key_at("ed25519:old", 499), Some("b2xk"));
        assert_eq!(set.key_at("ed25519:old", 500), None);

        assert!(check_key_response("other.org", &signed("example.org", &key, body.clone())).is_err());
        let forger = pair("a");
        assert!(check_key_response("example.org", &signed("example.org", &forger, body.clone())).is_err());
        assert!(check_key_response("example.org", &body).is_err());
        let mut tampered = signed("example.org", &key, body);
        tampered["valid_until_ts"] = json!(9_999_999);
        assert!(check_key_response("example.org", &tampered).is_err());
    }
}
