//! Password hashing with argon2id, on a small pool of dedicated threads.
//!
//! Hashing is deliberately slow and memory-hungry (`argon2_memory_kib` per hash), so it runs
//! off the async workers, one hash per core at a time. The pool is fixed rather than tokio's
//! blocking pool because the allocator keeps freed hash memory in per-thread arenas: spread
//! over the blocking pool's many threads, a login burst left the process at ~0.9–3 GB; on one
//! thread per core it stays near `cores × argon2_memory_kib`.

use std::sync::{
    Arc, Mutex, OnceLock,
    mpsc::{Receiver, Sender, channel},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::SaltString,
};

use crate::{Error, Result, config::Config};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Hashes new passwords with the configured parameters and verifies existing hashes.
pub struct Passwords {
    params: Params,
    /// Work queue of the hashing threads; they exit when this sender is dropped.
    jobs: Sender<Job>,
    /// A hash of a random password, verified against when an account has no hash, so that a
    /// login for a missing account costs the same as one with a wrong password.
    decoy: Arc<OnceLock<String>>,
}

fn worker(queue: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // the service is gone
        }
    }
}

impl Passwords {
    pub fn new(config: &Config) -> Result<Self> {
        let params =
            Params::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism, None)
                .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?;
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for _ in 0..cores {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name("password-hash".to_owned())
                .spawn(move || worker(queue))
                .map_err(|e| Error::internal(format!("starting hashing thread: {e}")))?;
        }
        Ok(Self { params, jobs, decoy: Arc::new(OnceLock::new()) })
    }

    /// Run `work` on a hashing thread and wait for its result.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(work());
            }))
            .map_err(|_| Error::internal("hashing threads have stopped"))?;
        result.await.map_err(|_| Error::internal("hashing job was dropped"))?
    }

    fn hash_with(params: Params, password: &str) -> Result<String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("hashing password: {e}")))
    }

    /// A PHC-format argon2id hash of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String> {
        let params = self.params.clone();
        self.run(move || Self::hash_with(params, &password)).await
    }

    /// Whether `password` matches `hash`; with no hash, spends the same effort and says no.
    pub async fn verify(&self, hash: Option<String>, password: String) -> Result<bool> {
        let params = self.params.clone();
        let decoy = Arc::clone(&self.decoy);
        self.run(move || {
            let (hash, is_decoy) = match hash {
                Some(h) => (h, false),
                None => {
                    let d = match decoy.get() {
                        Some(d) => d.clone(),
                        None => {
                            let fresh = Self::hash_with(params, &random_string(24))?;
                            decoy.get_or_init(|| fresh).clone()
                        }
                    };
                    (d, true)
                }
            };
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| Error::internal(format!("stored password hash unreadable: {e}")))?;
            // Verification uses the parameters stored in the hash itself.
            let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
            Ok(ok && !is_decoy)
        })
        .await
    }
}

/// A random alphanumeric string (for decoys and generated passwords).
pub fn random_string(len: usize) -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}
