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
/// Clients send keep-alives this often, well within [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Transport limits of the meta server's side: one session stream per
/// connection (a second stream is admitted only to be refused with
/// `PROTOCOL_VIOLATION`), receive windows sized to a few frames so a client
/// can never make the server buffer more than that, and a send window of
/// four stream windows (256 KiB with the defaults), which bounds what a
/// browser that stops reading costs the server.
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
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(None);
    transport
}

/// Transport settings for publishers and browsers: keep-alives so an idle
/// session outlives the idle timeout, no streams accepted from the server.
pub fn client_transport() -> quinn_proto::TransportConfig {
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport
}

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
    server.transport_config(Arc::new(server_transport(config)));
    Ok(server)
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
