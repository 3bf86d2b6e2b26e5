//! Password hashing with argon2id. Hashing runs on the blocking pool: it is deliberately slow
//! and must not stall the async workers.

use std::sync::{Arc, OnceLock};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::SaltString,
};

use crate::{Error, Result, config::Config};

/// Hashes new passwords with the configured parameters and verifies existing hashes.
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when an account has no hash, so that a
    /// login for a missing account costs the same as one with a wrong password.
    decoy: OnceLock<String>,
}

impl Passwords {
    pub fn new(config: &Config) -> Result<Self> {
        let params =
            Params::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism, None)
                .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?;
        Ok(Self { params, decoy: OnceLock::new() })
    }

    fn hasher(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    fn hash_blocking(params: Params, password: &str) -> Result<String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Self::hasher(params)
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("hashing password: {e}")))
    }

    /// A PHC-format argon2id hash of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || Self::hash_blocking(params, &password))
            .await
            .map_err(|e| Error::internal(format!("hash task: {e}")))?
    }

    /// Whether `password` matches `hash`; with no hash, spends the same effort and says no.
    pub async fn verify(self: &Arc<Self>, hash: Option<String>, password: String) -> Result<bool> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let (hash, is_decoy) = match hash {
                Some(h) => (h, false),
                None => {
                    let decoy = match this.decoy.get() {
                        Some(d) => d.clone(),
                        None => {
                            let d = Self::hash_blocking(this.params.clone(), &random_string(24))?;
                            this.decoy.get_or_init(|| d).clone()
                        }
                    };
                    (decoy, true)
                }
            };
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| Error::internal(format!("stored password hash unreadable: {e}")))?;
            // Verification uses the parameters stored in the hash itself.
            let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
            Ok(ok && !is_decoy)
        })
        .await
        .map_err(|e| Error::internal(format!("verify task: {e}")))?
    }
}

/// A random alphanumeric string (for decoys and generated passwords).
pub fn random_string(len: usize) -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}
