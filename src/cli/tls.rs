//! TLS flags: etcdctl's for clients (`--ca-file`, `--cert-file`, `--key-file`), etcd's for
//! a member's listeners (`--cert-file`, `--key-file`, `--client-cert-auth`,
//! `--trusted-ca-file` and their `--peer-` forms). `https://` in a URL flag turns TLS on
//! for that listener or endpoint.

use anyhow::{bail, Result};
use clap::Args;
use flotilla_shims::tls::{ClientTls, Listener, ServerTls};
use std::path::PathBuf;
use std::sync::Arc;

/// What a client shows and trusts over https, and who it says it is.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// The CA that signs the servers' certificates (for https:// endpoints).
    #[arg(long, global = true, env = "FLOTILLA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// This client's certificate, for servers that require one.
    #[arg(long, global = true, env = "FLOTILLA_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The key of --cert-file.
    #[arg(long, global = true, env = "FLOTILLA_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// `user:password` for a cluster with auth enabled (etcdctl's flag), sent as basic auth.
    #[arg(long, global = true, env = "FLOTILLA_USERNAME")]
    pub username: Option<String>,
}

impl ClientTlsArgs {
    /// Makes these the process's client TLS. `endpoints` are checked: an https one needs
    /// `--ca-file`.
    pub fn install(&self, endpoints: &[String]) -> Result<()> {
        if let Some(u) = &self.username {
            let Some((user, password)) = u.split_once(':') else {
                bail!("--username {u:?}: give it as user:password");
            };
            flotilla_shims::http::set_basic_auth(user, password);
        }
        let tls = ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        if !https && tls.is_empty() {
            return Ok(());
        }
        match tls.config() {
            Ok(cfg) => flotilla_shims::tls::set_client(cfg),
            Err(e) if https => bail!("{e}"),
            Err(e) => tracing::warn!(error = %e, "TLS flags not usable (no https endpoint)"),
        }
        Ok(())
    }
}

/// A member's TLS flags, etcd's names.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerTlsArgs {
    /// Certificate for the client listeners (https:// in --listen-client-urls).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Key of --cert-file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// CA that signs client certificates (and, for this member's own calls to other
    /// members, their server certificates).
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Certificate for the peer listener and for connecting to peers (https:// peer URLs).
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Key of --peer-cert-file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Refuse peers without a certificate signed by --peer-trusted-ca-file.
    #[arg(long)]
    pub peer_client_cert_auth: bool,
    /// CA that signs the peers' certificates.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
}

fn pair(flag: &str, cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<(PathBuf, PathBuf)> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok((c.clone(), k.clone())),
        _ => bail!(
            "{flag}: https:// needs --{0}cert-file and --{0}key-file",
            if flag.contains("peer") { "peer-" } else { "" }
        ),
    }
}

impl ServerTlsArgs {
    /// The client listeners' TLS when `urls` are https (all or none of them).
    pub fn client_listener(&self, urls: &[String]) -> Result<Option<Arc<Listener>>> {
        if !scheme_is_https("--listen-client-urls", urls)? {
            return Ok(None);
        }
        let (cert_file, key_file) = pair("--listen-client-urls", &self.cert_file, &self.key_file)?;
        let tls = ServerTls {
            cert_file,
            key_file,
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        };
        Ok(Some(Arc::new(Listener::new(tls)?)))
    }

    /// The peer listener's TLS, and how to connect to peers, when `urls` are https.
    pub fn peer(
        &self,
        urls: &[String],
    ) -> Result<Option<(Arc<Listener>, Arc<flotilla_shims::tls::ClientConfig>)>> {
        if !scheme_is_https("--listen-peer-urls", urls)? {
            return Ok(None);
        }
        let (cert_file, key_file) = pair(
            "--listen-peer-urls",
            &self.peer_cert_file,
            &self.peer_key_file,
        )?;
        let Some(ca) = &self.peer_trusted_ca_file else {
            bail!("--listen-peer-urls: https:// needs --peer-trusted-ca-file (the CA that signs the peers' certificates)");
        };
        let server = ServerTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            trusted_ca_file: Some(ca.clone()),
            client_cert_auth: self.peer_client_cert_auth,
        };
        let client = ClientTls {
            ca_file: Some(ca.clone()),
            cert_file: Some(cert_file),
            key_file: Some(key_file),
        };
        Ok(Some((Arc::new(Listener::new(server)?), client.config()?)))
    }

    /// The member's own client identity, for its calls to other members' client URLs
    /// (journal requests): its client certificate, trusting --trusted-ca-file.
    pub fn install_client(&self) -> Result<()> {
        let tls = ClientTls {
            ca_file: self.trusted_ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        if tls.ca_file.is_some() {
            flotilla_shims::tls::set_client(tls.config()?);
        }
        Ok(())
    }
}

/// Whether the URLs are https (true) or http (false); a mix is refused.
fn scheme_is_https(flag: &str, urls: &[String]) -> Result<bool> {
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    match https {
        0 => Ok(false),
        n if n == urls.len() => Ok(true),
        _ => bail!("{flag}: all http:// or all https://, not a mix"),
    }
}
