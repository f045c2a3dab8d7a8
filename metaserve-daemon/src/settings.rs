//! Settings from flags, the config file and defaults, validated; and the
//! part of them that SIGHUP re-reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use metaserve_tokio::{Ban, BanTarget, RegistryConfig};
use serde::{Deserialize, Deserializer};

use crate::cli::{Cli, LimitFlags};

/// The `--config` file. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http: Option<SocketAddr>,
    threads: Option<NonZeroUsize>,
    limits: LimitFlags,
    namespaces: BTreeMap<String, NamespaceConfig>,
    bans: Vec<BanConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NamespaceConfig {
    /// Publishers of this namespace must present one of these.
    tokens: Vec<String>,
}

/// Longest ban reason, in bytes: it travels in a QUIC CONNECTION_CLOSE.
pub(crate) const MAX_BAN_REASON: usize = 200;

/// One `[[bans]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanConfig {
    #[serde(deserialize_with = "de_ban_target")]
    address: BanTarget,
    #[serde(deserialize_with = "de_reason")]
    reason: String,
    #[serde(default, deserialize_with = "de_expiry")]
    expires: Option<SystemTime>,
}

fn de_ban_target<'de, D: Deserializer<'de>>(de: D) -> Result<BanTarget, D::Error> {
    String::deserialize(de)?.parse().map_err(serde::de::Error::custom)
}

fn de_reason<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let reason = String::deserialize(de)?;
    if reason.trim().is_empty() {
        return Err(serde::de::Error::custom("a ban needs a reason: it is sent to the banned client"));
    }
    if reason.len() > MAX_BAN_REASON || reason.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(format!(
            "a ban reason must be one line of at most {MAX_BAN_REASON} bytes"
        )));
    }
    Ok(reason)
}

fn de_expiry<'de, D: Deserializer<'de>>(de: D) -> Result<Option<SystemTime>, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_rfc3339_weak(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e} (expected a time like 2030-01-31T12:00:00Z)")))
}

/// A ban as configured: its expiry is wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BanSetting {
    pub(crate) target: BanTarget,
    pub(crate) reason: String,
    pub(crate) expires: Option<SystemTime>,
}

impl BanSetting {
    /// The registry's ban, its expiry moved onto the monotonic clock;
    /// `None` if it has expired already.
    pub(crate) fn to_ban(&self, now: Instant, wall: SystemTime) -> Option<Ban> {
        let ban = Ban::new(self.target, self.reason.clone());
        match self.expires {
            None => Some(ban),
            Some(at) => {
                let left = at.duration_since(wall).ok().filter(|d| !d.is_zero())?;
                // Past the monotonic clock's range: never in practice, and as good as no expiry.
                Some(match now.checked_add(left) {
                    Some(at) => ban.expires_at(at),
                    None => ban,
                })
            }
        }
    }
}

/// Where the TLS identity comes from.
#[derive(Debug)]
pub(crate) enum Identity {
    Files { cert: PathBuf, key: PathBuf },
    Dev { write_to: PathBuf },
}

/// What SIGHUP re-reads from the config file: publish tokens, bans and limits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Live {
    pub(crate) registry: RegistryConfig,
    pub(crate) tokens: BTreeMap<String, Vec<String>>,
    pub(crate) bans: Vec<BanSetting>,
}

/// The file's keys that only take effect at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StartOnly {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http: Option<SocketAddr>,
    threads: Option<NonZeroUsize>,
}

