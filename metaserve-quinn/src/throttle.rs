//! Rate limits for the driver's per-connection log lines.
//!
//! The server logs one line per accepted session, refusal and disconnection.
//! Under a flood that is one line per attacker packet: a log that fills the
//! disk and hides what matters. Each kind of line may be written at most
//! [`LINES_PER_WINDOW`] times per [`WINDOW`]; the lines beyond are counted,
//! and the count is written once the window has passed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines of one kind written per window at most.
pub(crate) const LINES_PER_WINDOW: u32 = 20;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// Per-kind windows of log lines.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    windows: Mutex<HashMap<&'static str, Window>>,
}

impl LogThrottle {
    /// Whether a line of `kind` may be written at `now`. A line that is not
    /// is counted, and reported by the next [`LogThrottle::report`] after its
    /// window ends.
    pub(crate) fn allow(&self, kind: &'static str, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows.entry(kind).or_insert(Window { start: now, written: 0, suppressed: 0 });
        if now.saturating_duration_since(window.start) >= WINDOW {
            report_one(kind, window);
            *window = Window { start: now, written: 0, suppressed: 0 };
        }
        if window.written < LINES_PER_WINDOW {
            window.written += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Writes, for each kind whose window has ended, how many of its lines
    /// were suppressed. Called periodically, so that the count of a flood's
    /// last window is written even if no line of its kind follows.
    pub(crate) fn report(&self, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.retain(|kind, window| {
            if now.saturating_duration_since(window.start) < WINDOW {
                return true;
            }
            report_one(kind, window);
            false
        });
    }
}

fn report_one(kind: &str, window: &Window) {
    if window.suppressed > 0 {
        tracing::info!(
            kind,
            suppressed = window.suppressed,
            "{} more such log lines in {:?} not written (at most {LINES_PER_WINDOW} per {WINDOW:?})",
            window.suppressed,
            WINDOW
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_at_most_the_window_share_per_kind() {
        let throttle = LogThrottle::default();
        let t0 = Instant::now();
        let written = (0..1000).filter(|_| throttle.allow("refused", t0)).count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert!(throttle.allow("accepted", t0), "kinds are limited independently");
        assert!(throttle.allow("refused", t0 + WINDOW), "a new window writes again");
        throttle.report(t0 + 3 * WINDOW);
        assert!(throttle.windows.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
    }
}
