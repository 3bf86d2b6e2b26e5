//! Signed JSON Web Tokens as OpenID providers send them (ID tokens, logout tokens): compact
//! JWS decoding and signature verification against the provider's JSON Web Key Set, or the
//! client secret for the HMAC algorithms. The signature math is ring's (the crypto library
//! rustls already builds); this module only maps JOSE's names and encodings onto it. No
//! unsigned (`none`) or encrypted tokens, no `crit` extensions: each is refused. Claims are
//! checked by the caller, on the server's clock.

use base64::Engine as _;
use ring::signature::{self, RsaParameters, UnparsedPublicKey, VerificationAlgorithm};
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

/// One JSON Web Key, as far as verification needs it (RFC 7517/7518, RFC 8037).
#[derive(Clone, Debug, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub usage: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
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
    signing_input: String,
    signature: Vec<u8>,
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
    Ok(Jws {
        header: header_json,
        claims,
        signing_input: format!("{header}.{payload}"),
        signature: b64(signature, "signature")?,
    })
}

/// How an algorithm verifies: with a key of a type (and curve), or with the shared secret.
enum Method {
    Rsa(&'static RsaParameters),
    Ec(&'static str, &'static signature::EcdsaVerificationAlgorithm),
    Ed25519,
    Hmac(ring::hmac::Algorithm),
}

fn method(alg: &str) -> Result<Method, JoseError> {
    Ok(match alg {
        "RS256" => Method::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Method::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Method::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Method::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Method::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Method::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        "ES256" => Method::Ec("P-256", &signature::ECDSA_P256_SHA256_FIXED),
        "ES384" => Method::Ec("P-384", &signature::ECDSA_P384_SHA384_FIXED),
        // RFC 8037's name, and the fully specified one of RFC 9864.
        "EdDSA" | "Ed25519" => Method::Ed25519,
        "HS256" => Method::Hmac(ring::hmac::HMAC_SHA256),
        "HS384" => Method::Hmac(ring::hmac::HMAC_SHA384),
        "HS512" => Method::Hmac(ring::hmac::HMAC_SHA512),
        other => return Err(JoseError::UnsupportedAlgorithm(other.to_owned())),
    })
}

impl Jws {
    /// Verify the signature with a key of `keys` (chosen by `kid`, else every key of the
    /// algorithm's type is tried), or with `secret` for the HMAC algorithms.
    pub fn verify(&self, keys: &JwkSet, secret: Option<&[u8]>) -> Result<(), JoseError> {
        let message = self.signing_input.as_bytes();
        let alg = self.header.alg.as_str();
        let (kty, curve) = match method(alg)? {
            Method::Hmac(algorithm) => {
                let secret = secret.ok_or_else(|| JoseError::UnsupportedAlgorithm(alg.to_owned()))?;
                let key = ring::hmac::Key::new(algorithm, secret);
                return ring::hmac::verify(&key, message, &self.signature)
                    .map_err(|_| JoseError::BadSignature);
            }
            Method::Rsa(_) => ("RSA", None),
            Method::Ec(curve, _) => ("EC", Some(curve)),
            Method::Ed25519 => ("OKP", Some("Ed25519")),
        };
        let candidates: Vec<&Jwk> = keys
            .keys
            .iter()
            .filter(|k| k.kty == kty && k.usage.as_deref() != Some("enc"))
            .filter(|k| curve.is_none() || k.crv.as_deref() == curve)
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg || (is_eddsa(a) && is_eddsa(alg))))
            .filter(|k| match (&self.header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JoseError::NoKey);
        }
        for key in candidates {
            if verify_with(key, alg, message, &self.signature).unwrap_or(false) {
                return Ok(());
            }
        }
        Err(JoseError::BadSignature)
    }
}

fn is_eddsa(alg: &str) -> bool {
    matches!(alg, "EdDSA" | "Ed25519")
}

/// Whether `signature` verifies with `key`; `Err` when the key is not readable.
fn verify_with(key: &Jwk, alg: &str, message: &[u8], signature: &[u8]) -> Result<bool, JoseError> {
    let field = |value: &Option<String>, name: &str| match value {
        Some(v) => b64(v, &format!("key's `{name}`")),
        None => Err(JoseError::Malformed(format!("key without `{name}`"))),
    };
    Ok(match method(alg)? {
        Method::Rsa(params) => {
            let components =
                signature::RsaPublicKeyComponents { n: field(&key.n, "n")?, e: field(&key.e, "e")? };
            components.verify(params, message, signature).is_ok()
        }
        Method::Ec(_, algorithm) => {
            let mut point = vec![0x04];
            point.extend(field(&key.x, "x")?);
            point.extend(field(&key.y, "y")?);
            verify_public(algorithm, &point, message, signature)
        }
        Method::Ed25519 => verify_public(&signature::ED25519, &field(&key.x, "x")?, message, signature),
        Method::Hmac(_) => false,
    })
}

fn verify_public(
    algorithm: &'static dyn VerificationAlgorithm,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    UnparsedPublicKey::new(algorithm, key).verify(message, signature).is_ok()
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
        let wrong = JwkSet { keys: vec![Jwk { kid: Some("ec1".into()), ..other.clone() }] };
        assert_eq!(jws.verify(&wrong, None), Err(JoseError::BadSignature));
        // A kid the set does not hold: the set may be stale.
        let rotated = JwkSet { keys: vec![Jwk { kid: Some("ec2".into()), ..jwk.clone() }] };
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
