//! JSON Web Token login (`org.matrix.login.jwt`, Synapse's `jwt_config`): a token a company
//! portal signed names the user. The signature and algorithm are checked by `jsonwebtoken`;
//! the time claims (`exp`, `nbf`, `iat`, with Synapse's two minutes of leeway) against the
//! server's clock, and `iss` and `aud` as Synapse checks them. Owns no table: the account a
//! token names is made or logged into by `Accounts`.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value as JsonValue};

use super::clock::Clock;
use crate::{Error, Result, config::JwtConfig};

/// Clock skew allowed on the time claims, in seconds (Synapse's).
const LEEWAY_SECS: u64 = 120;
/// The longest token read; a longer one is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a valid token says.
#[derive(Debug, PartialEq, Eq)]
pub struct JwtClaims {
    /// The subject claim's value: a localpart (or the user's full ID on this server).
    pub subject: String,
    pub display_name: Option<String>,
}

pub struct JwtLogin {
    config: JwtConfig,
    /// The algorithm and key, when JWT login is on.
    key: Option<(Algorithm, DecodingKey)>,
    clock: Arc<dyn Clock>,
}

/// Synapse's answer to every bad token: 403 `M_FORBIDDEN` with the reason.
fn invalid(reason: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("JWT validation failed: {reason}"))
}

impl JwtLogin {
    pub fn new(config: &JwtConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let key = if config.enabled {
            Some(config.decoding_key().map_err(|e| Error::internal(format!("JWT login: {e}")))?)
        } else {
            None
        };
        Ok(Self { config: config.clone(), key, clock })
    }

