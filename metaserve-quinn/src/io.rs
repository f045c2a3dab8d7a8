//! Poll-level plumbing shared by every driver loop: pulling output from a
//! state machine only when the stream can take it, and runtime timers.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use quinn::{AsyncTimer, Runtime, SendStream, WriteError};

/// Passes of a driver loop before it yields to the runtime, so one busy
/// connection cannot starve the others on the same thread.
pub(crate) const BUDGET: usize = 32;

/// Bytes pulled from a state machine and not yet accepted by the stream.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    written: usize,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.written == self.buf.len()
    }

    /// Writes pending bytes, refilling from `fill` (a `poll_transmit`) only
    /// once everything before has been accepted. Ready(Ok) once `fill` has
    /// nothing more; Pending while the stream is full.
    ///
    /// `SendStream::poll_write` accepts what fits and keeps nothing of ours
    /// when it returns Pending, so no output is ever lost or duplicated.
    pub(crate) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        send: &mut SendStream,
        mut fill: impl FnMut(&mut Vec<u8>) -> bool,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            if self.is_empty() {
                self.buf.clear();
                self.written = 0;
                if !fill(&mut self.buf) {
                    return Poll::Ready(Ok(()));
                }
            }
            let pending = self.buf.get(self.written..).unwrap_or_default();
            let n = ready!(Pin::new(&mut *send).poll_write(cx, pending))?;
            self.written += n;
        }
    }
}

/// A runtime timer that follows a state machine's `poll_timeout`.
#[derive(Debug)]
pub(crate) struct Timer {
    inner: Pin<Box<dyn AsyncTimer>>,
    armed: Option<Instant>,
}

impl Timer {
    pub(crate) fn new(runtime: &dyn Runtime) -> Self {
        let far = runtime.now() + Duration::from_secs(86_400 * 365);
        Timer { inner: runtime.new_timer(far), armed: None }
    }

    /// Ready once `at` has passed; Pending (and never ready) for None.
    pub(crate) fn poll_at(&mut self, cx: &mut Context<'_>, at: Option<Instant>) -> Poll<()> {
        let Some(at) = at else {
            self.armed = None;
            return Poll::Pending;
        };
        if self.armed != Some(at) {
            self.inner.as_mut().reset(at);
            self.armed = Some(at);
        }
        self.inner.as_mut().poll(cx)
    }

    /// Waits until `at`.
    pub(crate) async fn sleep_until(&mut self, at: Instant) {
        std::future::poll_fn(|cx| self.poll_at(cx, Some(at))).await;
    }
}

/// Runs `a` and `b` concurrently; returns the output of whichever finishes first.
pub(crate) async fn race<A: Future, B: Future>(a: A, b: B) -> Result<A::Output, B::Output> {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        b.as_mut().poll(cx).map(Err)
    })
    .await
}
