//! quinn configurations with metaserve's ALPN, transport limits and
//! certificate handling: PEM files, pinned fingerprints, system roots, and
//! generated development certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use metaserve_proto::{RegistryConfig, ALPN};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// rustls refused the certificate, key or settings (e.g. a key that does
    /// not match the certificate).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The TLS configuration cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// Generating a development certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The system's root certificates could not be loaded.
    #[error("loading the system's root certificates: {0}")]
    Platform(String),
}

/// The SHA-256 fingerprint of a DER certificate, written as 32 hex bytes
/// separated by colons (the form `openssl x509 -fingerprint -sha256` prints).
///
/// ```
/// use metaserve_quinn::tls::Fingerprint;
/// let fp = Fingerprint::of(b"not really a certificate");
/// let text = fp.to_string();
/// assert_eq!(text.len(), 32 * 3 - 1);
/// assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
/// // Without colons and in lower case is accepted too.
/// assert_eq!(text.replace(':', "").to_lowercase().parse::<Fingerprint>().unwrap(), fp);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint string that is not 32 hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a SHA-256 fingerprint is 64 hex digits, optionally separated by colons")]
pub struct InvalidFingerprint;

impl FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(InvalidFingerprint);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| InvalidFingerprint)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| InvalidFingerprint)?;
        }
        Ok(Fingerprint(out))
    }
}

/// A self-signed certificate for development, valid for `localhost`,
/// `127.0.0.1` and `::1`.
pub struct DevCertificate {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its private key, DER.
    pub key: PrivateKeyDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// SHA-256 fingerprint of the certificate, for pinning.
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for DevCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCertificate").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl DevCertificate {
    /// Generates a fresh key pair and certificate.
    pub fn generate() -> Result<Self, TlsError> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)?;
        let cert_der = cert.der().clone();
        Ok(DevCertificate {
            fingerprint: Fingerprint::of(&cert_der),
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            key: PrivateKeyDer::Pkcs8(key_pair.serialize_der().into()),
            cert: cert_der,
        })
    }

    /// Reads a certificate and its private key written by
    /// [`DevCertificate::write`] (or any PEM pair), checking that the key
    /// belongs to the certificate.
    ///
    /// ```
    /// use metaserve_quinn::tls::DevCertificate;
    /// let dir = std::env::temp_dir().join(format!("metaserve-doc-dev-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let (cert, key) = (dir.join("cert.pem"), dir.join("cert-key.pem"));
    /// let dev = DevCertificate::generate().unwrap();
    /// dev.write(&cert, &key).unwrap();
    /// assert_eq!(DevCertificate::load(&cert, &key).unwrap().fingerprint, dev.fingerprint);
    /// // Another certificate's key does not belong to it.
    /// DevCertificate::generate().unwrap().write(&dir.join("other.pem"), &key).unwrap();
    /// assert!(DevCertificate::load(&cert, &key).is_err());
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem =
            std::fs::read_to_string(cert).map_err(|e| TlsError::Pem { path: cert.to_owned(), what: e.to_string() })?;
        let key_pem =
            std::fs::read_to_string(key).map_err(|e| TlsError::Pem { path: key.to_owned(), what: e.to_string() })?;
        let mut certs = load_certs(cert)?;
        let key_der = load_key(key)?;
        // Refuses a key that does not match the certificate's public key.
        rustls::sign::CertifiedKey::from_der(certs.clone(), key_der.clone_key(), &provider())?;
        let cert_der = certs.swap_remove(0);
        Ok(DevCertificate { fingerprint: Fingerprint::of(&cert_der), cert: cert_der, key: key_der, cert_pem, key_pem })
    }

    /// Writes the certificate to `cert` and its private key to `key` (PEM);
    /// on Unix the key file is readable by its owner only.
    pub fn write(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
        std::fs::write(cert, &self.cert_pem)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(key)?, self.key_pem.as_bytes())
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |what: String| TlsError::Pem { path: path.to_owned(), what };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads the private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem { path: path.to_owned(), what: e.to_string() })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Idle connections are closed after this long without any packet.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients send a keep-alive PING after this long without sending anything.
///
/// Besides keeping the session within [`IDLE_TIMEOUT`], the PING is how an
/// idle client (a browser in a quiet namespace) learns that the meta server
/// restarted: the new process answers it with a stateless reset (see
/// [`endpoint_config`]), so the client notices within this interval instead
/// of at its idle timeout. It costs one small packet each way per interval
/// and idle client; raise it on the returned [`client_transport`] for
/// clients that need not notice quickly.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// The meta server sends a keep-alive PING after this long without sending
/// anything, on every connection.
///
/// A client therefore needs to send nothing to stay connected: each PING
/// resets its idle timer, and its acknowledgement resets the server's. A
/// client needs an idle timeout above this interval plus a round trip (15 s
/// is plenty); the server's own is [`IDLE_TIMEOUT`]. A client that has gone
/// away sends no acknowledgements, so the server still drops it at its idle
/// timeout. It costs one small packet each way per interval and quiet
/// connection: 1,000 packets a second for 10,000 idle browsers.
pub const SERVER_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Out-of-order CRYPTO data (the TLS handshake) a peer may make the server
/// buffer per connection. A ClientHello with post-quantum key shares fits.
pub const CRYPTO_BUFFER: usize = 16 * 1024;

