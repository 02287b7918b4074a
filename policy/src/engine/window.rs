//! Sliding windows of request outcomes in fixed one-second buckets.
//!
//! A window only ever holds buckets that still matter (at most the longest window a policy
//! may set), so memory stays bounded however long a coordinator runs. Time is the leader's
//! timestamp in milliseconds, never a local clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Width of one bucket, in milliseconds.
pub const BUCKET_MS: u64 = 1_000;

/// The bucket that holds the instant just before `now_ms`: counts reported for the
/// interval ending at `now_ms` land in the bucket that interval belongs to.
pub fn bucket_of(now_ms: u64) -> u64 {
    now_ms.saturating_sub(1) / BUCKET_MS
}

/// How many buckets cover `span_ms` (at least one).
pub fn buckets_for(span_ms: u64) -> u64 {
    span_ms.div_ceil(BUCKET_MS).max(1)
}

/// Request outcomes over some interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counters {
    /// Requests sent.
    pub requests: u64,
    /// Answered 500-599.
    pub http_5xx: u64,
    /// Answered 502, 503 or 504 (also counted in `http_5xx`).
    pub gateway_errors: u64,
    /// No answer: connect failure, reset or timeout.
    pub connect_failures: u64,
}

impl Counters {
    /// Adds `other` to these counters, saturating rather than wrapping.
    pub fn add(&mut self, other: &Counters) {
        self.requests = self.requests.saturating_add(other.requests);
        self.http_5xx = self.http_5xx.saturating_add(other.http_5xx);
        self.gateway_errors = self.gateway_errors.saturating_add(other.gateway_errors);
        self.connect_failures = self.connect_failures.saturating_add(other.connect_failures);
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Counters::default()
    }

    /// `part` as a share of the requests, in basis points (0 when there were none).
    pub fn rate_bp(&self, part: u64) -> u32 {
        if self.requests == 0 {
            return 0;
        }
        (u128::from(part.min(self.requests)) * 10_000 / u128::from(self.requests)) as u32
    }

    /// Share of requests that failed (5xx or no answer), in basis points.
    pub fn failure_bp(&self) -> u32 {
        self.rate_bp(self.http_5xx.saturating_add(self.connect_failures))
    }
}

/// Counters in consecutive one-second buckets, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    buckets: VecDeque<(u64, Counters)>,
}

impl Window {
    /// Adds counts to `bucket`. Counts for a bucket older than the newest one held are
    /// merged into it if still present, and dropped if it has already left the window.
    pub fn add(&mut self, bucket: u64, counts: &Counters) {
        if counts.is_empty() {
            return;
        }
        match self.buckets.back_mut() {
            Some((last, c)) if *last == bucket => c.add(counts),
            Some((last, _)) if *last > bucket => {
                if let Some((_, c)) = self.buckets.iter_mut().find(|(b, _)| *b == bucket) {
                    c.add(counts);
                }
            }
            _ => self.buckets.push_back((bucket, *counts)),
        }
    }

    /// Forgets buckets older than `oldest` (exclusive bound).
    pub fn trim(&mut self, oldest: u64) {
        while self.buckets.front().is_some_and(|(b, _)| *b < oldest) {
            self.buckets.pop_front();
        }
    }

    /// The sum of the `count` buckets ending with `last` (inclusive).
    pub fn sum(&self, last: u64, count: u64) -> Counters {
        let first = (last + 1).saturating_sub(count);
        let mut total = Counters::default();
        for (b, c) in self.buckets.iter().rev() {
            if *b < first {
                break;
            }
            if *b <= last {
                total.add(c);
            }
        }
        total
    }

    /// How many of the `count` buckets ending with `last` the window has seen: from its
    /// oldest bucket in that range (so a rate over a young window is not diluted by time
    /// before anything was counted). Zero when it holds none of them.
    pub fn seen(&self, last: u64, count: u64) -> u64 {
        let first = (last + 1).saturating_sub(count);
        self.buckets
            .iter()
            .find(|(b, _)| *b >= first && *b <= last)
            .map_or(0, |(b, _)| last + 1 - b)
    }

    /// The counters of one bucket (empty when nothing was counted in it).
    pub fn bucket(&self, bucket: u64) -> Counters {
        self.buckets
            .iter()
            .rev()
            .find(|(b, _)| *b == bucket)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(requests: u64, http_5xx: u64) -> Counters {
        Counters {
            requests,
            http_5xx,
            ..Counters::default()
        }
    }

    #[test]
    fn counts_land_in_the_bucket_of_the_interval_they_cover() {
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(2_000), 1);
        assert_eq!(buckets_for(2_000), 2);
        assert_eq!(buckets_for(250), 1);
    }

    #[test]
    fn sums_cover_exactly_the_requested_buckets() {
        let mut w = Window::default();
        for b in 0..5 {
            w.add(b, &c(10, b));
        }
        assert_eq!(w.sum(4, 2), c(20, 7));
        assert_eq!(w.sum(4, 10), c(50, 10));
        assert_eq!(w.sum(2, 1), c(10, 2));
        w.trim(3);
        assert_eq!(w.sum(4, 10), c(20, 7));
    }

    #[test]
    fn late_counts_merge_or_drop() {
        let mut w = Window::default();
        w.add(3, &c(1, 0));
        w.add(5, &c(1, 0));
        w.add(3, &c(1, 1));
        w.add(1, &c(9, 9));
        assert_eq!(w.bucket(3), c(2, 1));
        assert_eq!(w.sum(5, 10), c(3, 1));
    }

    #[test]
    fn rates_are_basis_points_of_requests() {
        let x = Counters {
            requests: 1204,
            http_5xx: 1168,
            gateway_errors: 0,
            connect_failures: 0,
        };
        assert_eq!(x.rate_bp(x.http_5xx), 9700);
        assert_eq!(Counters::default().failure_bp(), 0);
    }
}
