//! Time as a dependency, so expiry logic can be tested by moving time instead of sleeping.
//! Work that waits for a moment (the delayed-event timer) waits through the clock too, so a
//! test that moves the manual clock wakes it.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;

/// What `Clock::sleep_until` returns.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;

    /// Resolves once `now_ms()` may have reached `at_ms`. It may resolve early (the wall
    /// clock can be set back while it waits), so callers read `now_ms()` again and wait
    /// again if they must.
    fn sleep_until(&self, at_ms: u64) -> Sleep;
}

/// The wall clock.
pub struct SystemClock;

/// The longest single wait on the wall clock: a wait is re-checked at least this often, so
/// a clock set forward is noticed within this bound.
const MAX_WALL_SLEEP: Duration = Duration::from_secs(60);

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn sleep_until(&self, at_ms: u64) -> Sleep {
        let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms())).min(MAX_WALL_SLEEP);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that starts at the wall-clock time and only moves when told; for tests. Moving
/// it wakes everything sleeping on it.
pub struct ManualClock {
    now: watch::Sender<u64>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self { now: watch::Sender::new(SystemClock.now_ms()) }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now.send_modify(|now| *now = now.saturating_add(ms));
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, at_ms: u64) -> Sleep {
        let mut moves = self.now.subscribe();
        Box::pin(async move {
            while *moves.borrow_and_update() < at_ms {
                if moves.changed().await.is_err() {
                    // The clock is gone with its server; nothing will wake this sleeper.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_reaches_its_time() {
        let clock = std::sync::Arc::new(ManualClock::new());
        let start = clock.now_ms();
        let sleeper = tokio::spawn(clock.sleep_until(start + 1_000));
        clock.advance_ms(999);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its time");
        clock.advance_ms(1);
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.expect("woke").unwrap();
        // A time already passed resolves at once.
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(start)).await.expect("at once");
    }
}
