//! Capped exponential backoff with random jitter, for reconnects and failed refreshes.
//!
//! Hand-rolled on purpose (a dozen lines): the schedule must never exceed its cap, and
//! `backon`'s jitter adds up to one extra delay on top of `max_delay`.

use std::time::Duration;

use rand::Rng as _;

/// Delays `base·2ⁿ` capped at `cap`, each drawn uniformly from `[d/2, d]` ("equal jitter"),
/// so many sidecars that lost the gateway together do not come back in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX));
        self.attempt = self.attempt.saturating_add(1);
        let d = exp.min(self.cap);
        let half = d / 2;
        let extra = rand::rng().random_range(0..=d.saturating_sub(half).as_millis() as u64);
        half + Duration::from_millis(extra)
    }

    /// After a success: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_never_beyond() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        let mut b = Backoff::new(base, cap);
        let mut delays = Vec::new();
        for _ in 0..200 {
            delays.push(b.next_delay());
        }
        assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
        assert!(delays[0] >= base / 2 && delays[0] <= base);
        // Late delays sit in [cap/2, cap].
        assert!(delays[50..].iter().all(|d| *d >= cap / 2));
        // Jitter is real: late delays are not all equal.
        let first = delays[100];
        assert!(delays[100..].iter().any(|d| *d != first), "no jitter");
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
