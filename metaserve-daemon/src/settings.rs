//! Settings from flags, the config file and defaults, validated; and the
//! part of them that SIGHUP re-reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use metaserve_tokio::{Ban, BanTarget, ConnectionLimits, RegistryConfig};
use serde::{Deserialize, Deserializer};

use crate::cli::{Cli, HttpLimitFlags, LimitFlags};
use crate::http::HttpConfig;

/// The `--config` file. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http: Option<SocketAddr>,
    threads: Option<NonZeroUsize>,
    udp_buffer: Option<NonZeroUsize>,
    limits: LimitFlags,
    http_limits: HttpLimitFlags,
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
    pub(crate) connections: ConnectionLimits,
    pub(crate) tokens: BTreeMap<String, Vec<String>>,
    pub(crate) bans: Vec<BanSetting>,
}

impl Live {
    /// Whether any access control is in force: a ban, or a namespace that
    /// requires a publish token.
    pub(crate) fn restricts(&self) -> bool {
        !self.bans.is_empty() || self.tokens.values().any(|tokens| !tokens.is_empty())
    }

    /// What putting `new` in force changes in access control, for the log.
    pub(crate) fn changes_to(&self, new: &Live) -> AccessChanges {
        let mut changes = AccessChanges::default();
        for ban in &new.bans {
            if !self.bans.contains(ban) {
                changes.bans_added.push(ban.clone());
            }
        }
        for ban in &self.bans {
            if !new.bans.contains(ban) {
                changes.bans_lifted.push(ban.clone());
            }
        }
        let namespaces: std::collections::BTreeSet<&String> = self.tokens.keys().chain(new.tokens.keys()).collect();
        for namespace in namespaces {
            let empty = Vec::new();
            let old = self.tokens.get(namespace).unwrap_or(&empty);
            let now = new.tokens.get(namespace).unwrap_or(&empty);
            match (old.is_empty(), now.is_empty()) {
                (true, false) => changes.tokens_required.push(namespace.clone()),
                (false, true) => changes.tokens_lifted.push(namespace.clone()),
                (false, false) if old != now => changes.tokens_changed.push(namespace.clone()),
                _ => {}
            }
        }
        changes
    }
}

/// The access-control difference between two [`Live`] settings.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AccessChanges {
    pub(crate) bans_added: Vec<BanSetting>,
    pub(crate) bans_lifted: Vec<BanSetting>,
    /// Namespaces that now require a publish token.
    pub(crate) tokens_required: Vec<String>,
    /// Namespaces that no longer do: anyone may publish there.
    pub(crate) tokens_lifted: Vec<String>,
    /// Namespaces whose set of accepted tokens changed.
    pub(crate) tokens_changed: Vec<String>,
}

impl AccessChanges {
    /// Logs each change: those that widen access as warnings.
    pub(crate) fn log(&self) {
        for ban in &self.bans_added {
            tracing::info!(address = %ban.target, reason = %ban.reason, "reload: ban added");
        }
        for ban in &self.bans_lifted {
            tracing::warn!(address = %ban.target, reason = %ban.reason, "reload: ban lifted");
        }
        for namespace in &self.tokens_required {
            tracing::info!(%namespace, "reload: publish token now required");
        }
        for namespace in &self.tokens_lifted {
            tracing::warn!(%namespace, "reload: publish token no longer required: anyone may publish");
        }
        for namespace in &self.tokens_changed {
            tracing::info!(%namespace, "reload: publish tokens changed");
        }
    }
}

/// The file's keys that only take effect at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StartOnly {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http: Option<SocketAddr>,
    threads: Option<NonZeroUsize>,
    udp_buffer: Option<NonZeroUsize>,
    http_limits: HttpLimitFlags,
}

