//! The `Publisher` state machine fed arbitrary server input and calls.
//!
//! A structure-aware sequence of operations: heartbeats set by the game,
//! time passing, timeouts, shutdown, and server bytes (well-formed frames of
//! any kind with any field values, or raw bytes), delivered in arbitrary
//! chunks. Checks, beyond the absence of panics:
//! - everything the publisher writes decodes; it is a Hello (version 1,
//!   publisher role, the configured namespace, token and port) followed by
//!   Heartbeats, and at most one Goodbye, which ends it;
//! - newest wins: every Heartbeat carries the newest blob the game set;
//! - once a Welcome is in, Heartbeats are at least the server's heartbeat
//!   interval apart;
//! - timers are truthful: `poll_transmit` sends a Heartbeat only when
//!   `poll_timeout` said it was due (or a new blob is waiting and no deadline
//!   is pending), and a due deadline always yields output;
//! - events: at most one Accepted, only after a Welcome; after Rejected or
//!   an input error the publisher is closed and stays silent;
//! - errors carry only the codes a publisher may close with.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metaserve_fuzz::{chunks, decode_valid, trace, ArbFrame, ArbWelcome};
use metaserve_proto::frame::Frame;
use metaserve_proto::{ErrorCode, FrameDecoder, Publisher, PublisherConfig, PublisherEvent, Role};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    namespace: String,
    token: Option<Vec<u8>>,
    declared_port: Option<u16>,
    /// Small maxima make FRAME_TOO_LARGE reachable.
    max_frame_size: u16,
    ops: Vec<Op<'a>>,
}

