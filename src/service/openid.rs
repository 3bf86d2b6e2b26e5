//! OpenID tokens: a user asks for one (`POST /user/{userId}/openid/request_token`) and hands
//! it to a third party, which learns whose it is from `GET /_matrix/federation/v1/openid/userinfo`.
//! Element Call's LiveKit JWT service admits users to calls this way. A token proves nothing
//! else: it is not an access token and opens no client endpoint. Owns the `openid_tokens`
//! table; tokens are stored as SHA-256 hashes and expire after an hour, when a read or the
//! periodic sweep deletes them.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedUserId, UserId};
use sha2::{Digest as _, Sha256};

use super::{clock::Clock, passwords::random_string, users::Users};
use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table,
        kv::KeyRange,
        tables::{OPENID_TOKENS, OpenIdTokenRecord, TokenHash},
    },
};

/// How long an OpenID token is valid (Synapse's fixed hour).
pub const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Characters of a token: about 190 bits of randomness.
const TOKEN_LEN: usize = 32;

/// A freshly issued token: the secret exists only here and in the response.
pub struct IssuedOpenIdToken {
    pub token: String,
    pub expires_in: Duration,
}

pub struct OpenId {
    tokens: Table<TokenHash, OpenIdTokenRecord>,
    users: Arc<Users>,
    clock: Arc<dyn Clock>,
}

fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

impl OpenId {
    pub fn new(store: &Arc<dyn KvStore>, users: Arc<Users>, clock: Arc<dyn Clock>) -> Self {
        Self { tokens: OPENID_TOKENS.open(store), users, clock }
    }

    /// Issue a token vouching for `user_id` (the caller checks that it is the requester).
    pub fn issue(&self, user_id: &UserId) -> Result<IssuedOpenIdToken> {
        let token = random_string(TOKEN_LEN);
        let expires_ms = self.clock.now_ms().saturating_add(OPENID_TOKEN_LIFETIME.as_millis() as u64);
        let record = OpenIdTokenRecord { user_id: user_id.to_owned(), expires_ms };
        self.tokens.insert(&hash_token(&token), &record)?;
        Ok(IssuedOpenIdToken { token, expires_in: OPENID_TOKEN_LIFETIME })
    }

    /// The user a token vouches for. Unknown and expired tokens, and tokens of accounts
    /// deactivated since, are `M_UNKNOWN_TOKEN`; an expired one is deleted on the way.
    pub fn user_of(&self, token: &str) -> Result<OwnedUserId> {
        let unknown = || Error::unknown_token(false, "Access token unknown or expired");
        let hash = hash_token(token);
        let record = self.tokens.get(&hash)?.ok_or_else(unknown)?;
        if record.expires_ms <= self.clock.now_ms() {
            self.tokens.remove(&hash)?;
            return Err(unknown());
        }
        if self.users.get(&record.user_id)?.is_none_or(|u| u.deactivated) {
            return Err(unknown());
        }
        Ok(record.user_id)
    }

    /// Delete every expired token; returns how many. Tokens are few (one per call joined in
    /// the last hour), so a scan is cheap.
    pub fn remove_expired(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        Ok(self.tokens.remove_where(|record| record.expires_ms <= now)?)
    }

    /// Live and expired tokens not yet swept, for tests of the sweep.
    pub fn stored_tokens(&self) -> Result<usize> {
        Ok(self.tokens.scan(KeyRange::all(), Direction::Forward)?.count())
    }
}