    /// Whether `org.matrix.login.jwt` is offered.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Check `token` and read the user it names. Every refusal is `403 M_FORBIDDEN`.
    pub fn validate(&self, token: &str) -> Result<JwtClaims> {
        let Some((algorithm, key)) = &self.key else {
            return Err(Error::new(ruma::api::error::ErrorKind::Unknown, "JWT login is not enabled"));
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid(format!("the token is longer than {MAX_TOKEN_LEN} bytes")));
        }
        let mut validation = Validation::new(*algorithm);
        // Claims are checked below, against the server's clock and as Synapse checks them.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, JsonValue>>(token, key, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => invalid("Signature verification failed"),
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    invalid(format!("the token is not signed with {algorithm:?}"))
                }
                _ => invalid(e),
            }
        })?;
        let claims = data.claims;
        self.check_claims(&claims)?;
        let subject = match claims.get(self.config.subject_claim()) {
            Some(JsonValue::String(subject)) if !subject.is_empty() => subject.clone(),
            _ => return Err(Error::forbidden("Invalid JWT")),
        };
        let display_name = self
            .config
            .display_name_claim
            .as_deref()
            .and_then(|claim| claims.get(claim))
            .and_then(JsonValue::as_str)
            .map(str::to_owned)
            .filter(|name| !name.is_empty());
        Ok(JwtClaims { subject, display_name })
    }

    /// `exp`, `nbf` and `iat` when present; `iss` and `aud` when configured (and `aud` must
    /// be absent when no audience is configured).
    fn check_claims(&self, claims: &Map<String, JsonValue>) -> Result<()> {
        let now = self.clock.now_ms() / 1000;
        let time = |name: &str| -> Result<Option<u64>> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_f64()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map(|t| Some(t as u64))
                    .ok_or_else(|| invalid(format!("invalid_claim: Invalid claim \"{name}\""))),
            }
        };
        if time("exp")?.is_some_and(|exp| exp + LEEWAY_SECS < now) {
            return Err(invalid("expired_token: The token is expired"));
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
            return Err(invalid("invalid_token: The token is not valid yet"));
        }
        if time("iat")?.is_some_and(|iat| iat > now + LEEWAY_SECS) {
            return Err(invalid("invalid_token: The token was issued in the future"));
        }
        if let Some(issuer) = &self.config.issuer {
            match claims.get("iss") {
                None => return Err(invalid("missing_claim: Missing \"iss\" claim")),
                Some(JsonValue::String(iss)) if iss == issuer => {}
                Some(_) => return Err(invalid("invalid_claim: Invalid claim \"iss\"")),
            }
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            None => Vec::new(),
            Some(JsonValue::String(aud)) => vec![aud.as_str()],
            Some(JsonValue::Array(auds)) => auds.iter().filter_map(JsonValue::as_str).collect(),
            Some(_) => return Err(invalid("invalid_claim: Invalid claim \"aud\"")),
        };
        match &self.config.audiences {
            Some(allowed) if !allowed.is_empty() => {
                if !claims.contains_key("aud") {
                    return Err(invalid("missing_claim: Missing \"aud\" claim"));
                }
                if !audiences.iter().any(|aud| allowed.iter().any(|a| a == aud)) {
                    return Err(invalid("invalid_claim: Invalid claim \"aud\""));
                }
            }
            // A token meant for an audience is not meant for a server that names none.
            _ if claims.contains_key("aud") => return Err(invalid("invalid_claim: Invalid claim \"aud\"")),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::service::clock::ManualClock;

    fn login(audiences: Option<Vec<&str>>) -> (JwtLogin, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let config = JwtConfig {
            enabled: true,
            secret: Some("s3cret".to_owned()),
            algorithm: Some("HS256".to_owned()),
            display_name_claim: Some("name".to_owned()),
            issuer: Some("https://portal.example.org".to_owned()),
            audiences: audiences.map(|a| a.into_iter().map(str::to_owned).collect()),
            ..JwtConfig::default()
        };
        (JwtLogin::new(&config, clock.clone()).unwrap(), clock)
    }

    fn token(claims: JsonValue, secret: &str) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn claims_are_checked_as_synapse_checks_them() {
        let (jwt, clock) = login(None);
        let now = clock.now_ms() / 1000;
        let iss = "https://portal.example.org";
        let ok =
            jwt.validate(&token(json!({"sub": "alice", "iss": iss, "name": "Alice"}), "s3cret")).unwrap();
        assert_eq!(ok, JwtClaims { subject: "alice".into(), display_name: Some("Alice".into()) });
        for (claims, secret, why) in [
            (json!({"sub": "alice", "iss": iss}), "other", "Signature verification failed"),
            (json!({"sub": "alice"}), "s3cret", "Missing \"iss\""),
            (json!({"sub": "alice", "iss": "https://evil"}), "s3cret", "Invalid claim \"iss\""),
            (json!({"sub": "alice", "iss": iss, "aud": "x"}), "s3cret", "Invalid claim \"aud\""),
            (json!({"sub": "alice", "iss": iss, "exp": now - 121}), "s3cret", "expired"),
            (json!({"sub": "alice", "iss": iss, "nbf": now + 121}), "s3cret", "not valid yet"),
            (json!({"sub": "alice", "iss": iss, "exp": "soon"}), "s3cret", "Invalid claim \"exp\""),
            (json!({"iss": iss}), "s3cret", "Invalid JWT"),
        ] {
            let err = jwt.validate(&token(claims.clone(), secret)).unwrap_err().to_string();
            assert!(err.contains(why), "{claims}: {err}");
        }
        // Within the leeway.
        jwt.validate(&token(json!({"sub": "a", "iss": iss, "exp": now - 100}), "s3cret")).unwrap();
        assert!(jwt.validate("not.a.jwt").is_err());
        assert!(jwt.validate(&"a".repeat(MAX_TOKEN_LEN + 1)).unwrap_err().to_string().contains("longer"));
    }

    #[test]
    fn audiences_when_configured_must_be_named() {
        let (jwt, _) = login(Some(vec!["chat", "wiki"]));
        let iss = "https://portal.example.org";
        jwt.validate(&token(json!({"sub": "a", "iss": iss, "aud": "chat"}), "s3cret")).unwrap();
        jwt.validate(&token(json!({"sub": "a", "iss": iss, "aud": ["x", "wiki"]}), "s3cret")).unwrap();
        let err = jwt.validate(&token(json!({"sub": "a", "iss": iss, "aud": "x"}), "s3cret")).unwrap_err();
        assert!(err.to_string().contains("aud"), "{err}");
        let err = jwt.validate(&token(json!({"sub": "a", "iss": iss}), "s3cret")).unwrap_err();
        assert!(err.to_string().contains("Missing \"aud\""), "{err}");
    }
}
