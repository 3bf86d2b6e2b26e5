//! Registration tokens: the `registration_token` of the config (any number of uses, never
//! expires) and the tokens admins make through the admin API, each with a number of uses
//! allowed, an expiry, and counts of pending and completed registrations (as Synapse keeps
//! them). A registration's token stage takes a pending use; the registration that completes
//! turns it into a completed one, and a session that expires first gives it back. Owns the
//! `registration_tokens` table.

use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng as _;

use super::clock::Clock;
use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        kv::KeyRange,
        tables::{REGISTRATION_TOKENS, RegistrationTokenRecord},
    },
};

/// Characters a token may have (Synapse's set).
const TOKEN_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";
/// Longest token accepted or generated.
pub const MAX_TOKEN_LEN: usize = 64;

/// A token as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub token: String,
    pub record: RegistrationTokenRecord,
}

/// A change to a token's limits: `None` leaves a field, `Some(None)` clears it.
#[derive(Default)]
pub struct TokenChange {
    pub uses_allowed: Option<Option<u64>>,
    pub expiry_time: Option<Option<u64>>,
}

/// What a token stage accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The config's token: not counted.
    Configured,
    /// A stored token: one pending use was taken.
    Stored,
}

pub struct RegistrationTokens {
    tokens: Table<String, RegistrationTokenRecord>,
    clock: Arc<dyn Clock>,
    configured: Option<String>,
    /// Serialises every read-modify-write of a token's counts.
    writes: Mutex<()>,
}

/// Proof of holding the token write lock (see `RegistrationTokens::write_lock`).
pub type TokenGuard<'a> = MutexGuard<'a, ()>;

/// Compare secrets in time independent of where, and whether in length, they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest as _, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_at(record: &RegistrationTokenRecord, now: u64) -> bool {
    let uses_left =
        record.uses_allowed.is_none_or(|allowed| record.pending.saturating_add(record.completed) < allowed);
    uses_left && record.expiry_time.is_none_or(|expiry| expiry > now)
}

/// Check a token an admin names: 1 to 64 characters of Synapse's set.
pub fn check_token_syntax(token: &str) -> Result<()> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::invalid_param(
            "token must not be empty and must not be longer than 64 characters",
        ));
    }
    if !token.chars().all(|c| TOKEN_CHARS.contains(c)) {
        return Err(Error::invalid_param(
            "token must consist only of characters matched by the regex [A-Za-z0-9._~-]",
        ));
    }
    Ok(())
}

