//! End-to-end encryption key objects as the server handles them: which ed25519 key signed
//! a device key or cross-signing key, and checking that signature. The server never sees
//! message keys; it only relays and checks these public keys.

use base64::Engine;
use ruma::{CanonicalJsonObject, SigningKeyAlgorithm};
use serde_json::Value as JsonValue;

/// The unpadded base64 the Matrix key formats use (padded input is accepted too).
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
    engine.decode(text.trim_end_matches('=')).map_err(|e| format!("bad base64: {e}"))
}

/// Check that `object` carries a valid signature by `signer` (a user ID) with key
/// `ed25519:<key_name>`, whose public key is `public_key` (base64).
pub fn verify_signature(
    object: &JsonValue,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), String> {
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(JsonValue::as_str)
        .ok_or_else(|| format!("no signature by {signer} {key_id}"))?;
    let canonical: CanonicalJsonObject =
        serde_json::from_value(object.clone()).map_err(|e| format!("not canonical JSON: {e}"))?;
    let signed = ruma::signatures::to_canonical_json_string_for_signing(&canonical)
        .map_err(|e| format!("cannot canonicalise: {e}"))?;
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &decode_base64(public_key)?,
        &decode_base64(signature)?,
        signed.as_bytes(),
    )
    .map_err(|e| format!("signature does not verify: {e}"))
}

/// The ed25519 public key of a device keys object for `device_id`.
pub fn device_ed25519(device_keys: &JsonValue, device_id: &str) -> Option<String> {
    device_keys.get("keys")?.get(format!("ed25519:{device_id}"))?.as_str().map(str::to_owned)
}

/// The single `ed25519:<public key>` entry of a cross-signing key: (key ID, public key).
pub fn cross_signing_key(key: &JsonValue) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    id.starts_with("ed25519:").then(|| Some((id.clone(), value.as_str()?.to_owned())))?
}

/// A map of strings, the shape `keys` takes.
fn string_map(value: Option<&JsonValue>) -> bool {
    value.and_then(JsonValue::as_object).is_some_and(|m| m.values().all(JsonValue::is_string))
}

/// The shape of `signatures`: signer → key ID → signature.
fn signatures_shape(value: Option<&JsonValue>) -> bool {
    value.and_then(JsonValue::as_object).is_some_and(|m| m.values().all(|keys| string_map(Some(keys))))
}

/// Whether a device keys object has the spec's shape (`user_id`, `device_id`, `algorithms`,
/// `keys`, `signatures`); the reason when not. Only the shape: as Synapse, the server leaves
/// checking the device's signature to the clients, which do.
pub fn device_keys_shape(keys: &JsonValue) -> Result<(), String> {
    let object = keys.as_object().ok_or("device keys must be an object")?;
    for field in ["user_id", "device_id"] {
        if !object.get(field).is_some_and(JsonValue::is_string) {
            return Err(format!("device keys need a string {field}"));
        }
    }
    let algorithms = object.get("algorithms").and_then(JsonValue::as_array);
    if !algorithms.is_some_and(|a| a.iter().all(JsonValue::is_string)) {
        return Err("device keys need a list of algorithms".to_owned());
    }
    if !string_map(object.get("keys")) {
        return Err("device keys need `keys`, an object of strings".to_owned());
    }
    if !signatures_shape(object.get("signatures")) {
        return Err("device keys need `signatures`, signer to key ID to signature".to_owned());
    }
    Ok(())
}

/// Whether a one-time or fallback key has a shape clients use: the bare key (a string), or
/// a key object with a string `key` and, when signed, `signatures` of the usual shape.
pub fn one_time_key_shape(key: &JsonValue) -> Result<(), String> {
    match key {
        JsonValue::String(_) => Ok(()),
        JsonValue::Object(object) => {
            if !object.get("key").is_some_and(JsonValue::is_string) {
                return Err("a key object needs a string `key`".to_owned());
            }
            if object.get("signatures").is_some() && !signatures_shape(object.get("signatures")) {
                return Err("a key object's `signatures` map signer to key ID to signature".to_owned());
            }
            Ok(())
        }
        _ => Err("a one-time key is a string or a key object".to_owned()),
    }
}

