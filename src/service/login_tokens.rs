//! One-time login tokens for `m.login.token`: single sign-on makes one when the provider has
//! vouched for the user and hands it to the client through its redirect URL; a signed-in
//! client makes one with `POST /login/get_token` to sign in another device. A token names
//! its user (and the provider session it came from), is stored only as its SHA-256 hash,
//! works once, and expires on the server's clock. Owns the `login_tokens` table.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::UserId;
use sha2::{Digest as _, Sha256};

use super::{clock::Clock, passwords::random_string};
use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table,
        kv::KeyRange,
        tables::{LOGIN_TOKENS, LoginTokenRecord, SsoSessionRecord, TokenHash},
    },
};

/// How long a token from single sign-on is valid (Synapse's two minutes: the browser
/// delivers it to the client at once, and the spec asks for a short life).
pub const SSO_LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(120);
/// Characters of a token: about 190 bits of randomness.
const TOKEN_LEN: usize = 32;
/// The longest token accepted; anything longer is no token of ours and is not hashed.
const MAX_TOKEN_LEN: usize = 256;

pub struct LoginTokens {
    tokens: Table<TokenHash, LoginTokenRecord>,
    clock: Arc<dyn Clock>,
    /// Serialises taking a token, so two logins racing with one token cannot both read it
    /// before either deletes it.
    taking: Mutex<()>,
}

fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

impl LoginTokens {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Self {
        Self { tokens: LOGIN_TOKENS.open(store), clock, taking: Mutex::new(()) }
    }

    /// The server's time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new token for `user_id`, valid for `lifetime`; `sso` names the provider session it
    /// came from, which the device it logs in will be tied to (for back-channel logout).
    pub fn issue(
        &self,
        user_id: &UserId,
        lifetime: Duration,
        sso: Option<SsoSessionRecord>,
    ) -> Result<String> {
        let token = random_string(TOKEN_LEN);
        let expires_ms = self.clock.now_ms().saturating_add(lifetime.as_millis() as u64);
        let record = LoginTokenRecord { user_id: user_id.to_owned(), expires_ms, sso };
        self.tokens.insert(&hash_token(&token), &record)?;
        Ok(token)
    }

    /// Use a token up: what it logs into, once. Unknown, used and expired tokens are all
    /// `403 M_FORBIDDEN`, as the spec says for an invalid login token.
    pub fn take(&self, token: &str) -> Result<LoginTokenRecord> {
        let invalid = || Error::forbidden("Invalid login token");
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let hash = hash_token(token);
        let _taking = self.taking.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.tokens.get(&hash)?.ok_or_else(invalid)?;
        self.tokens.remove(&hash)?;
        if record.expires_ms <= self.clock.now_ms() {
            return Err(invalid());
        }
        Ok(record)
    }

    /// Delete every expired token; returns how many.
    pub fn remove_expired(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        Ok(self.tokens.remove_where(|record| record.expires_ms <= now)?)
    }

    /// Tokens stored, expired ones not yet swept included (for tests of the sweep).
    pub fn stored_tokens(&self) -> Result<usize> {
        Ok(self.tokens.scan(KeyRange::all(), Direction::Forward)?.count())
    }
}
