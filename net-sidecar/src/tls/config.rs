//! rustls configurations: the agent-facing server (leaf per SNI from the [`CaStore`]) and the
//! upstream client (real certificate verification).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::IntCounterVec;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::CaStore;

/// Flags of the interception layer.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Where `ca.pem` and `ca-bundle.pem` are published.
    pub shared_dir: PathBuf,
    /// Lifetime of each CA generation.
    pub ca_validity: Duration,
    /// Extra trust anchors for upstream verification (PEM file).
    pub upstream_ca: Option<PathBuf>,
}

/// Everything an inspected connection needs from TLS.
#[derive(Debug)]
pub struct Interceptor {
    pub store: Arc<CaStore>,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mints (or finds) the leaf for the client's SNI; no SNI → no certificate (handshake fails).
#[derive(Debug)]
struct LeafResolver(Arc<CaStore>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.0.leaf(name) {
            Ok(leaf) => Some(leaf),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot mint a leaf certificate");
                None
            }
        }
    }
}

impl Interceptor {
    /// Generate the first CA for `hosts`, publish it, and build both configurations.
    pub fn new(
        settings: &TlsSettings,
        hosts: Vec<String>,
        leaf_cache_total: IntCounterVec,
    ) -> anyhow::Result<Self> {
        let store = Arc::new(CaStore::new(
            hosts,
            settings.ca_validity,
            settings.shared_dir.clone(),
            leaf_cache_total,
        )?);
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("rustls refuses TLS 1.2/1.3 with the ring provider")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver(store.clone())));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = upstream_client_config(settings.upstream_ca.as_deref())?;
        Ok(Self {
            store,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Upstream client: webpki roots + the system bundle + `extra` (PEM); ALPN http/1.1 only
/// (the agent side negotiates h2 or http/1.1 on its own).
pub fn upstream_client_config(extra: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Ok(pem) = std::fs::read(super::SYSTEM_BUNDLE) {
        let mut slice = pem.as_slice();
        let certs: Vec<_> = rustls_pemfile::certs(&mut slice).flatten().collect();
        let (added, ignored) = roots.add_parsable_certificates(certs);
        tracing::debug!(
            added,
            ignored,
            "system roots loaded for upstream verification"
        );
    }
    if let Some(path) = extra {
        let pem = std::fs::read(path).with_context(|| {
            format!(
                "cannot read --upstream-ca {}; give a readable PEM file of CA certificates",
                path.display()
            )
        })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--upstream-ca {} is not valid PEM", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--upstream-ca {} holds no CERTIFICATE block",
            path.display()
        );
        for c in certs {
            roots.add(c).with_context(|| {
                format!("--upstream-ca {}: unusable certificate", path.display())
            })?;
        }
    }
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("rustls refuses TLS 1.2/1.3 with the ring provider")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(client)
}