#[derive(Debug, Arbitrary)]
enum Op<'a> {
    SetHeartbeat(Vec<u8>),
    /// A short blob, so that heartbeats repeat and differ cheaply.
    SetSmall(u8),
    Advance(u16),
    AdvanceLong(u32),
    Transmit,
    Timeout,
    Shutdown,
    Welcome(ArbWelcome),
    /// A plausible Welcome: version 1, small intervals.
    GoodWelcome {
        interval_ms: u16,
        ttl_ms: u16,
        max_blob: u8,
    },
    Frame(ArbFrame),
    Raw(&'a [u8]),
    /// Delivers what the server has written, cut at these points.
    Deliver(&'a [u8]),
}

struct Harness {
    publisher: Publisher,
    config: PublisherConfig,
    now: Instant,
    /// Server → publisher bytes not yet delivered.
    inbound: Vec<u8>,
    /// Publisher → server stream, decoded.
    outbound: FrameDecoder,
    seen_hello: bool,
    seen_goodbye: bool,
    /// The newest blob the game set, if any.
    newest: Option<Vec<u8>>,
    /// The heartbeat interval in force once a Welcome arrived.
    interval: Option<Duration>,
    last_heartbeat: Option<Instant>,
    accepted: bool,
    closed: bool,
    /// A call since the last `poll_transmit` may have made output due.
    dirty: bool,
}

impl Harness {
    fn transmit(&mut self) {
        let deadline = self.publisher.poll_timeout();
        let mut buf = Vec::new();
        let wrote = self.publisher.poll_transmit(self.now, &mut buf);
        assert_eq!(wrote, !buf.is_empty(), "poll_transmit's result disagrees with its output");
        if self.closed {
            assert!(buf.is_empty(), "a closed publisher wrote {buf:?}");
        }
        let mut heartbeats = 0;
        let (now, config) = (self.now, &self.config);
        let (seen_hello, seen_goodbye) = (&mut self.seen_hello, &mut self.seen_goodbye);
        let (newest, interval, last) = (&self.newest, self.interval, &mut self.last_heartbeat);
        let mut hello_now = false;
        decode_valid(&mut self.outbound, &buf, "publisher output", |frame| {
            assert!(!*seen_goodbye, "frame after Goodbye: {frame:?}");
            match frame {
                Frame::Hello(h) => {
                    assert!(!*seen_hello, "second Hello");
                    *seen_hello = true;
                    hello_now = true;
                    assert_eq!((h.version, h.role), (1, Role::Publisher));
                    assert_eq!(h.namespace, config.namespace);
                    assert_eq!(h.token, config.token.as_deref().unwrap_or_default());
                    assert_eq!(h.declared_port, config.declared_port.filter(|&p| p != 0));
                    assert_eq!(h.resume, None);
                }
                Frame::Heartbeat { blob } => {
                    assert!(*seen_hello, "Heartbeat before Hello");
                    assert_eq!(Some(blob), newest.as_deref(), "a Heartbeat that is not the newest blob");
                    if let (Some(interval), Some(prev)) = (interval, *last) {
                        match prev.checked_add(interval) {
                            Some(due) => {
                                assert!(now >= due, "heartbeats {:?} apart, interval {interval:?}", now - prev)
                            }
                            None => panic!("heartbeat sent although the interval {interval:?} never elapses"),
                        }
                    }
                    *last = Some(now);
                    heartbeats += 1;
                    trace(|| format!("heartbeat sent, after a Welcome: {}", interval.is_some()));
                }
                Frame::Goodbye => {
                    assert!(*seen_hello, "Goodbye before Hello");
                    *seen_goodbye = true;
                }
                other => panic!("publisher wrote {other:?}"),
            }
        });
        assert!(heartbeats <= 1, "{heartbeats} heartbeats in one poll_transmit");
        if heartbeats == 1 && !hello_now && !std::mem::take(&mut self.dirty) {
            // Nothing changed since the last poll_transmit, so only a timer can
            // have made this heartbeat due: poll_timeout must have said so.
            if let Some(at) = deadline {
                assert!(at <= self.now, "heartbeat sent before its deadline {at:?}");
            }
            assert!(deadline.is_some(), "heartbeat sent while poll_timeout said nothing was due");
        }
        if let Some(at) = deadline {
            if at <= self.now && !self.closed && !self.seen_goodbye {
                assert!(wrote, "poll_timeout said {at:?} was due, poll_transmit wrote nothing");
            }
        }
        if self.seen_goodbye {
            self.closed = true;
        }
        self.dirty = false;
    }

    fn deliver(&mut self, cuts: &[u8]) {
        self.dirty = true;
        let inbound = std::mem::take(&mut self.inbound);
        for part in chunks(&inbound, cuts) {
            let was_closed = self.publisher.is_closed();
            let result = self.publisher.handle_input(self.now, part);
            if was_closed {
                assert_eq!(result, Ok(()), "a closed publisher reported an error");
            }
            let mut events = Vec::new();
            while let Some(e) = self.publisher.poll_event() {
                events.push(e);
            }
            if was_closed {
                assert!(events.is_empty(), "a closed publisher reported {events:?}");
            }
            for event in events {
                match event {
                    PublisherEvent::Accepted(w) => {
                        trace(|| "accepted".into());
                        assert!(!self.accepted, "second Accepted");
                        assert_eq!(self.publisher.welcome(), Some(&w));
                        self.accepted = true;
                        self.interval = Some(w.heartbeat_interval);
                    }
                    PublisherEvent::Rejected { .. } => {
                        assert!(self.publisher.is_closed(), "Rejected but not closed");
                        self.closed = true;
                    }
                }
            }
            if let Err(e) = result {
                trace(|| format!("input error {}", e.code()));
                assert!(self.publisher.is_closed(), "error {e} but not closed");
                let allowed =
                    [ErrorCode::PROTOCOL_VIOLATION, ErrorCode::FRAME_TOO_LARGE, ErrorCode::UNSUPPORTED_VERSION];
                assert!(allowed.contains(&e.code()), "publisher closed with {e} ({})", e.code());
                self.closed = true;
            }
        }
    }

    fn set(&mut self, blob: Vec<u8>) {
        self.dirty = true;
        let max = self.publisher.welcome().map(|w| w.max_blob_size);
        match self.publisher.set_heartbeat(Bytes::from(blob.clone()), self.now) {
            Ok(()) => {
                assert!(max.is_none_or(|m| blob.len() as u64 <= m), "blob above the Welcome's maximum accepted");
                if !self.closed && !self.seen_goodbye {
                    self.newest = Some(blob);
                }
            }
            Err(e) => {
                trace(|| "blob refused".into());
                assert_eq!(e.code(), ErrorCode::BLOB_TOO_LARGE);
                assert!(max.is_some_and(|m| blob.len() as u64 > m), "blob refused: {e}");
            }
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let start = Instant::now();
    let max_frame_size = match input.max_frame_size % 3 {
        0 => usize::from(input.max_frame_size),
        1 => usize::from(input.max_frame_size % 64),
        _ => 4096,
    };
    let config = PublisherConfig {
        namespace: input.namespace,
        token: input.token.map(Bytes::from),
        declared_port: input.declared_port,
        max_frame_size,
    };
    let mut h = Harness {
        publisher: Publisher::new(config.clone(), start),
        config,
        now: start,
        inbound: Vec::new(),
        outbound: FrameDecoder::new(1 << 20),
        seen_hello: false,
        seen_goodbye: false,
        newest: None,
        interval: None,
        last_heartbeat: None,
        accepted: false,
        closed: false,
        dirty: true,
    };
    for op in input.ops {
        match op {
            Op::SetHeartbeat(blob) => h.set(blob),
            Op::SetSmall(b) => h.set(vec![b % 4]),
            Op::Advance(ms) => h.now += Duration::from_millis(u64::from(ms)),
            Op::AdvanceLong(ms) => h.now += Duration::from_millis(u64::from(ms)),
            Op::Transmit => h.transmit(),
            Op::Timeout => h.publisher.handle_timeout(h.now),
            Op::Shutdown => {
                h.publisher.shutdown(h.now);
                h.dirty = true;
            }
            Op::Welcome(w) => Frame::Welcome(w.welcome()).encode(&mut h.inbound),
            Op::GoodWelcome { interval_ms, ttl_ms, max_blob } => {
                let w = ArbWelcome {
                    version: 1,
                    epoch: 7,
                    max_blob_size: u64::from(max_blob),
                    heartbeat_interval: u64::from(interval_ms),
                    update_interval: 1000,
                    entry_ttl: u64::from(ttl_ms),
                    publisher_id: 1,
                    address: metaserve_fuzz::ArbAddr("192.0.2.1:27960".parse().unwrap()),
                    port_declared: false,
                };
                Frame::Welcome(w.welcome()).encode(&mut h.inbound)
            }
            Op::Frame(f) => f.encode(&mut h.inbound),
            Op::Raw(bytes) => h.inbound.extend_from_slice(bytes),
            Op::Deliver(cuts) => h.deliver(cuts),
        }
        if h.publisher.is_closed() && !h.seen_goodbye && !h.closed {
            // Closed by shutdown before Hello: nothing more may be written.
            h.closed = true;
        }
    }
    h.deliver(&[]);
    h.transmit();
});
