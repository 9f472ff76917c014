//! TLS for the client and peer listeners and for outgoing connections (rustls with ring,
//! no OpenSSL), configured with etcd's flags.
//!
//! - [`ServerTls`] → [`Listener`]: a listener's certificate, reloaded when its files change
//!   (checked at most once a second, when a connection arrives), so a certificate is
//!   rotated without a restart; with `client_cert_auth`, a client without a certificate
//!   signed by the trusted CA is refused in the handshake.
//! - [`ClientTls`] → a `rustls::ClientConfig`: the CA that signs servers, and the
//!   certificate this process shows when asked for one.
//!
//! Errors name the file and what is wrong with it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// rustls's client configuration, for the crates that hold one without depending on rustls.
pub type ClientConfig = rustls::ClientConfig;

/// A TLS setting that cannot be used, naming the file or flag.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TlsError(pub String);

/// How long a peer may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Certificate files are looked at again at most this often.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// ring, not aws-lc-rs: aws-lc-rs needs cmake and a long C build on every machine that
/// builds flotilla. rustls marks ring's provider deprecated for lacking post-quantum key
/// exchange; etcd 3.4's Go TLS has none either.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = path.display();
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{name}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{name}: not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{name}: no certificate in it")));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError(format!("{}: not a PEM private key: {e}", path.display())))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| TlsError(format!("{}: not a CA certificate: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The certificate and key, checked to belong together.
fn certified_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError(format!("{}: {e}", key_file.display())))?;
    let ck = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    ck.keys_match().map_err(|e| {
        TlsError(format!(
            "{} does not match the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        ))
    })?;
    Ok((certs, key))
}

/// One listener's TLS, as etcd's flags give it (`--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`, or their `--peer-` forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
}

impl ServerTls {
    /// The rustls configuration for these files as they are now.
    pub fn config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let p = provider();
        let builder = ServerConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), auth) => {
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), p);
                let v = if auth { v } else { v.allow_unauthenticated() };
                let v = v
                    .build()
                    .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(v)
            }
            (None, true) => {
                return Err(TlsError(
                    "client certificate authentication needs a trusted CA file".into(),
                ))
            }
            (None, false) => builder.with_no_client_auth(),
        };
        let (certs, key) = certified_key(&self.cert_file, &self.key_file)?;
        let cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("{}: {e}", self.cert_file.display())))?;
        Ok(Arc::new(cfg))
    }

    fn stamps(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(&self.cert_file), m(&self.key_file))
    }
}

struct Current {
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A TLS listener's acceptor, rebuilt when its certificate or key file changes.
pub struct Listener {
    tls: ServerTls,
    cur: Mutex<Current>,
}

impl Listener {
    /// Fails (naming the file) if the files cannot be used now.
    pub fn new(tls: ServerTls) -> Result<Self, TlsError> {
        let cfg = tls.config()?;
        let cur = Current {
            stamps: tls.stamps(),
            checked: Instant::now(),
            acceptor: cfg.into(),
        };
        Ok(Self {
            tls,
            cur: Mutex::new(cur),
        })
    }

    /// The acceptor for the next connection: the files as they were last read well. A
    /// rotated pair that cannot be used is reported and the old one kept.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut cur = self.cur.lock().expect("tls lock poisoned");
        if cur.checked.elapsed() >= RELOAD_CHECK {
            cur.checked = Instant::now();
            let stamps = self.tls.stamps();
            if stamps != cur.stamps {
                cur.stamps = stamps;
                match self.tls.config() {
                    Ok(cfg) => {
                        tracing::info!(cert = %self.tls.cert_file.display(), "certificate reloaded");
                        cur.acceptor = cfg.into();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "new certificate not usable; keeping the old one")
                    }
                }
            }
        }
        cur.acceptor.clone()
    }

    /// Completes the server side of a handshake on `stream`, bounded in time.
    pub async fn accept<S>(&self, stream: S) -> Result<tokio_rustls::server::TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        }
    }
}

/// What this process shows and trusts when it connects over TLS (etcdctl's `--ca-file`,
/// `--cert-file`, `--key-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let Some(ca) = &self.ca_file else {
            return Err(TlsError(
                "https needs the CA that signs the servers' certificates (--ca-file)".into(),
            ));
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(load_roots(ca)?);
        let cfg = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let (certs, key) = certified_key(c, k)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| TlsError(format!("{}: {e}", c.display())))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError(
                    "a client certificate needs both --cert-file and --key-file".into(),
                ))
            }
        };
        Ok(Arc::new(cfg))
    }
}

static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Sets this process's client TLS (once, at start: it is who the process is). A second
/// call is ignored.
pub fn set_client(cfg: Arc<ClientConfig>) {
    let _ = CLIENT.set(cfg);
}

/// Opens the client side of TLS over `stream` to `host` (a DNS name or an IP address,
/// which the server's certificate must name), with the process's client TLS.
pub async fn connect<S>(host: &str, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = CLIENT.get().cloned().ok_or_else(|| {
        "https needs the CA that signs the servers' certificates (--ca-file)".to_string()
    })?;
    connect_with(cfg, host, stream).await
}

/// [`connect`] with an explicit configuration.
pub async fn connect_with<S>(
    cfg: Arc<ClientConfig>,
    host: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let c = tokio_rustls::TlsConnector::from(cfg);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, c.connect(name, stream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake with {host}: {e}")),
        Err(_) => Err(format!(
            "TLS handshake with {host}: no answer within {HANDSHAKE_TIMEOUT:?}"
        )),
    }
}

/// The common names of the certificates a client showed a listener that requires client
/// certificates (leaf first), carried on each of its requests: etcd takes them as user
/// names when a request has no `Authorization` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertNames(pub Vec<String>);

impl Listener {
    /// The names to carry for a connection that completed its handshake here; `None`
    /// unless this listener requires client certificates.
    pub fn client_names(&self, conn: &rustls::ServerConnection) -> Option<ClientCertNames> {
        if !self.tls.client_cert_auth {
            return None;
        }
        let names = conn
            .peer_certificates()
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| common_name(c.as_ref()))
            .collect();
        Some(ClientCertNames(names))
    }
}

/// The subject's common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(String::from)
}

/// The first byte of a TLS connection (a handshake record). Anything else on a TLS port
/// is someone speaking plain text to it.
pub const HANDSHAKE_RECORD: u8 = 0x16;
