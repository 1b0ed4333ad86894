//! The acknowledgement latency histogram: observed once per acknowledged
//! message, from every stream at once, so it is made of atomics (a bucket
//! count, the count and the sum in nanoseconds) rather than the library's
//! histogram, which takes a mutex per observation. It is encoded through
//! prometheus-client's encoder like every other metric.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of durations with fixed upper bounds (in seconds).
#[derive(Clone, Debug)]
pub(super) struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every
    /// bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds, in seconds, increasing.
    pub(super) fn new(bounds: &'static [f64]) -> LatencyHistogram {
        LatencyHistogram {
            inner: Arc::new(Inner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                count: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Counts one duration.
    pub(super) fn observe(&self, d: Duration) {
        let i = &self.inner;
        let secs = d.as_secs_f64();
        let bucket = i.bounds.partition_point(|b| *b < secs);
        i.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        i.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        i.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let i = &self.inner;
        // Per bucket, not cumulative: the encoder adds them up.
        let mut count = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(i.bounds.len() + 1);
        for (n, b) in i.buckets.iter().enumerate() {
            let c = b.load(Ordering::Relaxed);
            count += c;
            buckets.push((i.bounds.get(n).copied().unwrap_or(f64::INFINITY), c));
        }
        // The count is the buckets' total, so that it agrees with +Inf.
        let sum = i.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket() {
        static BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];
        let h = LatencyHistogram::new(&BOUNDS);
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_micros(1500));
        h.observe(Duration::from_secs(1));
        let counts: Vec<u64> = h
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 1, 0, 1]);
        assert_eq!(h.inner.count.load(Ordering::Relaxed), 3);
        assert_eq!(h.inner.sum_nanos.load(Ordering::Relaxed), 1_002_500_000);
    }
}
