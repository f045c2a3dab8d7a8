//! Poll-level plumbing shared by every driver loop: pulling output from a
//! state machine only when the stream can take it, and runtime timers.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{AsyncTimer, Runtime, SendStream, WriteError};

/// Passes of a driver loop before it yields to the runtime, so one busy
/// connection cannot starve the others on the same thread.
pub(crate) const BUDGET: usize = 32;

/// Output this large or larger is handed to quinn by ownership; smaller
/// output is copied, so that a few bytes never keep a chunk-sized allocation
/// alive in quinn's send buffer until the peer acknowledges them.
const HAND_OFF_MIN: usize = 4096;

/// Room reserved beyond one `transmit_chunk` for the frame that crosses it.
const CHUNK_SLACK: usize = 1024;

/// Bytes pulled from a state machine and not yet accepted by the stream.
///
/// Bulk output (a browser's snapshot or delta) goes to quinn without a copy:
/// the buffer `poll_transmit` filled becomes the [`Bytes`] quinn queues, and
/// a fresh one takes its place. quinn keeps a buffer's whole capacity until
/// the peer acknowledges it, so a buffer is handed off only when it is at
/// least 7/8 full; a looser one is copied into an exact-size allocation. A
/// connection that has nothing to send holds no buffer beyond a few bytes.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    scratch: Vec<u8>,
    pending: Bytes,
    /// Capacity reserved for a refill after a hand-off: one chunk, plus
    /// room for a small frame that runs past it.
    capacity: usize,
    /// The last refill was handed off: the next one is probably bulk too.
    bulk: bool,
}

impl Outbox {
    /// An outbox for a state machine whose `poll_transmit` stops adding
    /// frames once it has written `transmit_chunk` bytes.
    pub(crate) fn new(transmit_chunk: usize) -> Self {
        Outbox { capacity: transmit_chunk + CHUNK_SLACK, ..Outbox::default() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the next output from `fill` (a `poll_transmit`) unless some is
    /// still pending. Returns whether output is pending afterwards.
    pub(crate) fn refill(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        if !self.pending.is_empty() {
            return true;
        }
        self.scratch.clear();
        if self.bulk {
            self.scratch.reserve(self.capacity);
        }
        if !fill(&mut self.scratch) || self.scratch.is_empty() {
            return false;
        }
        let len = self.scratch.len();
        self.bulk = len >= HAND_OFF_MIN;
        self.pending = if self.bulk && self.scratch.capacity() - len <= self.scratch.capacity() / 8 {
            Bytes::from(std::mem::take(&mut self.scratch))
        } else {
            let small = Bytes::copy_from_slice(&self.scratch);
            if self.scratch.capacity() > HAND_OFF_MIN {
                self.scratch = Vec::new();
            }
            small
        };
        true
    }

    /// Writes what is pending. Ready(Ok) once the stream has taken all of
    /// it; Pending while the stream is full (its writability wakes the task).
    ///
    /// `write_chunks` is cancel-safe and takes what fits, leaving the rest in
    /// `pending`, so no output is ever lost or duplicated.
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, send: &mut SendStream) -> Poll<Result<(), WriteError>> {
        while !self.pending.is_empty() {
            ready!(pin!(send.write_chunks(std::slice::from_mut(&mut self.pending))).poll(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes pending bytes, refilling from `fill` once everything before
    /// has been accepted. Ready(Ok) once `fill` has nothing more; Pending
    /// while the stream is full.
    pub(crate) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        send: &mut SendStream,
        mut fill: impl FnMut(&mut Vec<u8>) -> bool,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            ready!(self.poll_write(cx, send))?;
            if !self.refill(&mut fill) {
                return Poll::Ready(Ok(()));
            }
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
        let fired = self.inner.as_mut().poll(cx);
        if fired.is_ready() {
            // Some runtimes' timers (async-io's, under async-std and smol)
            // are spent once they fired: the next call re-arms, and a
            // passed instant fires again at once, as tokio's would.
            self.armed = None;
        }
        fired
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_with(n: usize) -> impl FnOnce(&mut Vec<u8>) -> bool {
        move |b: &mut Vec<u8>| {
            b.extend(std::iter::repeat_n(7u8, n));
            n > 0
        }
    }

    #[test]
    fn small_output_is_copied_and_the_scratch_stays_small() {
        let mut out = Outbox::new(16 * 1024);
        assert!(!out.refill(fill_with(0)));
        assert!(out.is_empty());
        assert!(out.refill(fill_with(100)));
        assert_eq!(out.pending.len(), 100);
        assert_ne!(out.pending.as_ptr(), out.scratch.as_ptr());
        assert!(out.scratch.capacity() < HAND_OFF_MIN);
        // Pending output blocks a refill.
        assert!(out.refill(|_| unreachable!("refilled while output was pending")));
    }

    #[test]
    fn a_full_chunk_is_handed_off_without_a_copy() {
        let mut out = Outbox::new(16 * 1024);
        // The first bulk fill grows the scratch as it goes; later ones reserve.
        let fill_chunk = |out: &mut Outbox| {
            let mut filled_at = std::ptr::null();
            assert!(out.refill(|b| {
                b.reserve(16 * 1024 + 300);
                b.extend(std::iter::repeat_n(1u8, 16 * 1024 + 300));
                filled_at = b.as_ptr();
                true
            }));
            filled_at
        };
        let filled_at = fill_chunk(&mut out);
        assert_eq!(out.pending.as_ptr(), filled_at, "the filled buffer itself is queued");
        assert_eq!(out.scratch.capacity(), 0);
        out.pending = Bytes::new(); // the stream took it
        let _ = fill_chunk(&mut out);
        assert_eq!(out.pending.len(), 16 * 1024 + 300);
    }

    #[test]
    fn a_loose_buffer_is_copied_to_an_exact_size() {
        let mut out = Outbox::new(16 * 1024);
        let mut filled_at = std::ptr::null();
        assert!(out.refill(|b| {
            b.reserve(64 * 1024);
            b.extend(std::iter::repeat_n(1u8, 5000));
            filled_at = b.as_ptr();
            true
        }));
        assert_ne!(out.pending.as_ptr(), filled_at, "5,000 bytes in 64 KiB are copied, not pinned");
        assert_eq!(out.pending.len(), 5000);
        assert_eq!(out.scratch.capacity(), 0, "the loose buffer is freed");
    }
}
