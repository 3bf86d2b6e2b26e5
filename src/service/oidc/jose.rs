//! Signed JSON Web Tokens as OpenID providers send them (ID tokens, logout tokens): compact
//! JWS decoding, and signature verification against the provider's JSON Web Key Set, or the
//! client secret for the HMAC algorithms. The signature itself is checked by jsonwebtoken (on
//! ring), as JWT login checks its tokens; this module picks the key (by `kid`, key type,
//! curve and use) and refuses what neither should accept: unsigned (`none`) and encrypted
//! tokens, and `crit` extensions. Claims are checked by the caller, on the server's clock.

use std::{collections::HashSet, str::FromStr};

use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue};

/// The longest token accepted, in bytes; real ID tokens are a few kilobytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoseError {
    /// Not a compact JWS with a JSON header and a JSON object as payload.
    Malformed(String),
    /// An algorithm this server does not verify (`none` among them).
    UnsupportedAlgorithm(String),
    /// No key of the set fits the token (its `kid`, or its algorithm's key type): the
    /// provider may have rotated its keys.
    NoKey,
    /// The signature does not verify.
    BadSignature,
}

impl std::fmt::Display for JoseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed token: {why}"),
            Self::UnsupportedAlgorithm(alg) => write!(f, "unsupported signing algorithm `{alg}`"),
            Self::NoKey => f.write_str("no key of the provider's key set fits the token"),
            Self::BadSignature => f.write_str("the signature does not verify"),
        }
    }
}

/// A provider's key set (`jwks_uri`). Keys this server cannot read are left out.
#[derive(Clone, Debug, Default)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Raw {
            keys: Vec<JsonValue>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let keys = raw.keys.into_iter().filter_map(|k| serde_json::from_value(k).ok()).collect();
        Ok(Self { keys })
    }
}

/// The protected header's fields this server reads.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    enc: Option<JsonValue>,
    #[serde(default)]
    crit: Option<JsonValue>,
}

/// A decoded, not yet verified compact JWS.
#[derive(Debug)]
pub struct Jws {
    pub header: Header,
    pub claims: Map<String, JsonValue>,
    token: String,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, JoseError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JoseError::Malformed(format!("the {what} is not base64url")))
}

/// Decode a compact JWS (`header.payload.signature`) without verifying it.
pub fn decode(token: &str) -> Result<Jws, JoseError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JoseError::Malformed("too long".to_owned()));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JoseError::Malformed("not three dot-separated parts".to_owned()));
    };
    let header_json: Header = serde_json::from_slice(&b64(header, "header")?)
        .map_err(|e| JoseError::Malformed(format!("header: {e}")))?;
    if header_json.enc.is_some() {
        return Err(JoseError::UnsupportedAlgorithm("encrypted tokens".to_owned()));
    }
    if header_json.crit.is_some() {
        return Err(JoseError::Malformed("critical header extensions are not understood".to_owned()));
    }
    let claims = match serde_json::from_slice(&b64(payload, "payload")?) {
        Ok(JsonValue::Object(claims)) => claims,
        _ => return Err(JoseError::Malformed("the payload is not a JSON object".to_owned())),
    };
    b64(signature, "signature")?;
    Ok(Jws { header: header_json, claims, token: token.to_owned() })
}

/// Whether `key` can verify a signature of `alg`: the key type (and curve) the algorithm
/// needs, not an encryption key, and the algorithm the key names if it names one.
fn fits(key: &Jwk, alg: Algorithm) -> bool {
    let family = match (&key.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => ec.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => okp.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    let named = key.common.key_algorithm.is_none_or(|named| format!("{named:?}") == format!("{alg:?}"));
    family && named && key.common.public_key_use != Some(PublicKeyUse::Encryption)
}

impl Jws {
    /// Verify the signature with a key of `keys` (chosen by `kid`, else every key that fits
    /// the algorithm is tried), or with `secret` for the HMAC algorithms.
    pub fn verify(&self, keys: &JwkSet, secret: Option<&[u8]>) -> Result<(), JoseError> {
        let unsupported = || JoseError::UnsupportedAlgorithm(self.header.alg.clone());
        let alg = Algorithm::from_str(&self.header.alg).map_err(|_| unsupported())?;
        // Only the signature: every claim is the caller's to check, on the server's clock.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let check =
            |key: &DecodingKey| jsonwebtoken::decode::<JsonValue>(&self.token, key, &validation).is_ok();
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            let secret = secret.ok_or_else(unsupported)?;
            return if check(&DecodingKey::from_secret(secret)) {
                Ok(())
            } else {
                Err(JoseError::BadSignature)
            };
        }
        let candidates: Vec<&Jwk> = keys
            .keys
            .iter()
            .filter(|k| fits(k, alg))
            .filter(|k| match (&self.header.kid, &k.common.key_id) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JoseError::NoKey);
        }
        let verified =
            candidates.into_iter().filter_map(|k| DecodingKey::from_jwk(k).ok()).any(|key| check(&key));
        if verified { Ok(()) } else { Err(JoseError::BadSignature) }
    }
}