/// Transport limits of the meta server's side. Every buffer a peer can fill
/// without the application reading it is bounded here:
///
/// - **DATAGRAM frames are not offered** (the protocol uses none): a peer
///   that sends one anyway is closed by QUIC with `PROTOCOL_VIOLATION`, so
///   no datagram is ever buffered.
/// - **Streams**: one session stream per connection (a second bidirectional
///   or a unidirectional stream is admitted only to be refused with
///   `PROTOCOL_VIOLATION`); receive windows are sized to a few frames
///   (`4 × max_frame_size`, at least 64 KiB, per stream; twice that per
///   connection), so a client can never make the server buffer more.
/// - **CRYPTO**: [`CRYPTO_BUFFER`] of out-of-order handshake data.
/// - **Sending**: a send window of four stream windows (256 KiB with the
///   defaults), which bounds what a browser that stops reading costs the
///   server.
///
/// Liveness: idle connections are closed after [`IDLE_TIMEOUT`]; the server
/// sends keep-alives every [`SERVER_KEEP_ALIVE_INTERVAL`], so a client that
/// sends nothing of its own stays connected.
pub fn server_transport(config: &RegistryConfig) -> quinn_proto::TransportConfig {
    let window = (4 * config.max_frame_size()).max(64 * 1024) as u32;
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(1u32.into())
        .stream_receive_window(window.into())
        .receive_window((2 * window).into())
        // Unacknowledged and unsent stream data quinn keeps per connection: a
        // browser that stops reading pins at most this much of the server's
        // memory (the registry itself holds only its cursor).
        .send_window(u64::from(4 * window))
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .crypto_buffer_size(CRYPTO_BUFFER)
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(SERVER_KEEP_ALIVE_INTERVAL));
    transport
}

/// Transport settings for publishers and browsers: keep-alives every
/// [`KEEP_ALIVE_INTERVAL`], no streams and no datagrams accepted from the
/// server.
pub fn client_transport() -> quinn_proto::TransportConfig {
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport
}

/// Bytes of packets quinn keeps for one connection attempt that the server
/// has not yet accepted or refused, beyond its first packet (the driver
/// decides on each attempt as it arrives, so this only needs to hold the
/// rest of a ClientHello).
pub const INCOMING_BUFFER: u64 = 64 * 1024;
/// Bytes of such packets kept for all undecided attempts together.
pub const INCOMING_BUFFER_TOTAL: u64 = 8 << 20;
/// Connection attempts quinn holds before the server decides on them; more
/// are refused by quinn itself.
pub const MAX_INCOMING: usize = 4096;

