//! Regression tests for what the fuzz targets in `fuzz/` found (see
//! `FUZZING.md`). Each test replays one minimized fuzz input through the
//! public API, operation for operation, and checks the invariant the target
//! found broken. The inputs themselves are kept in the targets' seed corpora
//! (`fuzz/corpus/<target>/seed-regression-*`), so every fuzzing run, in CI
//! too, replays them first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use metaserve_proto::frame::{Frame, PublisherInfo, Upsert};
use metaserve_proto::{varint, Browser, BrowserConfig, BrowserEvent, DecodeError, FrameDecoder, Resume, Welcome};

/// The Hello a browser writes, decoded: its resume point as the server sees it.
fn hello_resume(browser: &mut Browser, now: Instant) -> Option<Resume> {
    let mut wire = Vec::new();
    assert!(browser.poll_transmit(now, &mut wire));
    let mut resume = None;
    let mut frames = 0;
    FrameDecoder::new(1024)
        .decode(&wire, |frame| {
            frames += 1;
            match frame {
                Frame::Hello(hello) => resume = hello.resume,
                other => panic!("browser wrote {other:?}"),
            }
            Ok::<_, DecodeError>(())
        })
        .unwrap();
    assert_eq!(frames, 1);
    resume
}

/// The Welcome of the minimized input: version 1, epoch 0, and absurd
/// values elsewhere (the fuzzer's `u64`s reduced to 62 bits, as the encoder
/// does); none of them matters but the epoch.
fn welcome_with_epoch_zero() -> Welcome {
    let ms = |v: u64| Duration::from_millis(v & varint::MAX);
    Welcome {
        version: 1,
        epoch: 0,
        max_blob_size: 3_602_879_699_748_913_152 & varint::MAX,
        heartbeat_interval: ms(15_408_452_413_678_786_355),
        update_interval: ms(18_446_744_073_709_486_293),
        entry_ttl: ms(18_446_744_073_709_501_183),
        publisher: Some(PublisherInfo {
            id: 10_137_923_706_924_236_799 & varint::MAX,
            address: "[2001:db8::1]:27960".parse().unwrap(),
            port_declared: true,
        }),
    }
}

/// Fuzz target `browser`, minimized input
/// `fuzz/corpus/browser/seed-regression-epoch-zero` (base64
/// `9wD2af///wkAAAAAAAAAAAAAAACA////MTOX1S/V0dXV1QD/////////Ov//////////Ov/lI7GMW9Uv1dHV1dUAAABZHLll5SO5/////////zr/`):
/// operations `Welcome(epoch 0, ...)`, `Transmit` (the Hello), `Synced(28)`,
/// `Deliver`, `Reconnect`, then the final `Transmit` (the new Hello).
///
/// Broken invariant: "the Hello carries the browser's resume point". The
/// browser reported `resume_point() == Some(Resume { epoch: 0, cursor: 28 })`
/// and, on `reconnect()`, kept its list as a resumed session; but epoch 0 is
/// "no resume" on the wire, so its Hello asked for a fresh snapshot, which a
/// server sends without a Reset: entries removed meanwhile stayed in the
/// list for good. Fixed in `Browser::resume_point`: an epoch of 0 (which a
/// conforming server never sends) is not resumable.
#[test]
fn browser_does_not_resume_from_epoch_zero() {
    let now = Instant::now();
    let mut browser = Browser::new(BrowserConfig::new(""));
    let mut wire = Vec::new();
    Frame::Welcome(welcome_with_epoch_zero()).encode(&mut wire);
    assert_eq!(hello_resume(&mut browser, now), None);
    Frame::Synced { revision: 28 }.encode(&mut wire);
    browser.handle_input(now, &wire).unwrap();
    assert_eq!(browser.poll_event(), Some(BrowserEvent::Synced { revision: 28, snapshot: true }));

    assert_eq!(browser.resume_point(), None, "epoch 0 cannot be resumed");
    let mut next = browser.reconnect();
    assert_eq!(next.resume_point(), None);
    assert_eq!(hello_resume(&mut next, now), next.resume_point(), "the Hello carries the resume point");
}

/// The consequence the fuzz target's invariant guards against, end to end:
/// after a reconnect from an epoch-0 session, the fresh snapshot is the
/// whole list: an entry removed meanwhile is gone.
#[test]
fn browser_reconnect_after_epoch_zero_drops_removed_entries() {
    let now = Instant::now();
    let gone = "192.0.2.7:27960".parse().unwrap();
    let mut browser = Browser::new(BrowserConfig::new("q3"));
    hello_resume(&mut browser, now);
    let mut wire = Vec::new();
    Frame::Welcome(welcome_with_epoch_zero()).encode(&mut wire);
    Frame::Upsert(Upsert { revision: 1, address: gone, port_declared: false, blob: b"x" }).encode(&mut wire);
    Frame::Synced { revision: 1 }.encode(&mut wire);
    browser.handle_input(now, &wire).unwrap();
    assert_eq!(browser.servers().count(), 1);

    // The entry is removed while the browser is away; the server answers the
    // new Hello (no resume) with an empty snapshot and no Reset.
    let mut next = browser.reconnect();
    assert_eq!(hello_resume(&mut next, now), None);
    wire.clear();
    Frame::Welcome(welcome_with_epoch_zero()).encode(&mut wire);
    Frame::Synced { revision: 2 }.encode(&mut wire);
    next.handle_input(now, &wire).unwrap();
    assert_eq!(next.poll_event(), Some(BrowserEvent::Synced { revision: 2, snapshot: true }));
    assert_eq!(next.servers().count(), 0, "a removed entry survived the reconnect");
}
