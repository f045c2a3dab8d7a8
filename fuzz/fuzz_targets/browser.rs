//! The `Browser` state machine fed arbitrary server input and calls.
//!
//! A structure-aware sequence of server frames (Welcome, Upsert, Remove,
//! Synced, Reset, Reject with revisions that mostly rise, addresses from a
//! small pool so that entries meet; or any frame with any field values, or
//! raw bytes), delivered in arbitrary chunks, mixed with shutdowns and
//! reconnects. Checks, beyond the absence of panics:
//! - the list equals the one rebuilt from the browser's own events
//!   (Upsert / Remove / Reset), before and after reconnects;
//! - the list never holds more than `max_entries`;
//! - Upsert and Remove events carry strictly rising revisions between
//!   Resets, and Synced never goes back;
//! - `resume_point` is the last Synced revision in the Welcome's epoch —
//!   before a resumed session's first Synced, the cursor it resumed from if
//!   the Welcome is of the resume's epoch and no Reset came; none after a
//!   Reset until the next Synced, and none for epoch 0, which a Hello cannot
//!   carry — the Hello carries it, and
//!   `is_synced` only follows a snapshot's Synced;
//! - after Rejected or an input error the browser is closed, ignores input
//!   and reports nothing; errors carry only a browser's codes;
//! - the browser writes one Hello (its namespace, its resume point) first
//!   and at most one Goodbye, last.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use metaserve_fuzz::{chunks, decode_valid, trace, ArbAddr, ArbFrame, ArbWelcome};
use metaserve_proto::frame::{Frame, Reject, Upsert};
use metaserve_proto::{Browser, BrowserConfig, BrowserEvent, ErrorCode, FrameDecoder, Resume, Role, Server};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    namespace: String,
    max_entries: u8,
    max_frame_size: u16,
    ops: Vec<Op<'a>>,
}

