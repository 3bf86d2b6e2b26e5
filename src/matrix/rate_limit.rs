//! The leaky bucket behind every rate limit, as Synapse's `Ratelimiter` computes it: a count
//! of actions that drains at `per_second`; an action that would take the count past
//! `burst_count` is refused, with the time until it would fit. Pure arithmetic on
//! millisecond timestamps; which buckets exist and who is exempt is the service's.

use serde::{Deserialize, Serialize};

/// One limit as operators write it: `{per_second, burst_count}` (Synapse's spelling).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// How fast the count drains, in actions per second.
    pub per_second: f64,
    /// How many actions may be taken at once before the drain matters.
    pub burst_count: f64,
}

impl Rate {
    pub const fn new(per_second: f64, burst_count: f64) -> Self {
        Self { per_second, burst_count }
    }

    /// Why this rate cannot be used, if it cannot: a rate must drain (`per_second` above 0)
    /// and allow at least one action (`burst_count` at least 1), both finite.
    pub fn problem(&self) -> Option<&'static str> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            Some("`per_second` must be a number above 0")
        } else if !(self.burst_count.is_finite() && self.burst_count >= 1.0) {
            Some("`burst_count` must be a number of at least 1")
        } else {
            None
        }
    }
}

/// Floating-point slack in the comparison, so that a count drained to exactly the burst
/// (up to rounding) is let through at the time a refusal named.
const EPSILON: f64 = 1e-9;

/// The count of one key's recent actions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Actions counted since `start_ms`, before draining.
    count: f64,
    /// When the count last dropped to nothing.
    start_ms: u64,
}

impl Bucket {
    /// A bucket with nothing in it.
    pub fn empty(now_ms: u64) -> Self {
        Self { count: 0.0, start_ms: now_ms }
    }

    /// The count left at `now_ms` after draining, and the bucket restarted if it has
    /// drained completely (Synapse forgives all actions then).
    fn drain(&mut self, rate: Rate, now_ms: u64) -> f64 {
        let elapsed_s = now_ms.saturating_sub(self.start_ms) as f64 / 1000.0;
        let left = self.count - elapsed_s * rate.per_second;
        if left <= 0.0 {
            *self = Self::empty(now_ms);
            0.0
        } else {
            left
        }
    }

    /// Take `n` actions at `now_ms` if they fit under the burst: `Ok` (counted unless
    /// `peek`), or `Err` with how many milliseconds until they would fit (at least 1).
    pub fn take(&mut self, rate: Rate, now_ms: u64, n: f64, peek: bool) -> Result<(), u64> {
        let left = self.drain(rate, now_ms);
        if left <= rate.burst_count - n + EPSILON {
            if !peek {
                self.count += n;
            }
            return Ok(());
        }
        // The count must drain to `burst - n` (give or take the slack the comparison above
        // allows, so the wait named is exactly the one after which that comparison passes).
        let wait_s = (left - (rate.burst_count - n) - EPSILON) / rate.per_second;
        let wait_ms = (wait_s * 1000.0).ceil();
        Err(if wait_ms >= u64::MAX as f64 { u64::MAX } else { (wait_ms as u64).max(1) })
    }

    /// Give back `n` actions taken earlier (a reservation that turned out not to count).
    pub fn give_back(&mut self, n: f64) {
        self.count = (self.count - n).max(0.0);
    }

    /// When the count will have drained to nothing: after then the bucket says nothing a
    /// new one would not, and may be forgotten.
    pub fn drained_at(&self, rate: Rate) -> u64 {
        let ms = self.count / rate.per_second * 1000.0;
        self.start_ms.saturating_add(if ms >= u64::MAX as f64 { u64::MAX } else { ms.ceil() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_drain_sets_the_pace() {
        let rate = Rate::new(0.2, 10.0);
        let mut bucket = Bucket::empty(1_000);
        for _ in 0..10 {
            assert_eq!(bucket.take(rate, 1_000, 1.0, false), Ok(()));
        }
        // One action drains in 5 s.
        assert_eq!(bucket.take(rate, 1_000, 1.0, false), Err(5_000));
        assert_eq!(bucket.take(rate, 3_000, 1.0, false), Err(3_000));
        assert_eq!(bucket.take(rate, 6_000, 1.0, false), Ok(()));
        assert_eq!(bucket.take(rate, 6_000, 1.0, false), Err(5_000));
        // Long after, everything is forgiven.
        assert!((56_000..=56_001).contains(&bucket.drained_at(rate)), "{}", bucket.drained_at(rate));
        for _ in 0..10 {
            assert_eq!(bucket.take(rate, 1_000_000, 1.0, false), Ok(()));
        }
    }

    /// Moving exactly the refusal's wait always lets the next action through, whatever
    /// rounding the rate brings.
    #[test]
    fn the_named_wait_is_always_enough() {
        for (per_second, burst) in
            [(0.003, 5.0), (0.17, 3.0), (0.016, 10.0), (1.0 / 3.0, 1.0), (10.0, 50.0), (7.7, 2.5)]
        {
            let rate = Rate::new(per_second, burst);
            let mut bucket = Bucket::empty(0);
            let mut now = 12_345;
            for _ in 0..200 {
                match bucket.take(rate, now, 1.0, false) {
                    Ok(()) => now += 1,
                    Err(wait) => {
                        assert!(wait >= 1);
                        if wait > 1 {
                            assert!(bucket.take(rate, now + wait - 1, 1.0, true).is_err(), "{rate:?}: early");
                        }
                        now += wait;
                        assert_eq!(
                            bucket.take(rate, now, 1.0, false),
                            Ok(()),
                            "{rate:?}: the wait was short"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_peek_counts_nothing_and_a_give_back_frees_a_place() {
        let rate = Rate::new(1.0, 1.0);
        let mut bucket = Bucket::empty(0);
        assert_eq!(bucket.take(rate, 0, 1.0, true), Ok(()));
        assert_eq!(bucket.take(rate, 0, 1.0, false), Ok(()));
        assert_eq!(bucket.take(rate, 0, 1.0, true), Err(1_000));
        bucket.give_back(1.0);
        assert_eq!(bucket.take(rate, 0, 1.0, false), Ok(()));
    }

    #[test]
    fn unusable_rates_are_named() {
        assert!(Rate::new(0.0, 5.0).problem().is_some());
        assert!(Rate::new(f64::NAN, 5.0).problem().is_some());
        assert!(Rate::new(1.0, 0.5).problem().is_some());
        assert!(Rate::new(1.0, f64::INFINITY).problem().is_some());
        assert!(Rate::new(0.003, 5.0).problem().is_none());
    }
}
