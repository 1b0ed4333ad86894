//! What a run achieved: the shared latency histogram, each stream's
//! latency samples on their way to it, and the report summed over streams.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::LoadConfig;
use crate::stream::Outcome;

/// What a run achieved. Rates are over the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The server's URL.
    pub server: String,
    /// Report streams.
    pub streams: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// Messages in flight per stream, at most.
    pub in_flight: u32,
    /// Events per message.
    pub events_per_message: u32,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Messages acknowledged in the window.
    pub messages_acked: u64,
    /// Events acknowledged in the window.
    pub events_acked: u64,
    /// `messages_acked / seconds`.
    pub messages_per_second: f64,
    /// `events_acked / seconds`.
    pub events_per_second: f64,
    /// Median send-to-ack latency of the messages acknowledged in the window.
    pub ack_latency_p50_ms: Option<f64>,
    /// 99th percentile of that latency.
    pub ack_latency_p99_ms: Option<f64>,
    /// The largest latency seen.
    pub ack_latency_max_ms: Option<f64>,
    /// Messages acknowledged per ack received, in the window: above 1, the
    /// server answered several messages with one (cumulative) ack.
    pub messages_per_ack: Option<f64>,
    /// CPU time this process (the generator) used in the window, in seconds
    /// (Linux only): near `seconds` × its worker threads, the generator, not
    /// the server, was the limit.
    pub generator_cpu_seconds: Option<f64>,
    /// Messages sent over the whole run (warm-up and drain included).
    pub messages_sent: u64,
    /// Messages acknowledged over the whole run.
    pub messages_acked_total: u64,
    /// Messages still unacknowledged when the streams ended.
    pub unacked_at_end: u64,
    /// Streams that ended with an error.
    pub streams_failed: u64,
    /// The first of those errors.
    pub first_error: Option<String>,
}

/// Latencies are recorded in microseconds, from 1 µs to 60 s, to three
/// significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Samples a stream keeps before handing them to the shared histogram: a
/// lock taken once per this many acks, and a little memory per stream.
const LATENCY_BATCH: usize = 256;

/// One stream's latency samples on their way to the shared histogram;
/// whatever is left is handed over on drop.
pub(crate) struct Latencies<'a> {
    batch: Vec<u64>,
    into: &'a Mutex<Histogram<u64>>,
}

impl<'a> Latencies<'a> {
    /// Samples on their way to `into`.
    pub(crate) fn new(into: &'a Mutex<Histogram<u64>>) -> Latencies<'a> {
        Latencies {
            batch: Vec::new(),
            into,
        }
    }

    pub(crate) fn record(&mut self, micros: u64) {
        if self.batch.capacity() == 0 {
            self.batch.reserve_exact(LATENCY_BATCH);
        }
        self.batch.push(micros);
        if self.batch.len() == LATENCY_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut histogram = self.into.lock().unwrap_or_else(|e| e.into_inner());
        for micros in self.batch.drain(..) {
            histogram.saturating_record(micros);
        }
    }
}

impl Drop for Latencies<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

pub(crate) fn summarize(
    config: &LoadConfig,
    seconds: f64,
    generator_cpu_seconds: Option<f64>,
    latency: &Histogram<u64>,
    outcomes: Vec<Result<Outcome, String>>,
) -> LoadReport {
    let (mut sent, mut acked_total, mut measured, mut unacked, mut failed) = (0, 0, 0, 0, 0);
    let mut acks = 0;
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(o) => {
                sent += o.sent;
                acked_total += o.acked_total;
                measured += o.measured_messages;
                acks += o.measured_acks;
                unacked += o.unacked;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    let quantile = |q: f64| (!latency.is_empty()).then(|| ms(latency.value_at_quantile(q)));
    let events = measured * u64::from(config.events_per_message);
    let per_second = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    LoadReport {
        server: config.server.clone(),
        streams: config.streams,
        connections: config.connections,
        in_flight: config.in_flight,
        events_per_message: config.events_per_message,
        seconds,
        messages_acked: measured,
        events_acked: events,
        messages_per_second: per_second(measured),
        events_per_second: per_second(events),
        ack_latency_p50_ms: quantile(0.5),
        ack_latency_p99_ms: quantile(0.99),
        ack_latency_max_ms: (!latency.is_empty()).then(|| ms(latency.max())),
        messages_per_ack: (acks > 0).then(|| measured as f64 / acks as f64),
        generator_cpu_seconds,
        messages_sent: sent,
        messages_acked_total: acked_total,
        unacked_at_end: unacked,
        streams_failed: failed,
        first_error,
    }
}

/// User and system CPU time of this process so far, from `/proc/self/stat`
/// (in USER_HZ ticks, 100 per second on Linux); `None` elsewhere.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latencies_reach_the_shared_histogram_in_batches_and_on_drop() {
        let shared = Mutex::new(histogram());
        let count = || shared.lock().unwrap().len();
        let mut latencies = Latencies {
            batch: Vec::new(),
            into: &shared,
        };
        for micros in 1..LATENCY_BATCH as u64 {
            latencies.record(micros);
        }
        assert_eq!(count(), 0, "held until the batch is full");
        latencies.record(1000);
        latencies.record(2000);
        assert_eq!(count(), LATENCY_BATCH as u64);
        drop(latencies);
        assert_eq!(count(), LATENCY_BATCH as u64 + 1);
        assert_eq!(shared.lock().unwrap().max(), 2000);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_cpu_time_grows_with_work() {
        let before = process_cpu_seconds().expect("/proc/self/stat is readable");
        // Busy until it shows (bounded: 30 s of wall time on a loaded machine).
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        let mut grown = 0.0;
        while grown < 0.05 && spin.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            grown = process_cpu_seconds().expect("/proc/self/stat is readable") - before;
        }
        assert!(grown >= 0.05, "{grown} s of CPU after {:?}", spin.elapsed());
    }
}
