//! Counters shared by the clients, and latency histograms.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hdrhistogram::Histogram;
use metaserve_tokio::Welcome;
use serde::Serialize;

/// Highest latency the histograms track, in microseconds (10 minutes);
/// larger samples are recorded as this.
const MAX_LATENCY_US: u64 = 600_000_000;

/// A histogram of delivery latencies in microseconds, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records one latency given in nanoseconds.
pub(crate) fn record_ns(histogram: &mut Histogram<u64>, ns: u64) {
    histogram.saturating_record((ns / 1_000).max(1));
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct LatencySummary {
    /// Samples: one per Upsert a browser received in the window.
    pub(crate) samples: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl LatencySummary {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            samples: histogram.len(),
            mean_ms: histogram.mean() / 1_000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State every client task reports into, read by the progress line and the
/// setup phase. Counters of traffic move only while the window is open.
#[derive(Debug)]
pub(crate) struct Live {
    measuring: AtomicBool,
    /// The window, in [`crate::blob::now_ns`] time; u64::MAX until set.
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    /// Heartbeats handed to `publish` in the window.
    pub(crate) heartbeats: AtomicU64,
    /// Upserts received by browsers in the window (flushed at each Synced).
    pub(crate) delivered: AtomicU64,
    /// Blob bytes of those Upserts.
    pub(crate) delivered_bytes: AtomicU64,
    /// Latencies flushed since the progress line last took them.
    interval_latency: Mutex<Histogram<u64>>,
    pub(crate) publishers_connected: AtomicUsize,
    pub(crate) publishers_failed: AtomicUsize,
    pub(crate) browsers_connected: AtomicUsize,
    /// Browsers that have seen every publisher at a Synced.
    pub(crate) browsers_ready: AtomicUsize,
    pub(crate) browsers_failed: AtomicUsize,
    /// The first client error, for the report.
    first_error: Mutex<Option<String>>,
    /// The daemon's Welcome as a browser saw it (its limits in force).
    welcome: Mutex<Option<Welcome>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            measuring: AtomicBool::new(false),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            heartbeats: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            interval_latency: Mutex::new(latency_histogram()),
            publishers_connected: AtomicUsize::new(0),
            publishers_failed: AtomicUsize::new(0),
            browsers_connected: AtomicUsize::new(0),
            browsers_ready: AtomicUsize::new(0),
            browsers_failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            welcome: Mutex::new(None),
        }
    }
}

impl Live {
    /// Whether the measurement window is open.
    pub(crate) fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Opens (`on`) or closes the window, at `now_ns` ([`crate::blob::now_ns`]).
    pub(crate) fn set_measuring(&self, on: bool, now_ns: u64) {
        if on {
            self.window_start_ns.store(now_ns, Ordering::SeqCst);
        } else {
            self.window_end_ns.store(now_ns, Ordering::SeqCst);
        }
        self.measuring.store(on, Ordering::SeqCst);
    }

    /// Whether a heartbeat sent at `sent_ns` belongs to the window. A
    /// delivery counts by when its heartbeat was sent, not when it arrived,
    /// so that beats still in flight when the window closes are counted on
    /// arrival and beats sent before it opened are not: the window's edges
    /// then cancel exactly, whatever the phase of the browsers' batches.
    pub(crate) fn in_window(&self, sent_ns: u64) -> bool {
        sent_ns >= self.window_start_ns.load(Ordering::Relaxed) && sent_ns < self.window_end_ns.load(Ordering::Relaxed)
    }

    /// Adds a browser's batch of latencies (called at each Synced).
    pub(crate) fn add_latencies(&self, batch: &Histogram<u64>) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = lock(&self.interval_latency).add(batch);
    }

    /// The latencies flushed since the last call.
    pub(crate) fn take_latencies(&self) -> Histogram<u64> {
        std::mem::replace(&mut *lock(&self.interval_latency), latency_histogram())
    }

    /// Keeps the first error reported by any client.
    pub(crate) fn error(&self, what: String) {
        lock(&self.first_error).get_or_insert(what);
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    pub(crate) fn set_welcome(&self, welcome: &Welcome) {
        lock(&self.welcome).get_or_insert_with(|| welcome.clone());
    }

    pub(crate) fn welcome(&self) -> Option<Welcome> {
        lock(&self.welcome).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_in_milliseconds() {
        let mut h = latency_histogram();
        for ms in 1..=100u64 {
            record_ns(&mut h, ms * 1_000_000);
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.samples, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(LatencySummary::of(&latency_histogram()).samples, 0);
        // Beyond the top: clamped, not lost.
        record_ns(&mut h, u64::MAX);
        assert_eq!(h.len(), 101);
    }

    #[test]
    fn live_latencies_are_taken_once() {
        let live = Live::default();
        let mut batch = latency_histogram();
        record_ns(&mut batch, 5_000_000);
        live.add_latencies(&batch);
        live.add_latencies(&batch);
        assert_eq!(live.take_latencies().len(), 2);
        assert_eq!(live.take_latencies().len(), 0);
    }
}
