//! A lock-free latency histogram shared by thousands of connection tasks.
//!
//! Values are microseconds. Buckets are log-linear: exact below 128 µs, then 64
//! buckets per power of two, so a reported percentile is within 1/64 (1.6 %) above the
//! true value. The exact maximum is kept beside the buckets.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this are their own bucket.
const LINEAR: u64 = 128;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 64;
/// Enough buckets for values up to 2^48 µs (about 9 years).
const BUCKETS: usize = (LINEAR + 42 * SUB) as usize;

/// A concurrent histogram of microsecond values.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1) by nearest rank: the smallest bucket bound at or
    /// below which at least `ceil(q × count)` values lie, capped at the exact maximum.
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(bucket_high(i).min(self.max()));
            }
        }
        Some(self.max())
    }
}

/// The bucket holding `v`.
fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - u64::from(v.leading_zeros()); // ≥ 7
    let shift = msb - 6; // ≥ 1
    let mantissa = v >> shift; // 64..=127
    let i = LINEAR + (shift - 1) * SUB + (mantissa - SUB);
    (i as usize).min(BUCKETS - 1)
}

/// The largest value of bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let shift = (i - LINEAR) / SUB + 1;
    let mantissa = (i - LINEAR) % SUB + SUB;
    ((mantissa + 1) << shift) - 1
}

/// Microseconds as milliseconds, rounded to 0.01 ms, for the summaries.
pub fn ms(micros: u64) -> f64 {
    (micros as f64 / 10.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_quantiles() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.count(), 0);
        assert_eq!(h.max(), 0);
    }

    #[test]
    fn small_values_are_exact() {
        let h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.max(), 100);
    }

    #[test]
    fn nearest_rank_on_a_skewed_sample() {
        // 98 fast values and 2 slow ones: p99 is the 99th value, a slow one.
        let h = Histogram::new();
        for _ in 0..98 {
            h.record(10);
        }
        h.record(90_000);
        h.record(100_000);
        assert_eq!(h.quantile(0.5), Some(10));
        assert_eq!(h.quantile(0.98), Some(10));
        let p99 = h.quantile(0.99).unwrap();
        assert!((90_000..=90_000 + 90_000 / 64).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Some(100_000));
    }

    #[test]
    fn large_values_are_within_the_bucket_error() {
        let h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 10); // 10 µs .. 1 s
        }
        for (q, exact) in [(0.5, 500_000u64), (0.9, 900_000), (0.99, 990_000)] {
            let got = h.quantile(q).unwrap();
            assert!(got >= exact, "q{q}: {got} < {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 / 64.0,
                "q{q}: {got} too far above {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(1_000_000));
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order broken at {v}");
            last = b;
            if b < BUCKETS - 1 {
                assert!(v <= bucket_high(b), "{v} above its bucket's bound");
                if b > 0 {
                    assert!(v > bucket_high(b - 1), "{v} belongs to an earlier bucket");
                }
            }
        }
    }

    #[test]
    fn milliseconds_are_rounded_to_hundredths() {
        assert_eq!(ms(12_345), 12.35);
        assert_eq!(ms(0), 0.0);
        assert_eq!(ms(100_000), 100.0);
    }
}
