//! TURN credentials for VoIP calls (`GET /voip/turnServer`): the configured TURN URIs with a
//! username and password, either fixed or made per user from a secret shared with the TURN
//! server (coturn's `use-auth-secret`, the "TURN REST API" scheme): the username is
//! `<expiry as Unix seconds>:<user ID>` and the password the base64 of its HMAC-SHA1 under the
//! secret, which the TURN server checks without asking this server. No table: nothing is
//! stored.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use ring::hmac;
use ruma::UserId;

use super::clock::Clock;
use crate::config::Config;

/// What a client gets: where the TURN servers are and how to log in, for `ttl`.
#[derive(Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    pub ttl: Duration,
}

enum Secret {
    /// coturn's `static-auth-secret`.
    Shared(Vec<u8>),
    /// One account for everyone.
    Fixed { username: String, password: String },
}

pub struct Turn {
    uris: Vec<String>,
    secret: Option<Secret>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

/// The shared-secret scheme: the username names the user and when the credentials expire, and
/// the password is the base64 (padded) HMAC-SHA1 of that username under the secret.
pub fn shared_secret_credentials(secret: &[u8], user_id: &UserId, expires_at_secs: u64) -> (String, String) {
    let username = format!("{expires_at_secs}:{user_id}");
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, username.as_bytes());
    (username, base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
}

impl Turn {
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        let secret = match (&config.turn_secret, &config.turn_username, &config.turn_password) {
            (Some(secret), _, _) => Some(Secret::Shared(secret.as_bytes().to_vec())),
            (None, Some(username), Some(password)) => {
                Some(Secret::Fixed { username: username.clone(), password: password.clone() })
            }
            _ => None,
        };
        Self { uris: config.turn_uris.clone(), secret, ttl: Duration::from_secs(config.turn_ttl), clock }
    }

    /// Credentials for `user_id`, or `None` when no TURN server is configured.
    pub fn credentials(&self, user_id: &UserId) -> Option<TurnCredentials> {
        if self.uris.is_empty() {
            return None;
        }
        let (username, password) = match self.secret.as_ref()? {
            Secret::Shared(secret) => {
                let expires_at = (self.clock.now_ms() / 1000).saturating_add(self.ttl.as_secs());
                shared_secret_credentials(secret, user_id, expires_at)
            }
            Secret::Fixed { username, password } => (username.clone(), password.clone()),
        };
        Some(TurnCredentials { username, password, uris: self.uris.clone(), ttl: self.ttl })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently: `printf %s '1700000000:@alice:example.com' | openssl dgst
    /// -sha1 -hmac 'coturn-secret' -binary | base64`.
    #[test]
    fn shared_secret_password_is_hmac_sha1_base64() {
        let user = UserId::parse("@alice:example.com").unwrap();
        let (username, password) = shared_secret_credentials(b"coturn-secret", &user, 1_700_000_000);
        assert_eq!(username, "1700000000:@alice:example.com");
        assert_eq!(password, "/N5ZcwmHBLG1M07ViBEZTc+gpUc=");
    }
}