#[cfg(test)]
mod tests {
    use ring::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
    };
    use serde_json::json;

    use super::*;

    fn enc(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn signing_input(header: JsonValue, claims: JsonValue) -> String {
        format!("{}.{}", enc(header.to_string().as_bytes()), enc(claims.to_string().as_bytes()))
    }

    fn ec_key() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        let jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256",
            "x": enc(&public[1..33]), "y": enc(&public[33..65]),
        }))
        .unwrap();
        (pair, jwk)
    }

    fn ec_token(pair: &EcdsaKeyPair, header: JsonValue, claims: JsonValue) -> String {
        let input = signing_input(header, claims);
        let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", enc(signature.as_ref()))
    }

    #[test]
    fn es256_tokens_verify_and_tampering_is_refused() {
        let (pair, jwk) = ec_key();
        let (_, other) = ec_key();
        let keys = JwkSet { keys: vec![jwk.clone()] };
        let token = ec_token(&pair, json!({"alg": "ES256", "kid": "ec1"}), json!({"sub": "alice"}));
        let jws = decode(&token).unwrap();
        assert_eq!(jws.claims["sub"], "alice");
        jws.verify(&keys, None).unwrap();
        // Another key with the same kid: the signature fails.
        let mut other = other;
        other.common.key_id = Some("ec1".into());
        let wrong = JwkSet { keys: vec![other] };
        assert_eq!(jws.verify(&wrong, None), Err(JoseError::BadSignature));
        // A kid the set does not hold: the set may be stale.
        let mut renamed = jwk.clone();
        renamed.common.key_id = Some("ec2".into());
        let rotated = JwkSet { keys: vec![renamed] };
        assert_eq!(jws.verify(&rotated, None), Err(JoseError::NoKey));
        // A changed payload under the original signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = enc(json!({"sub": "mallory"}).to_string().as_bytes());
        parts[1] = &forged;
        assert_eq!(decode(&parts.join(".")).unwrap().verify(&keys, None), Err(JoseError::BadSignature));
    }

    #[test]
    fn eddsa_and_hmac_verify() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk: Jwk = serde_json::from_value(
            json!({"kty": "OKP", "crv": "Ed25519", "x": enc(pair.public_key().as_ref())}),
        )
        .unwrap();
        let input = signing_input(json!({"alg": "EdDSA"}), json!({"sub": "bob"}));
        let token = format!("{input}.{}", enc(pair.sign(input.as_bytes()).as_ref()));
        decode(&token).unwrap().verify(&JwkSet { keys: vec![jwk] }, None).unwrap();

        let input = signing_input(json!({"alg": "HS256"}), json!({"sub": "carol"}));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"client-secret");
        let token = format!("{input}.{}", enc(ring::hmac::sign(&key, input.as_bytes()).as_ref()));
        let jws = decode(&token).unwrap();
        jws.verify(&JwkSet::default(), Some(b"client-secret")).unwrap();
        assert_eq!(jws.verify(&JwkSet::default(), Some(b"other")), Err(JoseError::BadSignature));
        // Without a client secret an HMAC token cannot be checked, whatever the key set.
        assert!(matches!(jws.verify(&JwkSet::default(), None), Err(JoseError::UnsupportedAlgorithm(_))));
    }

    #[test]
    fn unsigned_encrypted_and_malformed_tokens_are_refused() {
        let (pair, jwk) = ec_key();
        let keys = JwkSet { keys: vec![jwk] };
        let none = format!("{}.", signing_input(json!({"alg": "none"}), json!({"sub": "x"})));
        assert!(matches!(
            decode(&none).unwrap().verify(&keys, None),
            Err(JoseError::UnsupportedAlgorithm(_))
        ));
        let encrypted = ec_token(&pair, json!({"alg": "ES256", "enc": "A128GCM"}), json!({}));
        assert!(decode(&encrypted).is_err());
        let critical = ec_token(&pair, json!({"alg": "ES256", "crit": ["exp"]}), json!({}));
        assert!(decode(&critical).is_err());
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.", &"a".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        let array_payload = format!("{}.{}.", enc(b"{\"alg\":\"ES256\"}"), enc(b"[1]"));
        assert!(decode(&array_payload).is_err());
        // An ES256 token does not verify against an RSA-only set.
        let token = ec_token(&pair, json!({"alg": "ES256"}), json!({}));
        let rsa_only = JwkSet {
            keys: vec![serde_json::from_value(json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})).unwrap()],
        };
        assert_eq!(decode(&token).unwrap().verify(&rsa_only, None), Err(JoseError::NoKey));
    }
}
