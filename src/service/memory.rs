//! Giving back to the system the memory the allocator keeps after a load.
//!
//! glibc's malloc keeps what the program frees in its arenas (one per thread that
//! allocated, up to eight per core) and by itself returns only the top of the main heap: a
//! server that served a burst idles with most of the burst's memory. Measured on a release
//! build after 2,000 long-polls had been answered and closed (docs/benchmarks.md): 197.9 MiB
//! resident a minute later, 113.2 MiB once `malloc_trim(0)` had run. So every
//! [`TRIM_EVERY_MS`] the process asks malloc to return the free pages of every arena. The walk
//! holds each arena's lock briefly; once a minute it costs nothing a client notices.
//!
//! Other allocators (and other C libraries) return memory themselves; there it does nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::watch;

use super::clock::Clock;

/// How often free memory is given back, in milliseconds of the server's clock.
pub const TRIM_EVERY_MS: u64 = 60_000;

pub struct Memory {
    clock: Arc<dyn Clock>,
    trims: AtomicU64,
    /// Resident bytes that trims gave back, as the process's resident size fell across them.
    released: AtomicU64,
}

/// What the metrics show.
pub struct MemoryStats {
    pub trims: u64,
    pub released_bytes: u64,
}

impl Memory {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, trims: AtomicU64::new(0), released: AtomicU64::new(0) }
    }

    /// Give free memory back every [`TRIM_EVERY_MS`] until `stop` changes.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let at = self.clock.now_ms().saturating_add(TRIM_EVERY_MS);
            // The wall clock may wake a sleeper early: wait again until the time has come.
            while self.clock.now_ms() < at {
                tokio::select! {
                    _ = self.clock.sleep_until(at) => {}
                    _ = stop.changed() => return,
                }
            }
            let me = Arc::clone(&self);
            // Off the async workers: the walk over the arenas takes a few milliseconds.
            let _ = tokio::task::spawn_blocking(move || me.trim()).await;
        }
    }

    /// Return the free pages of every malloc arena now; answers the resident bytes that
    /// went (zero where the allocator has no such call).
    pub fn trim(&self) -> u64 {
        let before = resident_bytes();
        let started = Instant::now();
        release_free_memory();
        let released = before.saturating_sub(resident_bytes());
        self.trims.fetch_add(1, Ordering::Relaxed);
        self.released.fetch_add(released, Ordering::Relaxed);
        tracing::debug!(
            released_mib = released as f64 / f64::from(1 << 20),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "gave free memory back to the system"
        );
        released
    }

    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            trims: self.trims.load(Ordering::Relaxed),
            released_bytes: self.released.load(Ordering::Relaxed),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free lists; it takes
    // each arena's lock and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// This process's resident bytes (`/proc/self/statm`), or 0 where there is none.
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory freed by threads of their own, below a block still in use, stays with the
    /// process until trimmed (glibc keeps it in the threads' arenas).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn memory_freed_by_other_threads_goes_back_to_the_system_when_trimmed() {
        let memory = Memory::new(Arc::new(super::super::clock::ManualClock::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    // 32 MiB in 1 KiB blocks, then a small block that stays in use above
                    // them, so freeing them leaves a hole the arena cannot shrink past.
                    let blocks: Vec<Vec<u8>> = (0..32_768).map(|i| vec![i as u8; 1024]).collect();
                    let pin = std::hint::black_box(vec![1u8; 64]);
                    drop(std::hint::black_box(blocks));
                    pin
                })
            })
            .collect();
        let pins: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let released = memory.trim();
        assert!(released > 32 << 20, "only {released} bytes went back");
        assert_eq!(memory.stats().trims, 1);
        assert_eq!(memory.stats().released_bytes, released);
        drop(pins);
    }
}
