//! Settings from flags, the config file and defaults, validated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use metaserve_tokio::RegistryConfig;
use serde::Deserialize;

use crate::cli::{Cli, LimitFlags};

/// The `--config` file. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    limits: LimitFlags,
    namespaces: BTreeMap<String, NamespaceConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NamespaceConfig {
    /// Publishers of this namespace must present one of these.
    tokens: Vec<String>,
}

/// Where the TLS identity comes from.
#[derive(Debug)]
pub(crate) enum Identity {
    Files { cert: PathBuf, key: PathBuf },
    Dev { write_to: PathBuf },
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) identity: Identity,
    pub(crate) registry: RegistryConfig,
    pub(crate) tokens: BTreeMap<String, Vec<String>>,
}

pub(crate) const DEFAULT_LISTEN: &str = "[::]:27950";

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    // toml's message names the line and column and quotes the offending text.
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

impl Settings {
    pub(crate) fn load(cli: Cli) -> anyhow::Result<Settings> {
        let (file, base) = match &cli.config {
            Some(path) => (read_file(path)?, path.parent().map(Path::to_owned).unwrap_or_default()),
            None => (FileConfig::default(), PathBuf::new()),
        };
        let identity = if cli.dev {
            Identity::Dev { write_to: cli.dev_cert }
        } else {
            // Paths in the config file are relative to the file.
            let cert = cli.cert.or_else(|| file.cert.map(|p| base.join(p)));
            let key = cli.key.or_else(|| file.key.map(|p| base.join(p)));
            match (cert, key) {
                (Some(cert), Some(key)) => Identity::Files { cert, key },
                (None, None) => bail!(
                    "no certificate: pass --cert and --key (PEM files), or --dev to generate a development certificate"
                ),
                (Some(_), None) => bail!("a certificate was given without its key: pass --key too"),
                (None, Some(_)) => bail!("a key was given without its certificate: pass --cert too"),
            }
        };
        let registry = registry_config(&cli.limits, &file.limits);
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
        let default_listen = DEFAULT_LISTEN.parse().context("default listen address")?;
        Ok(Settings { listen: cli.listen.or(file.listen).unwrap_or(default_listen), identity, registry, tokens })
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
        assert_eq!(settings.registry.max_blob_size, 2000);
        assert_eq!(settings.registry.entry_ttl, std::time::Duration::from_secs(45));
        assert_eq!(settings.registry.max_publishers_per_ip, RegistryConfig::default().max_publishers_per_ip);
        assert_eq!(settings.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(settings.tokens["quake3"], ["sesame"]);
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
        assert_eq!(settings.registry, RegistryConfig::default());
        assert_eq!(settings.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(settings.tokens.is_empty());
    }

    #[test]
    fn missing_certificate_is_explained() {
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("--dev"), "{err}");
        assert!(load(&["--cert", "c.pem"]).is_err());
        assert!(load(&["--dev", "--cert", "c.pem", "--key", "k.pem"]).is_err());
    }
}
