//! `metaserve-daemon`: the metaserve meta server.
//!
//! ```text
//! metaserve-daemon --dev                              # development certificate
//! metaserve-daemon --cert cert.pem --key key.pem      # production
//! metaserve-daemon --config /etc/metaserve.toml       # settings and tokens from a file
//! ```
//!
//! See `metaserve-daemon --help` and the README's "Operating" notes.

#![forbid(unsafe_code)]

mod cli;
mod settings;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use metaserve_tokio::{tls, MetaServer};
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;
use crate::settings::{Identity, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let run = || -> anyhow::Result<()> {
        let settings = Settings::load(cli)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(serve(settings))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let (certs, key, dev) = match &settings.identity {
        Identity::Files { cert, key } => (tls::load_certs(cert)?, tls::load_key(key)?, None),
        Identity::Dev { write_to } => {
            let dev = tls::DevCertificate::generate()?;
            std::fs::write(write_to, &dev.cert_pem)
                .with_context(|| format!("cannot write the development certificate to {}", write_to.display()))?;
            let (cert, key) = (dev.cert.clone(), dev.key.clone_key());
            (vec![cert], key, Some(dev))
        }
    };
    let server_config =
        tls::server_config(certs, key, &settings.registry).with_context(|| match &settings.identity {
            Identity::Files { cert, key } => {
                format!("certificate {} and key {} cannot be used together", cert.display(), key.display())
            }
            Identity::Dev { .. } => "development certificate unusable".to_owned(),
        })?;
    let endpoint = metaserve_tokio::server_endpoint(settings.listen, server_config)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = endpoint.local_addr().context("reading the bound address")?;

    let server = MetaServer::new(settings.registry);
    let handle = server.handle();
    for (namespace, tokens) in &settings.tokens {
        handle.set_publish_tokens(namespace, tokens);
    }
    tracing::info!(%addr, namespaces_with_tokens = settings.tokens.len(), "listening");
    let mut out = std::io::stdout().lock();
    writeln!(out, "metaserve listening on {addr}")?;
    if let (Some(dev), Identity::Dev { write_to }) = (&dev, &settings.identity) {
        print_dev_instructions(&mut out, addr, write_to, &dev.fingerprint)?;
    }
    out.flush()?;
    drop(out);

    tokio::spawn(async move {
        shutdown_signal().await;
        handle.shutdown();
    });
    server.serve(endpoint).await;
    tracing::info!("stopped");
    Ok(())
}

fn print_dev_instructions(
    out: &mut impl Write,
    addr: SocketAddr,
    cert: &std::path::Path,
    fingerprint: &tls::Fingerprint,
) -> std::io::Result<()> {
    // Clients on this machine reach a wildcard listener through loopback.
    let target = if addr.ip().is_unspecified() { SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())) } else { addr };
    writeln!(out, "development certificate written to {}", cert.display())?;
    writeln!(out, "SHA-256 fingerprint: {fingerprint}")?;
    writeln!(out, "connect the examples with:")?;
    for example in ["publisher", "browser"] {
        writeln!(
            out,
            "  cargo run -p metaserve-tokio --example {example} -- --server {target} --fingerprint {fingerprint}"
        )?;
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
