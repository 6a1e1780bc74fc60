//! The one backoff every retry loop uses: from 1 s, doubling, up to 60 s (reconnecting to a
//! broker here; in the host, starting a binding whose broker is down and restarting an input
//! side that stopped). A value with one method, so that the loops stay small.

use std::time::Duration;

/// A doubling wait between `first` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// From 1 s, doubling, up to 60 s.
    pub const STANDARD: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// How long to wait before the next attempt; each call doubles the one after.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_a_minute() {
        let mut backoff = Backoff::STANDARD;
        let waits: Vec<u64> = (0..8).map(|_| backoff.next_wait().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