impl StartOnly {
    fn of(file: &FileConfig) -> StartOnly {
        StartOnly {
            listen: file.listen,
            cert: file.cert.clone(),
            key: file.key.clone(),
            http: file.http,
            threads: file.threads,
            udp_buffer: file.udp_buffer,
            http_limits: file.http_limits.clone(),
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
    /// UDP socket buffer size to ask for.
    pub(crate) udp_buffer: usize,
    /// The HTTP server's limits (with `http`).
    pub(crate) http_limits: HttpConfig,
    pub(crate) live: Live,
    /// The config file, re-read on SIGHUP.
    pub(crate) config_path: Option<PathBuf>,
    /// Limit flags: they keep overriding the file after a reload.
    flags: LimitFlags,
    start_only: StartOnly,
}

pub(crate) const DEFAULT_LISTEN: &str = "[::]:27950";

/// Where `--dev` keeps the private key of the certificate at `cert`: beside
/// it, `<name>-key.pem` (`metaserve-dev-cert.pem` → `metaserve-dev-cert-key.pem`).
pub(crate) fn dev_key_path(cert: &Path) -> PathBuf {
    let stem = cert.file_stem().map_or_else(|| "metaserve-dev-cert".into(), |s| s.to_string_lossy().into_owned());
    cert.with_file_name(format!("{stem}-key.pem"))
}

/// Whether the file is to be refused when it sets nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Empty {
    Allowed,
    Refused,
}

fn read_file(path: &Path, empty: Empty) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    // An empty file is valid TOML that sets nothing: on a reload it would lift
    // every ban and publish token. It is far likelier a file caught mid-write
    // (or emptied by mistake) than an operator's intent.
    let blank = text.lines().all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    if blank && empty == Empty::Refused {
        bail!("config file {} is empty (only blank lines and comments)", path.display());
    }
    // toml's message names the line and column and quotes the offending text.
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// The reloadable part of the settings: flags over the file over defaults.
fn live(flags: &LimitFlags, file: FileConfig) -> anyhow::Result<Live> {
    let registry = registry_config(flags, &file.limits);
    let connections = connection_limits(flags, &file.limits);
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
    Ok(Live { registry, connections, tokens, bans })
}

impl Settings {
    pub(crate) fn load(cli: Cli) -> anyhow::Result<Settings> {
        let (file, base) = match &cli.config {
            Some(path) => (read_file(path, Empty::Allowed)?, path.parent().map(Path::to_owned).unwrap_or_default()),
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
        let udp_buffer = cli.udp_buffer.or(file.udp_buffer).map_or(metaserve_tokio::UDP_BUFFER, NonZeroUsize::get);
        let http_limits = cli.http_limits.resolve(&file.http_limits);
        let live = live(&cli.limits, file)?;
        Ok(Settings {
            listen,
            identity,
            http,
            threads,
            udp_buffer,
            http_limits,
            live,
            config_path: cli.config,
            flags: cli.limits,
            start_only,
        })
    }

    /// Re-reads the config file (what SIGHUP does): the new tokens, bans and
    /// limits, with the limit flags still overriding the file, and the keys
    /// that changed but only take effect at start. An error leaves nothing
    /// changed.
    pub(crate) fn reload(&self) -> anyhow::Result<(Live, Vec<&'static str>)> {
        let Some(path) = &self.config_path else { bail!("no --config file to reload") };
        let file = read_file(path, Empty::Refused)?;
        let now = StartOnly::of(&file);
        let mut ignored = Vec::new();
        let old = &self.start_only;
        for (key, changed) in [
            ("listen", now.listen != old.listen),
            ("cert", now.cert != old.cert),
            ("key", now.key != old.key),
            ("http", now.http != old.http),
            ("threads", now.threads != old.threads),
            ("udp_buffer", now.udp_buffer != old.udp_buffer),
        ] {
            if changed {
                ignored.push(key);
            }
        }
        ignored.extend(old.http_limits.changed(&now.http_limits));
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
          max_handshakes, max_handshakes_per_ip, max_handshakes_per_network, max_namespaces,
          max_namespace_len, max_token_len);
    config
}

/// Flags win over the file, the file over the defaults.
fn connection_limits(flags: &LimitFlags, file: &LimitFlags) -> ConnectionLimits {
    let mut limits = ConnectionLimits::default();
    if let Some(n) = flags.max_connecting.or(file.max_connecting) {
        limits.max_connecting = n.get();
    }
    if let Some(n) = flags.max_connecting_per_ip.or(file.max_connecting_per_ip) {
        limits.max_connecting_per_ip = n.get();
    }
    if let Some(n) = flags.validate_above.or(file.validate_above) {
        limits.validate_above = n;
    }
    limits
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
        assert_eq!(settings.live.connections, ConnectionLimits::default());
        assert_eq!(settings.udp_buffer, metaserve_tokio::UDP_BUFFER);
        assert_eq!(settings.http_limits, HttpConfig::default());
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
    fn an_empty_file_is_refused_on_reload_and_allowed_at_start() {
        let path = write("empty", "[[bans]]\naddress = \"192.0.2.1\"\nreason = \"r\"\n");
        let settings = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap();
        for empty in ["", "\n  \n", "# everything commented out\n# [[bans]]\n"] {
            std::fs::write(&path, empty).unwrap();
            let err = format!("{:#}", settings.reload().unwrap_err());
            assert!(err.contains("is empty"), "{empty:?}: {err}");
            assert!(load(&["--dev", "--config", path.to_str().unwrap()]).is_ok(), "{empty:?} at start");
        }
    }

    #[test]
    fn access_changes_name_what_a_reload_widens_and_narrows() {
        let path = write(
            "changes",
            "[namespaces.a]\ntokens = [\"x\"]\n[namespaces.b]\ntokens = [\"y\"]\n\
             [[bans]]\naddress = \"192.0.2.1\"\nreason = \"r\"\n",
        );
        let old = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap().live;
        assert!(old.restricts());
        std::fs::write(
            &path,
            "[namespaces.b]\ntokens = [\"z\"]\n[namespaces.c]\ntokens = [\"w\"]\n\
             [[bans]]\naddress = \"192.0.2.2\"\nreason = \"r\"\n",
        )
        .unwrap();
        let new = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap().live;
        let changes = old.changes_to(&new);
        assert_eq!(changes.bans_added.iter().map(|b| b.target.to_string()).collect::<Vec<_>>(), ["192.0.2.2"]);
        assert_eq!(changes.bans_lifted.iter().map(|b| b.target.to_string()).collect::<Vec<_>>(), ["192.0.2.1"]);
        assert_eq!(changes.tokens_lifted, ["a"]);
        assert_eq!(changes.tokens_changed, ["b"]);
        assert_eq!(changes.tokens_required, ["c"]);
        assert_eq!(new.changes_to(&new), AccessChanges::default());
        std::fs::write(&path, "[limits]\nmax_blob_size = 100\n").unwrap();
        let open = load(&["--dev", "--config", path.to_str().unwrap()]).unwrap().live;
        assert!(!open.restricts(), "no ban and no token: the daemon refuses such a reload over one that restricts");
    }

    #[test]
    fn dev_key_sits_beside_the_certificate() {
        assert_eq!(dev_key_path(Path::new("metaserve-dev-cert.pem")), Path::new("metaserve-dev-cert-key.pem"));
        assert_eq!(dev_key_path(Path::new("/tmp/x/cert.pem")), Path::new("/tmp/x/cert-key.pem"));
    }

    #[test]
    fn missing_certificate_is_explained() {
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("--dev"), "{err}");
        assert!(load(&["--cert", "c.pem"]).is_err());
        assert!(load(&["--dev", "--cert", "c.pem", "--key", "k.pem"]).is_err());
    }