/// Merge the signatures of `extra` (signer → key ID → signature) into `object`.
pub fn merge_signatures(object: &mut JsonValue, extra: &serde_json::Map<String, JsonValue>) {
    let Some(map) = object.as_object_mut() else { return };
    let signatures = map.entry("signatures").or_insert_with(|| JsonValue::Object(Default::default()));
    let Some(signatures) = signatures.as_object_mut() else { return };
    for (signer, keys) in extra {
        let entry = signatures.entry(signer.clone()).or_insert_with(|| JsonValue::Object(Default::default()));
        if let (Some(entry), Some(keys)) = (entry.as_object_mut(), keys.as_object()) {
            for (key_id, signature) in keys {
                entry.insert(key_id.clone(), signature.clone());
            }
        }
    }
}

#[cfg(test)]
mod shape_tests {
    use serde_json::json;

    use super::{device_keys_shape, one_time_key_shape};

    #[test]
    fn device_keys_shapes() {
        let good = json!({
            "user_id": "@a:x", "device_id": "D", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {"ed25519:D": "k"}, "signatures": {"@a:x": {"ed25519:D": "not checked"}}
        });
        assert_eq!(device_keys_shape(&good), Ok(()));
        let with = |field: &str, value: serde_json::Value| {
            let mut keys = good.clone();
            keys[field] = value;
            keys
        };
        for (field, value) in [
            ("user_id", json!(7)),
            ("device_id", json!(null)),
            ("algorithms", json!("m.olm")),
            ("algorithms", json!([1])),
            ("keys", json!("x")),
            ("keys", json!({"ed25519:D": 5})),
            ("signatures", json!([])),
            ("signatures", json!({"@a:x": "sig"})),
            ("signatures", json!({"@a:x": {"ed25519:D": 1}})),
        ] {
            assert!(device_keys_shape(&with(field, value.clone())).is_err(), "{field} = {value}");
        }
        let mut unsigned = good.clone();
        unsigned.as_object_mut().unwrap().remove("signatures");
        assert!(device_keys_shape(&unsigned).is_err());
        assert!(device_keys_shape(&json!("keys")).is_err());
    }

    #[test]
    fn one_time_key_shapes() {
        assert_eq!(one_time_key_shape(&json!("base64key")), Ok(()));
        assert_eq!(one_time_key_shape(&json!({"key": "k", "fallback": true})), Ok(()));
        assert_eq!(
            one_time_key_shape(&json!({"key": "k", "signatures": {"@a:x": {"ed25519:D": "s"}}})),
            Ok(())
        );
        for bad in [
            json!(5),
            json!(null),
            json!({"signatures": {}}),
            json!({"key": 1, "signatures": {}}),
            json!({"key": "k", "signatures": {"@a:x": "s"}}),
        ] {
            assert!(one_time_key_shape(&bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::signatures::{Ed25519KeyPair, sign_json};
    use serde_json::json;

    use super::*;

    fn key_pair() -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&der, "DEVICE".into()).unwrap()
    }

    fn public(pair: &Ed25519KeyPair) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key())
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let pair = key_pair();
        let mut object: CanonicalJsonObject = serde_json::from_value(json!({
            "user_id": "@a:x", "device_id": "DEVICE", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {"ed25519:DEVICE": public(&pair)}
        }))
        .unwrap();
        sign_json("@a:x", &pair, &mut object).unwrap();
        let signed = serde_json::to_value(&object).unwrap();
        let key = device_ed25519(&signed, "DEVICE").unwrap();
        assert_eq!(verify_signature(&signed, "@a:x", "ed25519:DEVICE", &key), Ok(()));

        let mut tampered = signed.clone();
        tampered["algorithms"] = json!([]);
        assert!(verify_signature(&tampered, "@a:x", "ed25519:DEVICE", &key).is_err());
        assert!(verify_signature(&signed, "@b:x", "ed25519:DEVICE", &key).is_err());
        // Signatures added later (by others) and unsigned data do not break it.
        let mut merged = signed.clone();
        merge_signatures(&mut merged, json!({"@b:x": {"ed25519:OTHER": "sig"}}).as_object().unwrap());
        merged["unsigned"] = json!({"device_display_name": "phone"});
        assert_eq!(verify_signature(&merged, "@a:x", "ed25519:DEVICE", &key), Ok(()));
    }

    #[test]
    fn cross_signing_keys_have_exactly_one_ed25519_key() {
        assert_eq!(
            cross_signing_key(&json!({"keys": {"ed25519:abc": "abc"}})),
            Some(("ed25519:abc".to_owned(), "abc".to_owned()))
        );
        assert_eq!(cross_signing_key(&json!({"keys": {"ed25519:a": "a", "ed25519:b": "b"}})), None);
        assert_eq!(cross_signing_key(&json!({"keys": {"curve25519:a": "a"}})), None);
    }
}
