//! Bans and live reload against a real daemon: a SIGHUP that adds a ban
//! closes the banned address's open connections with `BANNED` and its
//! reason and refuses new ones, while everyone else keeps their session;
//! tokens and limits change for new sessions; a broken file is rejected
//! with a clear log line and the previous config stays in force.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use metaserve_tests::{
    assert_rejected, blob, close_code, listing, start_browser, wait_synced, within, Bystander, Daemon, TestPublisher,
    WAIT,
};
use metaserve_tokio::{ErrorCode, PublishOptions};

const BASE: &str = r#"
[namespaces.private]
tokens = ["old-token"]
"#;

fn with_token(namespace: &str, token: &str) -> PublishOptions {
    let mut options = PublishOptions::new(namespace);
    options.token = Some(Bytes::copy_from_slice(token.as_bytes()));
    options
}

/// Rewrites the config, sends SIGHUP, and waits for the daemon to log the
/// outcome (`config reloaded` or `config reload rejected`); returns the log.
async fn reload(daemon: &Daemon, toml: &str, expect: &str) -> String {
    let count = |log: &str| log.matches("config reload").count();
    let before = count(&daemon.log());
    daemon.reload_config(toml);
    within("the reload to be logged", WAIT, async {
        loop {
            let log = daemon.log();
            if count(&log) > before {
                let last = log.lines().rev().find(|l| l.contains("config reload")).unwrap().to_owned();
                assert!(last.contains(expect), "expected {expect:?}, the daemon logged: {last}");
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_bans_closes_and_refuses_and_keeps_the_rest() {
    let daemon = Daemon::start_with_config(&["--update-interval", "100ms"], Some(BASE)).await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "game").await;

    // 127.0.0.4 publishes and browses; 127.0.0.5 publishes with a declared
    // port and with its observed one.
    let cheat_endpoint = daemon.endpoint(4);
    let mut cheat = TestPublisher::start(&daemon, &cheat_endpoint, PublishOptions::new("game"), "cheat").await;
    let (cheat_conn, mut cheat_list) = start_browser(&daemon, &cheat_endpoint, "game").await;
    let host5 = [daemon.endpoint(5), daemon.endpoint(5)];
    let mut declared = PublishOptions::new("game");
    declared.declared_port = Some(27960);
    let mut by_port = TestPublisher::start(&daemon, &host5[0], declared.clone(), "declares 27960").await;
    let same_ip = TestPublisher::start(&daemon, &host5[1], PublishOptions::new("game"), "observed port").await;
    let watcher_endpoint = daemon.endpoint(6);
    let (_watcher_conn, mut watcher) = start_browser(&daemon, &watcher_endpoint, "game").await;
    wait_synced(&mut watcher, "all four publishers", |l| listing(l).len() == 4).await;
    wait_synced(&mut cheat_list, "the cheat's browser synced", |l| listing(l).len() == 4).await;
    // A publisher with the old token, in the namespace whose token rotates.
    let private_endpoint = daemon.endpoint(7);
    let private = TestPublisher::start(&daemon, &private_endpoint, with_token("private", "old-token"), "p").await;
    let (_private_conn, mut private_list) = start_browser(&daemon, &private_endpoint, "private").await;
    // Its Hello must have been accepted before the token rotates.
    wait_synced(&mut private_list, "the private publisher", |l| l.server(&private.address).is_some()).await;

    // Reload: an IP ban, an IP:port ban, a rotated token, a lower blob limit.
    let banned = format!(
        r#"
[limits]
max_blob_size = 100

[namespaces.private]
tokens = ["new-token"]

[[bans]]
address = "127.0.0.4"
reason = "aimbot"

[[bans]]
address = "127.0.0.5:27960"
reason = "fake server"

[[bans]]
address = "127.0.0.8/31"
reason = "old ban"
expires = "{}"
"#,
        humantime_rfc3339(SystemTime::now() - Duration::from_secs(60))
    );
    let log = reload(&daemon, &banned, "config reloaded").await;
    assert!(log.contains("ban already expired"), "{log}");

    // Open connections from the banned addresses are closed with the reason.
    assert_rejected(cheat.outcome().await, ErrorCode::BANNED);
    assert_eq!(close_code(&cheat.connection).await, (ErrorCode::BANNED, "banned: aimbot".to_owned()));
    assert_eq!(close_code(&cheat_conn).await, (ErrorCode::BANNED, "banned: aimbot".to_owned()));
    assert_eq!(close_code(&by_port.connection).await, (ErrorCode::BANNED, "banned: fake server".to_owned()));
    assert_rejected(by_port.outcome().await, ErrorCode::BANNED);
    // ...and their entries disappear for browsers; the others stay.
    let expected = [bystander.address(), same_ip.address];
    wait_synced(&mut watcher, "the banned entries removed", |l| {
        listing(l).keys().copied().collect::<Vec<_>>() == {
            let mut e = expected.to_vec();
            e.sort();
            e
        }
    })
    .await;
    bystander.check("after the ban").await;
    assert!(!same_ip.is_finished(), "unbanned publisher on the banned IP's other port keeps running");
    assert!(!private.is_finished(), "the private publisher keeps running");

    // New connections from a banned IP are refused, whatever the role.
    let mut again = TestPublisher::start(&daemon, &cheat_endpoint, PublishOptions::new("game"), "again").await;
    assert_rejected(again.outcome().await, ErrorCode::BANNED);
    assert_eq!(close_code(&again.connection).await.1, "banned: aimbot");
    // The banned port may not be declared from another connection either.
    let mut declares = TestPublisher::start(&daemon, &host5[1], declared, "again").await;
    assert_rejected(declares.outcome().await, ErrorCode::BANNED);
    // An expired ban bans nobody.
    let endpoint8 = daemon.endpoint(8);
    let free = TestPublisher::start(&daemon, &endpoint8, PublishOptions::new("game"), "expired ban").await;

    // Rotated token: the old one is refused for new sessions, the new one works;
    // the session opened with the old token keeps publishing.
    let endpoint9 = daemon.endpoint(9);
    let mut stale = TestPublisher::start(&daemon, &endpoint9, with_token("private", "old-token"), "stale").await;
    assert_rejected(stale.outcome().await, ErrorCode::UNAUTHORIZED);
    let fresh = TestPublisher::start(&daemon, &endpoint9, with_token("private", "new-token"), "fresh").await;
    private.set("still here").await;
    wait_synced(&mut private_list, "both private publishers", |l| {
        l.server(&private.address).is_some_and(|s| &s.blob[..] == b"still here") && l.server(&fresh.address).is_some()
    })
    .await;

    // Lower blob limit: new publishers get it, open ones keep what their Welcome promised.
    let endpoint10 = daemon.endpoint(10);
    let mut big = TestPublisher::start(&daemon, &endpoint10, PublishOptions::new("game"), blob("big", 200)).await;
    assert_rejected(big.outcome().await, ErrorCode::BLOB_TOO_LARGE);
    same_ip.set(blob("grown", 200)).await;
    wait_synced(&mut watcher, "an open session's 200-byte blob", |l| {
        l.server(&same_ip.address).is_some_and(|s| s.blob.len() == 200)
    })
    .await;

    // A broken file is rejected with its line; the ban stays in force.
    let broken = format!("{banned}\n[limits]\nmax_blob_size = \"lots\"\n");
    let log = reload(&daemon, &broken, "config reload rejected").await;
    let line = log.lines().rev().find(|l| l.contains("config reload rejected")).unwrap();
    assert!(line.contains("metaserve.toml"), "the error names the file: {line}");
    let mut still = TestPublisher::start(&daemon, &cheat_endpoint, PublishOptions::new("game"), "still banned").await;
    assert_rejected(still.outcome().await, ErrorCode::BANNED);
    let bad_target = "[[bans]]\naddress = \"not-an-address\"\nreason = \"x\"\n";
    let log = reload(&daemon, bad_target, "config reload rejected").await;
    assert!(log.contains("invalid ban target"), "{log}");
    let mut still = TestPublisher::start(&daemon, &cheat_endpoint, PublishOptions::new("game"), "still banned").await;
    assert_rejected(still.outcome().await, ErrorCode::BANNED);

    // Lifting the ban lets the address back in; nobody was dropped meanwhile.
    reload(&daemon, BASE, "config reloaded").await;
    let back = TestPublisher::start(&daemon, &cheat_endpoint, PublishOptions::new("game"), "reformed").await;
    wait_synced(&mut watcher, "the reformed publisher", |l| l.server(&back.address).is_some()).await;
    bystander.check("after all the reloads").await;
    assert!(!free.is_finished() && !same_ip.is_finished() && !private.is_finished());
}

/// `2024-05-06T07:08:09Z` for `at` (UTC), without a date crate.
fn humantime_rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// SIGHUP with an empty file, or with one that would lift every ban and
/// publish token at once (what a truncated file does), is rejected: the
/// ban and the token stay in force. A reload that is applied logs what it
/// changes in access, without the tokens themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_lifts_every_control_by_accident() {
    let config = format!("{BASE}\n[[bans]]\naddress = \"127.0.0.4\"\nreason = \"aimbot\"\n");
    let daemon = Daemon::start_with_config(&[], Some(&config)).await;
    let (banned_host, anonymous_host) = (daemon.endpoint(4), daemon.endpoint(5));
    for (what, toml) in [
        ("an empty file", ""),
        ("a file of comments", "# [[bans]]\n# address = \"127.0.0.4\"\n"),
        ("a file that lifts every ban and token", "[limits]\nmax_blob_size = 1000\n"),
    ] {
        let log = reload(&daemon, toml, "config reload rejected").await;
        let line = log.lines().rev().find(|l| l.contains("config reload rejected")).unwrap();
        println!("{what}: {line}");
        let mut banned = TestPublisher::start(&daemon, &banned_host, PublishOptions::new("game"), "x").await;
        assert_rejected(banned.outcome().await, ErrorCode::BANNED);
        let mut anonymous = TestPublisher::start(&daemon, &anonymous_host, PublishOptions::new("private"), "x").await;
        assert_rejected(anonymous.outcome().await, ErrorCode::UNAUTHORIZED);
    }
    let changed = "[namespaces.other]\ntokens = [\"t\"]\n[[bans]]\naddress = \"127.0.0.6\"\nreason = \"r\"\n";
    let log = reload(&daemon, changed, "config reloaded").await;
    for change in [
        "reload: ban added",
        "reload: ban lifted",
        "reload: publish token now required",
        "reload: publish token no longer required",
    ] {
        assert!(log.contains(change), "the reload logs {change:?}:\n{log}");
    }
    assert!(!log.contains("old-token"), "tokens are never logged");
    let unbanned = TestPublisher::start(&daemon, &banned_host, PublishOptions::new("game"), "back").await;
    let watcher_endpoint = daemon.endpoint(7);
    let (_watcher, mut watcher) = start_browser(&daemon, &watcher_endpoint, "game").await;
    wait_synced(&mut watcher, "the unbanned publisher", |l| l.server(&unbanned.address).is_some()).await;
}