    #[test]
    fn http_limits_come_from_flags_then_the_file_and_need_a_restart() {
        // The example file states every key of [http_limits].
        let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("metaserve.example.toml"));
        let example: FileConfig = toml::from_str(&example.unwrap()).unwrap();
        assert_eq!(HttpLimitFlags::default().changed(&example.http_limits).len(), 7, "{:?}", example.http_limits);

        let path = write(
            "http_limits",
            "[http_limits]\nmax_connections = 10\nheader_timeout = \"2s\"\nmax_request_head = 9000\n",
        );
        let settings = load(&["--dev", "--config", path.to_str().unwrap(), "--http-max-connections", "20"]).unwrap();
        let limits = settings.http_limits;
        assert_eq!(limits.max_connections, 20, "the flag wins");
        assert_eq!(limits.header_timeout, std::time::Duration::from_secs(2));
        assert_eq!(limits.max_request_head, 9000);
        assert_eq!(limits.max_connections_per_ip, HttpConfig::default().max_connections_per_ip);

        // Below hyper's smallest buffer: refused, naming the line.
        assert!(load(&["--dev", "--http-max-request-head", "8191"]).is_err());
        let small = write("http_small", "[http_limits]\nmax_request_head = 100\n");
        let err = format!("{:#}", load(&["--dev", "--config", small.to_str().unwrap()]).unwrap_err());
        assert!(err.contains("line 2") && err.contains("8192"), "{err}");

        std::fs::write(&path, "[http_limits]\nmax_connections = 10\nidle_timeout = \"5s\"\n").unwrap();
        let (_, ignored) = settings.reload().unwrap();
        assert_eq!(ignored, ["http_limits.header_timeout", "http_limits.idle_timeout", "http_limits.max_request_head"]);
    }
}
