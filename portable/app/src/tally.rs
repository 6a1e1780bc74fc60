//! How many events may still be written (`read --count N`).

/// Counts events written against an optional limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    written: u64,
    limit: Option<u64>,
}

/// What to do with the next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Write it; `last` when it is the one that reaches the limit.
    Write { last: bool },
    /// The limit was reached: refuse it, so it stays with the broker.
    Refuse,
}

impl Tally {
    pub fn new(limit: Option<u64>) -> Self {
        Self { written: 0, limit }
    }

    /// Whether the limit has been reached.
    pub fn is_done(&self) -> bool {
        self.limit.is_some_and(|limit| self.written >= limit)
    }

    /// What to do with the next event; call [`Tally::written`] once it is out.
    pub fn next(&self) -> Next {
        match self.limit {
            Some(limit) if self.written >= limit => Next::Refuse,
            Some(limit) => Next::Write {
                last: self.written + 1 == limit,
            },
            None => Next::Write { last: false },
        }
    }

    /// Counts an event written.
    pub fn written(&mut self) {
        self.written += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_of_two_writes_two_and_refuses_the_third() {
        let mut tally = Tally::new(Some(2));
        assert_eq!(tally.next(), Next::Write { last: false });
        tally.written();
        assert_eq!(tally.next(), Next::Write { last: true });
        tally.written();
        assert!(tally.is_done());
        assert_eq!(tally.next(), Next::Refuse);
    }

    #[test]
    fn no_limit_never_refuses() {
        let mut tally = Tally::new(None);
        for _ in 0..1000 {
            assert_eq!(tally.next(), Next::Write { last: false });
            tally.written();
        }
        assert!(!tally.is_done());
    }

    #[test]
    fn a_limit_of_zero_refuses_the_first() {
        let tally = Tally::new(Some(0));
        assert!(tally.is_done());
        assert_eq!(tally.next(), Next::Refuse);
    }
}