impl RegistrationTokens {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>, configured: Option<String>) -> Self {
        Self { tokens: REGISTRATION_TOKENS.open(store), clock, configured, writes: Mutex::new(()) }
    }

    /// Take the write lock, for a caller that commits a completed use in its own batch.
    pub fn write_lock(&self) -> Result<TokenGuard<'_>> {
        self.writes.lock().map_err(|_| Error::internal("registration token lock poisoned"))
    }

    fn is_configured(&self, token: &str) -> bool {
        self.configured
            .as_deref()
            .is_some_and(|expected| constant_time_eq(expected.as_bytes(), token.as_bytes()))
    }

    /// Whether `token` would be accepted now (`/register/m.login.registration_token/validity`).
    pub fn is_valid(&self, token: &str) -> Result<bool> {
        if self.is_configured(token) {
            return Ok(true);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        Ok(self.tokens.get(&token.to_owned())?.is_some_and(|r| valid_at(&r, now)))
    }

    /// A registration's token stage: accept the token, taking one pending use of a stored
    /// one; `None` if it is not valid.
    pub fn take_pending(&self, token: &str) -> Result<Option<Accepted>> {
        if self.is_configured(token) {
            return Ok(Some(Accepted::Configured));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        let _guard = self.write_lock()?;
        let key = token.to_owned();
        let Some(mut record) = self.tokens.get(&key)? else { return Ok(None) };
        if !valid_at(&record, self.clock.now_ms()) {
            return Ok(None);
        }
        record.pending = record.pending.saturating_add(1);
        self.tokens.insert(&key, &record)?;
        Ok(Some(Accepted::Stored))
    }

    /// Queue turning a pending use into a completed one, in the batch that creates the
    /// account. A token deleted meanwhile is left deleted.
    pub fn complete_in(&self, _proof: &TokenGuard<'_>, batch: &mut WriteBatch, token: &str) -> Result<()> {
        let key = token.to_owned();
        if let Some(mut record) = self.tokens.get(&key)? {
            record.pending = record.pending.saturating_sub(1);
            record.completed = record.completed.saturating_add(1);
            self.tokens.put(batch, &key, &record)?;
        }
        Ok(())
    }

    /// Give back a pending use whose registration session expired unfinished.
    pub fn release(&self, token: &str) -> Result<()> {
        let _guard = self.write_lock()?;
        let key = token.to_owned();
        if let Some(mut record) = self.tokens.get(&key)? {
            record.pending = record.pending.saturating_sub(1);
            self.tokens.insert(&key, &record)?;
        }
        Ok(())
    }

    /// Every stored token in token order; with `valid`, only those that are (or are not)
    /// usable now.
    pub fn list(&self, valid: Option<bool>) -> Result<Vec<TokenInfo>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for row in self.tokens.scan(KeyRange::all(), Direction::Forward)? {
            let (token, record) = row?;
            if valid.is_none_or(|v| v == valid_at(&record, now)) {
                out.push(TokenInfo { token, record });
            }
        }
        Ok(out)
    }

    pub fn get(&self, token: &str) -> Result<TokenInfo> {
        let record = self
            .tokens
            .get(&token.to_owned())?
            .ok_or_else(|| Error::not_found(format!("No such registration token: {token}")))?;
        Ok(TokenInfo { token: token.to_owned(), record })
    }

    fn check_expiry(&self, expiry_time: Option<u64>) -> Result<()> {
        if expiry_time.is_some_and(|t| t < self.clock.now_ms()) {
            return Err(Error::invalid_param("expiry_time must not be in the past"));
        }
        Ok(())
    }

    /// Make a token: the one given, or a random one of `length` characters.
    pub fn create(
        &self,
        token: Option<String>,
        length: usize,
        uses_allowed: Option<u64>,
        expiry_time: Option<u64>,
    ) -> Result<TokenInfo> {
        self.check_expiry(expiry_time)?;
        let _guard = self.write_lock()?;
        let token = match token {
            Some(token) => {
                check_token_syntax(&token)?;
                if self.tokens.contains(&token)? {
                    return Err(Error::invalid_param(format!("Token already exists: {token}")));
                }
                token
            }
            None => {
                if !(1..=MAX_TOKEN_LEN).contains(&length) {
                    return Err(Error::invalid_param(
                        "length must be greater than zero and not greater than 64",
                    ));
                }
                self.generate(length)?
            }
        };
        let record = RegistrationTokenRecord { uses_allowed, pending: 0, completed: 0, expiry_time };
        self.tokens.insert(&token, &record)?;
        Ok(TokenInfo { token, record })
    }

    fn generate(&self, length: usize) -> Result<String> {
        let chars: Vec<char> = TOKEN_CHARS.chars().collect();
        let mut rng = rand::thread_rng();
        for _ in 0..16 {
            let token: String = (0..length).map(|_| chars[rng.gen_range(0..chars.len())]).collect();
            if !self.tokens.contains(&token)? {
                return Ok(token);
            }
        }
        Err(Error::internal("could not generate a free registration token"))
    }

    /// Change a token's limits.
    pub fn update(&self, token: &str, change: TokenChange) -> Result<TokenInfo> {
        if let Some(expiry) = change.expiry_time {
            self.check_expiry(expiry)?;
        }
        let _guard = self.write_lock()?;
        let mut info = self.get(token)?;
        if let Some(uses_allowed) = change.uses_allowed {
            info.record.uses_allowed = uses_allowed;
        }
        if let Some(expiry_time) = change.expiry_time {
            info.record.expiry_time = expiry_time;
        }
        self.tokens.insert(&info.token, &info.record)?;
        Ok(info)
    }

    pub fn delete(&self, token: &str) -> Result<()> {
        let _guard = self.write_lock()?;
        let key = token.to_owned();
        if !self.tokens.contains(&key)? {
            return Err(Error::not_found(format!("No such registration token: {token}")));
        }
        Ok(self.tokens.remove(&key)?)
    }
}