impl StartOnly {
    fn of(file: &FileConfig) -> StartOnly {
        StartOnly {
            listen: file.listen,
            cert: file.cert.clone(),
            key: file.key.clone(),
            http: file.http,
            threads: file.threads,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) identity: Identity,
    pub(crate) http: Option<SocketAddr>,
    /// Worker threads of the runtime; None: one per CPU.
    pub(crate) threads: Option<NonZeroUsize>,
    pub(crate) live: Live,
    /// The config file, re-read on SIGHUP.
    pub(crate) config_path: Option<PathBuf>,
    /// Limit flags: they keep overriding the file after a reload.
    flags: LimitFlags,
    start_only: StartOnly,
}

pub(crate) const DEFAULT_LISTEN: &str = "[::]:27950";

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    // toml's message names the line and column and quotes the offending text.
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// The reloadable part of the settings: flags over the file over defaults.
fn live(flags: &LimitFlags, file: FileConfig) -> anyhow::Result<Live> {
    let registry = registry_config(flags, &file.limits);
    let mut tokens = BTreeMap::new();
    for (namespace, ns) in file.namespaces {
        if namespace.is_empty() || namespace.len() > registry.max_namespace_len {
            bail!("config: namespace {namespace:?} must have 1 to {} bytes", registry.max_namespace_len);
        }
        for token in &ns.tokens {
            if token.is_empty() || token.len() > registry.max_token_len {
                bail!(
                    "config: a token of namespace {namespace:?} must have 1 to {} bytes (max_token_len)",
                    registry.max_token_len
                );
            }
        }
        tokens.insert(namespace, ns.tokens);
    }
    let bans =
        file.bans.into_iter().map(|b| BanSetting { target: b.address, reason: b.reason, expires: b.expires }).collect();
    Ok(Live { registry, tokens, bans })
}

impl Settings {
    pub(crate) fn load(cli: Cli) -> anyhow::Result<Settings> {
        let (file, base) = match &cli.config {
            Some(path) => (read_file(path)?, path.parent().map(Path::to_owned).unwrap_or_default()),
            None => (FileConfig::default(), PathBuf::new()),
        };
        let start_only = StartOnly::of(&file);
        let identity = if cli.dev {
            Identity::Dev { write_to: cli.dev_cert }
        } else {
            // Paths in the config file are relative to the file.
            let cert = cli.cert.or_else(|| file.cert.as_ref().map(|p| base.join(p)));
            let key = cli.key.or_else(|| file.key.as_ref().map(|p| base.join(p)));
            match (cert, key) {
                (Some(cert), Some(key)) => Identity::Files { cert, key },
                (None, None) => bail!(
                    "no certificate: pass --cert and --key (PEM files), or --dev to generate a development certificate"
                ),
                (Some(_), None) => bail!("a certificate was given without its key: pass --key too"),
                (None, Some(_)) => bail!("a key was given without its certificate: pass --cert too"),
            }
        };
        let default_listen = DEFAULT_LISTEN.parse().context("default listen address")?;
        let listen = cli.listen.or(file.listen).unwrap_or(default_listen);
        let http = cli.http.or(file.http);
        let threads = cli.threads.or(file.threads);
        let live = live(&cli.limits, file)?;
        Ok(Settings { listen, identity, http, threads, live, config_path: cli.config, flags: cli.limits, start_only })
    }

