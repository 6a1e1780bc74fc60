//! Retry policies as values: how many times to retry and how long to wait in between. The
//! loops that wait are `input`'s and `output`'s; this module only answers "wait this long"
//! or "stop".

use std::time::Duration;

/// How many retries a policy allows after the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    Limited(u64),
    /// Until success or shutdown.
    Forever,
}

/// A fixed-interval retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub retries: Retries,
    pub interval: Duration,
}

impl Backoff {
    /// What to do after `failures` failed attempts (1 after the first): wait, then try again,
    /// or stop.
    pub fn after_failure(&self, failures: u64) -> Option<Duration> {
        match self.retries {
            Retries::Forever => Some(self.interval),
            Retries::Limited(retries) if failures <= retries => Some(self.interval),
            Retries::Limited(_) => None,
        }
    }
}

/// The output binding's publish policy (docs/BEHAVIOUR.md, "Output binding"): an attempt
/// that failed without sending is retried up to 3 times, 200 ms apart.
pub const PUBLISH: Backoff = Backoff {
    retries: Retries::Limited(3),
    interval: Duration::from_millis(200),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_policy_allows_exactly_n_retries() {
        let policy = Backoff {
            retries: Retries::Limited(2),
            interval: Duration::from_millis(5),
        };
        assert_eq!(policy.after_failure(1), Some(Duration::from_millis(5)));
        assert_eq!(policy.after_failure(2), Some(Duration::from_millis(5)));
        assert_eq!(policy.after_failure(3), None);
    }

    #[test]
    fn zero_retries_stops_after_the_first_failure() {
        let policy = Backoff {
            retries: Retries::Limited(0),
            interval: Duration::from_secs(5),
        };
        assert_eq!(policy.after_failure(1), None);
    }

    #[test]
    fn forever_never_stops() {
        let policy = Backoff {
            retries: Retries::Forever,
            interval: Duration::from_secs(5),
        };
        assert_eq!(policy.after_failure(u64::MAX), Some(Duration::from_secs(5)));
    }

    #[test]
    fn publish_policy_is_three_retries_200ms_apart() {
        let attempts = (1..)
            .take_while(|&n| PUBLISH.after_failure(n).is_some())
            .count()
            + 1;
        assert_eq!(attempts, 4);
        assert_eq!(PUBLISH.after_failure(1), Some(Duration::from_millis(200)));
    }
}
