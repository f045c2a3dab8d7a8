//! `metaserve-daemon`: the metaserve meta server.
//!
//! ```text
//! metaserve-daemon --dev                              # development certificate
//! metaserve-daemon --cert cert.pem --key key.pem      # production
//! metaserve-daemon --config /etc/metaserve.toml       # settings, tokens and bans from a file
//! metaserve-daemon --dev --http 127.0.0.1:8080        # plus the operator HTTP API and status page
//! ```
//!
//! See `metaserve-daemon --help` and the README's "Operating" section.

#![forbid(unsafe_code)]

mod cli;
mod http;
mod metrics;
mod settings;

use std::io::{IsTerminal as _, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use metaserve_daemon::announce;
use metaserve_tokio::{tls, Ban, MetaServerHandle, RegistryConfig};
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;
use crate::metrics::Reloads;
use crate::settings::{Identity, Live, Settings};

/// How long the HTTP server may take to finish its requests after the meta
/// server stopped.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: in a log file or the
        // journal they are noise (and NO_COLOR asks for none anywhere).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let run = || -> anyhow::Result<()> {
        let settings = Settings::load(cli)?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = settings.threads {
            builder.worker_threads(threads.get());
        }
        let runtime = builder.enable_all().build().context("cannot start the async runtime")?;
        // The HTTP API gets threads of its own: its work (serializing lists,
        // writing megabytes to many clients) never queues behind or ahead of
        // the QUIC path's tasks.
        let http_runtime = match settings.http {
            Some(_) => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(settings.http_limits.threads.get())
                    .thread_name("metaserve-http")
                    .enable_all()
                    .build()
                    .context("cannot start the HTTP runtime")?,
            ),
            None => None,
        };
        let served = runtime.block_on(serve(settings, http_runtime.as_ref().map(|r| r.handle().clone())));
        if let Some(http_runtime) = http_runtime {
            // What outlived HTTP_SHUTDOWN_GRACE is dropped, not waited for.
            http_runtime.shutdown_background();
        }
        served
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, http_runtime: Option<tokio::runtime::Handle>) -> anyhow::Result<()> {
    let clock = http::Clock::now();
    let signal_streams = Signals::register();
    let (certs, key, dev) = match &settings.identity {
        Identity::Files { cert, key } => (tls::load_certs(cert)?, tls::load_key(key)?, None),
        Identity::Dev { write_to } => {
            let (dev, reused) = dev_identity(write_to)?;
            let (cert, key) = (dev.cert.clone(), dev.key.clone_key());
            (vec![cert], key, Some((dev, reused)))
        }
    };
    let server_config =
        tls::server_config(certs.clone(), key.clone_key(), &settings.live.registry).with_context(|| match &settings
            .identity
        {
            Identity::Files { cert, key } => {
                format!("certificate {} and key {} cannot be used together", cert.display(), key.display())
            }
            Identity::Dev { .. } => "development certificate unusable".to_owned(),
        })?;
    let (socket, buffers) = metaserve_tokio::udp_socket(settings.listen, settings.udp_buffer)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    if buffers.is_capped() {
        tracing::warn!(
            requested = buffers.requested,
            receive = buffers.receive,
            send = buffers.send,
            "the kernel granted smaller UDP buffers than asked for: bursts may overflow the receive queue \
             (on Linux, raise net.core.rmem_max and net.core.wmem_max)"
        );
    } else {
        tracing::debug!(receive = buffers.receive, send = buffers.send, "UDP socket buffers");
    }
    // The stateless-reset key follows the private key, so that a restarted
    // daemon resets its predecessor's connections and their clients reconnect at once.
    let endpoint = metaserve_tokio::server_endpoint_with(socket, tls::endpoint_config(&key), server_config)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = endpoint.local_addr().context("reading the bound address")?;
    let http_listener = match (settings.http, &http_runtime) {
        (Some(http), Some(runtime)) => {
            // Bound on the HTTP runtime, whose reactor then drives it and every connection it accepts.
            let bound = runtime.spawn(tokio::net::TcpListener::bind(http)).await.context("the HTTP runtime failed")?;
            Some(bound.with_context(|| format!("cannot listen for HTTP on {http}"))?)
        }
        _ => None,
    };

    let server = metaserve_tokio::meta_server(settings.live.registry.clone());
    let handle = server.handle();
    apply(&handle, None, &settings.live);
    tracing::info!(
        %addr,
        namespaces_with_tokens = settings.live.tokens.len(),
        bans = settings.live.bans.len(),
        "listening"
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}{addr}", announce::LISTENING)?;
    let reloads = Arc::new(Reloads::default());
    let mut http_task = None;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let (Some(listener), Some(runtime)) = (http_listener, &http_runtime) {
        let http_addr = listener.local_addr().context("reading the bound HTTP address")?;
        writeln!(out, "{}{http_addr}", announce::HTTP)?;
        let limits = settings.http_limits;
        tracing::info!(
            %http_addr,
            threads = limits.threads.get(),
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_connections_per_ip,
            header_timeout = ?limits.header_timeout,
            idle_timeout = ?limits.idle_timeout,
            "HTTP API, metrics and status page at http://{http_addr}/"
        );
        let state = http::Http::new(handle.clone(), clock, reloads.clone());
        http_task = Some(runtime.spawn(http::serve(listener, state, limits, async move {
            let _ = http_stopped.await;
        })));
    }
    if let (Some((dev, reused)), Identity::Dev { write_to }) = (&dev, &settings.identity) {
        print_dev_instructions(&mut out, addr, write_to, *reused, &dev.fingerprint)?;
    }
    out.flush()?;
    drop(out);

    // New transport settings (the frame size follows the limits) for new connections.
    let transport = {
        let endpoint = endpoint.clone();
        move |config: &RegistryConfig| -> anyhow::Result<()> {
            let server_config = tls::server_config(certs.clone(), key.clone_key(), config)?;
            endpoint.set_server_config(Some(server_config));
            Ok(())
        }
    };
    tokio::spawn(signals(signal_streams, handle, settings, reloads, transport));
    server.serve(endpoint).await;
    if let Some(task) = http_task {
        let _ = stop_http.send(());
        match tokio::time::timeout(HTTP_SHUTDOWN_GRACE, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}"),
            Err(_) => tracing::warn!("HTTP requests still running after {HTTP_SHUTDOWN_GRACE:?}: dropped"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Puts `new` in force: limits, publish tokens (namespaces no longer listed
/// lose theirs), and bans, which close open connections they cover.
fn apply(handle: &MetaServerHandle, old: Option<&Live>, new: &Live) -> usize {
    if old.is_some_and(|old| old.registry != new.registry) {
        handle.set_config(new.registry.clone());
    }
    handle.set_connection_limits(new.connections);
    if let Some(old) = old {
        for namespace in old.tokens.keys().filter(|ns| !new.tokens.contains_key(*ns)) {
            handle.set_publish_tokens::<&str>(namespace, []);
        }
    }
    for (namespace, tokens) in &new.tokens {
        handle.set_publish_tokens(namespace, tokens);
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    let bans: Vec<Ban> = new
        .bans
        .iter()
        .filter_map(|b| {
            let ban = b.to_ban(now, wall);
            if ban.is_none() {
                tracing::info!(address = %b.target, reason = %b.reason, "ban already expired: ignored");
            }
            ban
        })
        .collect();
    let banned = handle.set_bans(bans);
    if banned > 0 {
        tracing::info!(connections = banned, "closed connections from newly banned addresses");
    }
    banned
}

/// Waits for signals: SIGHUP reloads the config file, SIGINT or SIGTERM
/// shut the server down.
async fn signals(
    mut signals: Signals,
    handle: MetaServerHandle,
    settings: Settings,
    reloads: Arc<Reloads>,
    transport: impl Fn(&RegistryConfig) -> anyhow::Result<()>,
) {
    let mut live = settings.live.clone();
    loop {
        match signals.next().await {
            Signal::Shutdown => break,
            Signal::Reload => match settings.reload() {
                Ok((new, ignored)) => {
                    for key in ignored {
                        tracing::warn!(key, "config reload: this key changed but only takes effect at a restart");
                    }
                    if live.restricts() && !new.restricts() {
                        reloads.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            bans = live.bans.len(),
                            namespaces_with_tokens = live.tokens.values().filter(|t| !t.is_empty()).count(),
                            "config reload rejected, the previous config stays in force: the file would lift every \
                             ban and publish token at once, which a truncated file does; to run without any, \
                             restart the daemon with it"
                        );
                        continue;
                    }
                    if new.registry != live.registry {
                        if let Err(e) = transport(&new.registry) {
                            reloads.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("config reload rejected, the previous config stays in force: {e:#}");
                            continue;
                        }
                    }
                    live.changes_to(&new).log();
                    let closed = apply(&handle, Some(&live), &new);
                    reloads.succeeded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        namespaces_with_tokens = new.tokens.len(),
                        bans = new.bans.len(),
                        limits_changed = new.registry != live.registry,
                        closed,
                        "config reloaded"
                    );
                    live = new;
                }
                Err(e) => {
                    reloads.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("config reload rejected, the previous config stays in force: {e:#}");
                }
            },
        }
    }
    handle.shutdown();
}

/// The development identity: the certificate and key of an earlier `--dev`
/// run if both files are there and belong together, so that clients pinning
/// its fingerprint keep working across restarts; otherwise a new pair,
/// written to `cert` and its key file. Returns whether it was reused.
fn dev_identity(cert: &std::path::Path) -> anyhow::Result<(tls::DevCertificate, bool)> {
    let key = settings::dev_key_path(cert);
    if cert.exists() && key.exists() {
        match tls::DevCertificate::load(cert, &key) {
            Ok(dev) => return Ok((dev, true)),
            Err(e) => tracing::warn!("cannot reuse the development certificate: {e}; generating a new one"),
        }
    }
    let dev = tls::DevCertificate::generate()?;
    dev.write(cert, &key).with_context(|| {
        format!("cannot write the development certificate to {} and {}", cert.display(), key.display())
    })?;
    Ok((dev, false))
}

fn print_dev_instructions(
    out: &mut impl Write,
    addr: SocketAddr,
    cert: &std::path::Path,
    reused: bool,
    fingerprint: &tls::Fingerprint,
) -> std::io::Result<()> {
    // Clients on this machine reach a wildcard listener through loopback.
    let target = if addr.ip().is_unspecified() { SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())) } else { addr };
    let key = settings::dev_key_path(cert);
    if reused {
        writeln!(out, "development certificate reused from {} (key {})", cert.display(), key.display())?;
    } else {
        writeln!(out, "development certificate written to {} (key {})", cert.display(), key.display())?;
    }
    writeln!(out, "{}{fingerprint}", announce::FINGERPRINT)?;
    writeln!(out, "connect the examples with:")?;
    for example in ["publisher", "browser"] {
        writeln!(
            out,
            "  cargo run -p metaserve-tokio --example {example} -- --server {target} --fingerprint {fingerprint}"
        )?;
    }
    Ok(())
}

enum Signal {
    Shutdown,
    Reload,
}

/// The signals the daemon handles, registered once at start: from then on a
/// SIGHUP can no longer terminate the process (its default action).
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
                (Ok(term), Ok(hup)) => Signals { unix: Some((term, hup)) },
                (term, hup) => {
                    if let Err(e) = term.and(hup) {
                        tracing::warn!("cannot listen for SIGTERM and SIGHUP: {e}");
                    }
                    Signals { unix: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some((term, hup)) = &mut self.unix {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Shutdown,
                _ = term.recv() => Signal::Shutdown,
                _ = hup.recv() => Signal::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Shutdown
    }
}