/// A meta server configuration: ALPN `metaserve/1`, TLS 1.3, the given
/// certificate chain and key, and [`server_transport`].
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    config: &RegistryConfig,
) -> Result<quinn_proto::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(quic));
    server
        .transport_config(Arc::new(server_transport(config)))
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(server)
}

/// The labels that make the keys of [`endpoint_config`] independent of
/// every other use of the server's private key, and of each other.
const RESET_KEY_LABEL: &[u8] = b"metaserve stateless reset key v1";
const CID_KEY_LABEL: &[u8] = b"metaserve connection id key v1";

/// An endpoint configuration that lets a restarted server end its
/// predecessor's connections at once: its stateless-reset key and the key
/// its connection IDs are signed with are derived from the server's TLS
/// private key (HKDF-SHA256 over its DER encoding, one label each).
///
/// A QUIC server answers a packet for a connection it does not know with a
/// stateless reset only if the packet's connection ID carries its own
/// signature (quinn drops others unanswered, as non-QUIC noise), and the
/// client accepts the reset only if its token, computed from the reset key
/// and that ID, is the one the client was given. With quinn's defaults both
/// keys are random per process: a restarted server cannot reset its
/// predecessor's connections, and their clients hang until their idle
/// timeout. With keys derived from the private key, the restarted server
/// resets them at their next packet (a keep-alive, at most
/// [`KEEP_ALIVE_INTERVAL`] later), so they reconnect. Anyone holding the
/// private key can forge resets, which is no new power: they can
/// impersonate the server anyway.
///
/// ```
/// # use metaserve_quinn::tls::{endpoint_config, DevCertificate};
/// let dev = DevCertificate::generate().unwrap();
/// let config = endpoint_config(&dev.key);
/// # let _ = config;
/// ```
pub fn endpoint_config(key: &PrivateKeyDer<'_>) -> quinn_proto::EndpointConfig {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"metaserve endpoint").extract(key.secret_der());
    // `expand` fails only for outputs over 255 × 32 bytes.
    let reset = prk
        .expand(&[RESET_KEY_LABEL], ring::hmac::HMAC_SHA256)
        .map(ring::hmac::Key::from)
        .unwrap_or_else(|_| unreachable!("a 32-byte HKDF output is always available"));
    let mut cid_key = [0u8; 8];
    prk.expand(&[CID_KEY_LABEL], CidKeyLen)
        .and_then(|okm| okm.fill(&mut cid_key))
        .unwrap_or_else(|_| unreachable!("an 8-byte HKDF output is always available"));
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn_proto::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// The output length of the connection-ID key's HKDF expansion.
struct CidKeyLen;

impl ring::hkdf::KeyType for CidKeyLen {
    fn len(&self) -> usize {
        8
    }
}

fn client_from_tls(mut tls: rustls::ClientConfig) -> Result<quinn_proto::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut client = quinn_proto::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(client_transport()));
    Ok(client)
}

/// A client configuration trusting the certificates (or CA) in a PEM file.
/// The server name passed to `connect` must match the certificate.
pub fn client_config_with_ca(path: &Path) -> Result<quinn_proto::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_from_tls(tls)
}

/// A client configuration trusting the system's certificate roots, for a
/// meta server with a publicly trusted certificate.
pub fn client_config_with_system_roots() -> Result<quinn_proto::ClientConfig, TlsError> {
    let provider = provider();
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| TlsError::Platform(e.to_string()))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    client_from_tls(tls)
}

/// A client configuration that accepts exactly one server certificate,
/// identified by its SHA-256 fingerprint, whatever its name or issuer.
/// Suited to self-signed meta servers (see [`DevCertificate`]).
pub fn client_config_pinned(fingerprint: Fingerprint) -> Result<quinn_proto::ClientConfig, TlsError> {
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate { fingerprint, provider }))
        .with_no_client_auth();
    client_from_tls(tls)
}

#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