    /// Re-reads the config file (what SIGHUP does): the new tokens, bans and
    /// limits, with the limit flags still overriding the file, and the keys
    /// that changed but only take effect at start. An error leaves nothing
    /// changed.
    pub(crate) fn reload(&self) -> anyhow::Result<(Live, Vec<&'static str>)> {
        let Some(path) = &self.config_path else { bail!("no --config file to reload") };
        let file = read_file(path)?;
        let now = StartOnly::of(&file);
        let mut ignored = Vec::new();
        let old = &self.start_only;
        for (key, changed) in [
            ("listen", now.listen != old.listen),
            ("cert", now.cert != old.cert),
            ("key", now.key != old.key),
            ("http", now.http != old.http),
            ("threads", now.threads != old.threads),
        ] {
            if changed {
                ignored.push(key);
            }
        }
        Ok((live(&self.flags, file)?, ignored))
    }
}

/// Flags win over the file, the file over the defaults.
fn registry_config(flags: &LimitFlags, file: &LimitFlags) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    macro_rules! pick {
        ($($field:ident),* ; $($count:ident),*) => {
            $(if let Some(value) = flags.$field.or(file.$field) { config.$field = value; })*
            $(if let Some(value) = flags.$count.or(file.$count) { config.$count = value.get(); })*
        };
    }
    pick!(heartbeat_interval, update_interval, entry_ttl, handshake_timeout, max_tombstones;
          max_blob_size, max_publishers_per_ip, max_browsers_per_ip, max_publishers, max_browsers,
          max_handshakes, max_namespaces, max_namespace_len, max_token_len);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("metaserve-settings-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metaserve.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("metaserve-daemon").chain(args.iter().copied()))?;
        Settings::load(cli)
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let path = write(
            "override",
            r#"
            listen = "127.0.0.1:4000"
            cert = "cert.pem"
            key = "key.pem"
            [limits]
            max_blob_size = 1000
            entry_ttl = "45s"
            [namespaces.quake3]
            tokens = ["sesame"]
            "#,
        );
        let settings = load(&["--config", path.to_str().unwrap(), "--max-blob-size", "2000"]).unwrap();
        assert_eq!(settings.live.registry.max_blob_size, 2000);
        assert_eq!(settings.live.registry.entry_ttl, std::time::Duration::from_secs(45));
        assert_eq!(settings.live.registry.max_publishers_per_ip, RegistryConfig::default().max_publishers_per_ip);
        assert_eq!(settings.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(settings.live.tokens["quake3"], ["sesame"]);
        match settings.identity {
            Identity::Files { cert, .. } => {
                assert_eq!(cert, path.parent().unwrap().join("cert.pem"))
            }
            Identity::Dev { .. } => panic!("expected files"),
        }
    }

    #[test]
    fn config_errors_name_the_file_and_line() {
        let path = write("badkey", "listen = \"127.0.0.1:4000\"\n[limits]\nmax_blob_sise = 10\n");
        let err = format!("{:#}", load(&["--dev", "--config", path.to_str().unwrap()]).unwrap_err());
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_blob_sise"), "{err}");

        let path = write("badduration", "[limits]\nentry_ttl = \"soon\"\n");
        let err = format!("{:#}", load(&["--dev", "--config", path.to_str().unwrap()]).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("metaserve.example.toml");
        let settings = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(settings.live.registry, RegistryConfig::default());
        assert_eq!(settings.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(settings.live.tokens.is_empty());
    }

    #[test]
    fn bans_parse_and_errors_name_their_line() {
        let path = write(
            "bans",
            r#"
            http = "127.0.0.1:8080"
            [[bans]]
            address = "192.0.2.0/24"
            reason = "fake servers"
            [[bans]]
            address = "[2001:db8::1]:27960"
            reason = "one port"
            expires = "2030-01-01T00:00:00Z"
            "#,
        );
        let settings = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(settings.http, Some("127.0.0.1:8080".parse().unwrap()));
        let bans = &settings.live.bans;
        assert_eq!(bans.len(), 2);
        assert_eq!(bans[0].target.to_string(), "192.0.2.0/24");
        assert_eq!(bans[0].expires, None);
        assert_eq!(bans[1].target.to_string(), "[2001:db8::1]:27960");
        let expiry = bans[1].expires.unwrap();
        let now = (Instant::now(), SystemTime::now());
        assert!(bans[1].to_ban(now.0, now.1).unwrap().is_active(now.0));
        // Past its expiry, the ban is dropped.
        assert!(bans[1].to_ban(now.0, expiry + std::time::Duration::from_secs(1)).is_none());

        for (name, text, wanted) in [
            ("badtarget", "[[bans]]\naddress = \"example.com\"\nreason = \"x\"\n", "invalid ban target"),
            ("noreason", "[[bans]]\naddress = \"192.0.2.1\"\nreason = \" \"\n", "needs a reason"),
            ("badexpiry", "[[bans]]\naddress = \"192.0.2.1\"\nreason = \"x\"\nexpires = \"soon\"\n", "2030"),
            ("missing", "[[bans]]\naddress = \"192.0.2.1\"\n", "reason"),
        ] {
            let path = write(name, text);
            let err = format!("{:#}", load(&["--dev", "--config", path.to_str().unwrap()]).unwrap_err());
            assert!(err.contains(wanted) && err.contains("line"), "{name}: {err}");
        }
    }

    #[test]
    fn threads_come_from_the_flag_then_the_file() {
        assert_eq!(load(&["--dev"]).unwrap().threads, None, "default: tokio's, one per CPU");
        let path = write("threads", "threads = 3\n");
        let from_file = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(from_file.threads.map(NonZeroUsize::get), Some(3));
        let flag_wins = load(&["--dev", "--config", path.to_str().unwrap(), "--threads", "1"]).unwrap();
        assert_eq!(flag_wins.threads.map(NonZeroUsize::get), Some(1));
        assert!(load(&["--dev", "--threads", "0"]).is_err(), "zero threads is refused");
        std::fs::write(&path, "threads = 2\n").unwrap();
        let (_, ignored) = from_file.reload().unwrap();
        assert_eq!(ignored, ["threads"], "the thread count needs a restart");
    }

    #[test]
    fn reload_rereads_live_settings_and_reports_start_only_keys() {
        let path = write("reload", "[limits]\nmax_blob_size = 1000\n");
        let settings = load(&["--dev", "--config", path.to_str().unwrap(), "--entry-ttl", "5s"]).unwrap();
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[limits]\nmax_blob_size = 2000\nentry_ttl = \"9s\"\n\
             [namespaces.q3]\ntokens = [\"t\"]\n[[bans]]\naddress = \"192.0.2.1\"\nreason = \"r\"\n",
        )
        .unwrap();
        let (live, ignored) = settings.reload().unwrap();
        assert_eq!(live.registry.max_blob_size, 2000);
        assert_eq!(live.registry.entry_ttl, std::time::Duration::from_secs(5), "flags still win");
        assert_eq!(live.tokens["q3"], ["t"]);
        assert_eq!(live.bans.len(), 1);
        assert_eq!(ignored, ["listen"]);
        std::fs::write(&path, "[limits]\nmax_blob_size = \"big\"\n").unwrap();
        let err = format!("{:#}", settings.reload().unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        let without = load(&["--dev"]).unwrap();
        assert!(without.reload().is_err());
    }

    #[test]
    fn missing_certificate_is_explained() {
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("--dev"), "{err}");
        assert!(load(&["--cert", "c.pem"]).is_err());
        assert!(load(&["--dev", "--cert", "c.pem", "--key", "k.pem"]).is_err());
    }
}