#[derive(Debug, Arbitrary)]
enum Op<'a> {
    Welcome(ArbWelcome),
    GoodWelcome {
        epoch: u8,
    },
    /// Revisions are `last + step` (a step of 0 or less is a broken server).
    Upsert {
        step: i8,
        address: ArbAddr,
        port_declared: bool,
        blob: Vec<u8>,
    },
    Remove {
        step: i8,
        address: ArbAddr,
    },
    Synced {
        step: i8,
    },
    Reset,
    Reject {
        code: u8,
        reason: String,
    },
    Frame(ArbFrame),
    Raw(&'a [u8]),
    Deliver(&'a [u8]),
    Transmit,
    Shutdown,
    Reconnect,
}

struct Harness {
    browser: Browser,
    namespace: String,
    max_entries: usize,
    /// Server → browser bytes not yet delivered.
    inbound: Vec<u8>,
    /// Browser → server stream of the current session, decoded.
    outbound: FrameDecoder,
    seen_hello: bool,
    seen_goodbye: bool,
    /// The resume point the current session's Hello must carry.
    resume: Option<Resume>,
    /// The list rebuilt from events.
    model: HashMap<SocketAddr, Server>,
    /// Revision of the last Upsert/Remove event since the last Reset.
    last_change: u64,
    last_synced: Option<u64>,
    /// Whether a Reset arrived in this session (the resumed cursor is void).
    reset_seen: bool,
    snapshot_done: bool,
    closed: bool,
    /// The revision the next generated frame is relative to.
    rev: u64,
}

impl Harness {
    fn new_session(browser: Browser, h: Option<&Harness>, namespace: &str, max_entries: usize) -> Harness {
        let resume = browser.resume_point();
        Harness {
            browser,
            namespace: namespace.to_owned(),
            max_entries,
            inbound: Vec::new(),
            outbound: FrameDecoder::new(1 << 20),
            seen_hello: false,
            seen_goodbye: false,
            resume,
            // A resumed session keeps its list; a fresh one starts empty.
            model: match (h, resume) {
                (Some(h), Some(_)) => h.model.clone(),
                _ => HashMap::new(),
            },
            last_change: 0,
            last_synced: None,
            reset_seen: false,
            snapshot_done: resume.is_some(),
            closed: false,
            rev: h.map_or(0, |h| h.rev),
        }
    }

    fn check_list(&self) {
        let list: HashMap<SocketAddr, Server> = self.browser.servers().map(|s| (s.address, s.clone())).collect();
        assert_eq!(list.len(), self.browser.servers().len());
        assert_eq!(list, self.model, "list differs from the one rebuilt from events");
        assert!(list.len() <= self.max_entries, "{} entries, max {}", list.len(), self.max_entries);
        for (address, server) in &list {
            assert_eq!(self.browser.server(address), Some(server));
        }
        if self.browser.is_synced() {
            assert!(self.snapshot_done && !self.closed, "is_synced without a snapshot's Synced");
        }
        if let Some(w) = self.browser.welcome() {
            let cursor = match self.last_synced {
                Some(synced) => Some(synced),
                None if !self.reset_seen => self.resume.filter(|r| r.epoch == w.epoch).map(|r| r.cursor),
                None => None,
            };
            // Epoch 0 cannot be resumed: a Hello cannot carry it.
            let expected =
                cursor.filter(|&c| c > 0).map(|cursor| Resume { epoch: w.epoch, cursor }).filter(|r| r.epoch != 0);
            assert_eq!(self.browser.resume_point(), expected);
        }
    }

    fn transmit(&mut self) {
        let mut buf = Vec::new();
        let wrote = self.browser.poll_transmit(Instant::now(), &mut buf);
        assert_eq!(wrote, !buf.is_empty());
        let (seen_hello, seen_goodbye) = (&mut self.seen_hello, &mut self.seen_goodbye);
        let (namespace, resume) = (&self.namespace, self.resume);
        decode_valid(&mut self.outbound, &buf, "browser output", |frame| {
            assert!(!*seen_goodbye, "frame after Goodbye: {frame:?}");
            match frame {
                Frame::Hello(h) => {
                    assert!(!*seen_hello, "second Hello");
                    *seen_hello = true;
                    assert_eq!((h.version, h.role, h.namespace), (1, Role::Browser, namespace.as_str()));
                    assert_eq!(h.resume, resume, "Hello does not carry the resume point");
                }
                Frame::Goodbye => {
                    assert!(*seen_hello, "Goodbye before Hello");
                    *seen_goodbye = true;
                }
                other => panic!("browser wrote {other:?}"),
            }
        });
        if self.seen_goodbye {
            assert!(self.browser.is_closed());
        }
    }

    fn deliver(&mut self, cuts: &[u8]) {
        let inbound = std::mem::take(&mut self.inbound);
        for part in chunks(&inbound, cuts) {
            let was_closed = self.browser.is_closed();
            let result = self.browser.handle_input(Instant::now(), part);
            if was_closed {
                assert_eq!(result, Ok(()), "a closed browser reported an error");
            }
            while let Some(event) = self.browser.poll_event() {
                assert!(!was_closed, "a closed browser reported {event:?}");
                trace(|| format!("event {}", format!("{event:?}").split(['(', ' ']).next().unwrap_or("")));
                match event {
                    BrowserEvent::Upsert(server) => {
                        assert!(server.revision > self.last_change, "Upsert revision {} not rising", server.revision);
                        self.last_change = server.revision;
                        self.model.insert(server.address, server);
                    }
                    BrowserEvent::Remove(address) => {
                        assert!(self.model.remove(&address).is_some(), "Remove of an address never listed");
                    }
                    BrowserEvent::Synced { revision, snapshot } => {
                        assert!(revision >= self.last_change, "Synced {revision} behind {}", self.last_change);
                        assert!(self.last_synced.is_none_or(|s| revision >= s) || snapshot);
                        assert_eq!(snapshot, !self.snapshot_done, "snapshot flag wrong");
                        self.snapshot_done = true;
                        self.last_synced = Some(revision);
                        self.last_change = revision;
                    }
                    BrowserEvent::Reset => {
                        self.model.clear();
                        self.last_change = 0;
                        self.last_synced = None;
                        self.reset_seen = true;
                        self.snapshot_done = false;
                    }
                    BrowserEvent::Rejected { .. } => {
                        assert!(self.browser.is_closed(), "Rejected but not closed");
                        self.closed = true;
                    }
                }
            }
            if let Err(e) = result {
                trace(|| format!("input error {}", e.code()));
                assert!(self.browser.is_closed(), "error {e} but not closed");
                let allowed = [
                    ErrorCode::PROTOCOL_VIOLATION,
                    ErrorCode::FRAME_TOO_LARGE,
                    ErrorCode::UNSUPPORTED_VERSION,
                    ErrorCode::LIST_TOO_LARGE,
                ];
                assert!(allowed.contains(&e.code()), "browser closed with {e}");
                self.closed = true;
            }
            self.check_list();
        }
    }

    fn next_rev(&mut self, step: i8) -> u64 {
        self.rev = self.rev.saturating_add_signed(i64::from(step));
        self.rev
    }
}

fuzz_target!(|input: Input<'_>| {
    let max_entries = usize::from(input.max_entries % 16);
    let max_frame_size = match input.max_frame_size % 3 {
        0 => usize::from(input.max_frame_size),
        1 => usize::from(input.max_frame_size % 64),
        _ => 64 * 1024 + 256,
    };
    let config = BrowserConfig { max_entries, max_frame_size, ..BrowserConfig::new(input.namespace.clone()) };
    let mut h = Harness::new_session(Browser::new(config), None, &input.namespace, max_entries);
    for op in input.ops {
        let mut buf = Vec::new();
        match op {
            Op::Welcome(w) => Frame::Welcome(w.welcome()).encode(&mut buf),
            Op::GoodWelcome { epoch } => {
                let w = ArbWelcome {
                    version: 1,
                    epoch: u64::from(epoch % 4) + 1,
                    max_blob_size: 8192,
                    heartbeat_interval: 1000,
                    update_interval: 1000,
                    entry_ttl: 30000,
                    publisher_id: 0,
                    address: ArbAddr("0.0.0.0:0".parse().unwrap()),
                    port_declared: false,
                };
                Frame::Welcome(w.welcome()).encode(&mut buf)
            }
            Op::Upsert { step, address, port_declared, blob } => {
                let revision = h.next_rev(step);
                Frame::Upsert(Upsert { revision, address: address.0, port_declared, blob: &blob }).encode(&mut buf)
            }
            Op::Remove { step, address } => {
                let revision = h.next_rev(step);
                Frame::Remove { revision, address: address.0 }.encode(&mut buf)
            }
            Op::Synced { step } => {
                let revision = h.next_rev(step);
                Frame::Synced { revision }.encode(&mut buf)
            }
            Op::Reset => Frame::Reset.encode(&mut buf),
            Op::Reject { code, reason } => {
                Frame::Reject(Reject { code: ErrorCode(u64::from(code)), reason: &reason }).encode(&mut buf)
            }
            Op::Frame(f) => f.encode(&mut buf),
            Op::Raw(bytes) => buf = bytes.to_vec(),
            Op::Deliver(cuts) => h.deliver(cuts),
            Op::Transmit => h.transmit(),
            Op::Shutdown => h.browser.shutdown(Instant::now()),
            Op::Reconnect => {
                // The connection is lost with whatever was still in flight.
                h.inbound.clear();
                let ns = h.namespace.clone();
                let old = std::mem::replace(&mut h.browser, Browser::new(BrowserConfig::new("")));
                let expected = old.resume_point();
                let next = old.reconnect();
                assert_eq!(next.resume_point(), expected, "reconnect lost the resume point");
                trace(|| format!("reconnect, resuming: {}", expected.is_some()));
                let next = Harness::new_session(next, Some(&h), &ns, max_entries);
                h = next;
                h.check_list();
            }
        }
        h.inbound.extend_from_slice(&buf);
    }
    h.deliver(&[]);
    h.transmit();
    h.check_list();
});
