//! The gateway server: builds the shared state, binds the API listener
//! (rustls, or plaintext under `--insecure-plaintext`) and the admin
//! listener, serves HTTP/1.1 and h2 on each connection, rotates keys by age,
//! prunes expired bootstrap tokens, and shuts down gracefully.

pub mod admin;
pub mod lease;
pub mod replicated;
pub mod stack;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::authn::Authenticators;
use crate::authn::admin_token::AdminToken;
use crate::config::{Config, StoreConfig};
use crate::http::{HttpService, Next, boxed};
use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::Store;
use crate::store::redb_store::RedbStore;
use crate::tokens::TokenService;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the key rotator looks at the active key's age.
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Build the shared state from a validated config, on the embedded store.
pub fn build_state(config: Config) -> anyhow::Result<Arc<AppState>> {
    crate::fsutil::private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create data dir {} (mode 0700); create it or pass --data-dir",
            config.data_dir.display()
        )
    })?;
    // The embedded store opens its file in the data dir, so the dir comes first.
    // Sandbox ids kept in memory too: the per-request revocation check.
    let store: Arc<dyn Store> = Arc::new(crate::authn::live_sandboxes::LiveSandboxStore::load(
        Arc::new(RedbStore::open(&config.data_dir)?),
    )?);
    build_state_with(config, store)
}

/// Build the shared state from a validated config and an opened store.
pub fn build_state_with(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Arc<AppState>> {
    crate::fsutil::private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create data dir {} (mode 0700); create it or pass --data-dir",
            config.data_dir.display()
        )
    })?;
    let admin_token = config
        .admin_token_file
        .as_deref()
        .map(AdminToken::load)
        .transpose()?;
    let retention = config.token_ttl.as_secs() + config.leeway.as_secs();
    let keys = Arc::new(KeySet::load_or_create(
        &config.data_dir.join("keys"),
        store.clone(),
        retention,
        crate::fsutil::now(),
    )?);
    let tokens = TokenService::new(
        keys,
        config.issuer.clone(),
        config.token_ttl.as_secs(),
        config.leeway.as_secs(),
    );
    let kube = config
        .kube
        .clone()
        .map(crate::authn::kube::KubeAuthenticator::load)
        .transpose()?;
    let oidc = config
        .oidc
        .clone()
        .map(|o| crate::authn::oidc::OidcAuthenticator::load(o, config.leeway))
        .transpose()?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    let (policy_revision, _) = watch::channel(0);
    let sessions =
        crate::sessions::SessionHub::new(config.sessions.clone(), metrics.sessions_live.clone());
    let driver = crate::driver::build(config.driver.as_ref())?;
    let authn = Arc::new(Authenticators {
        insecure_allow_anonymous: config.insecure_allow_anonymous,
        admin_token,
        kube,
        oidc,
        tokens: tokens.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
    });
    Ok(Arc::new(AppState {
        config,
        store,
        tokens,
        metrics,
        authn,
        policy_revision,
        sessions,
        driver,
    }))
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stop accepting, let open requests finish (bounded), and return.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        // Session streams never end by themselves: end them so connections drain.
        self.state.sessions.close();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Bind both listeners and start serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let tls = config
        .tls
        .as_ref()
        .map(tls::server_config)
        .transpose()?
        .map(TlsAcceptor::from);
    let (state, kube_store) = match &config.store {
        StoreConfig::Embedded => (build_state(config)?, None),
        StoreConfig::Kubernetes {
            kube_config,
            namespace,
            ..
        } => {
            let kube_store = replicated::open(kube_config.as_deref(), namespace).await?;
            let store: Arc<dyn Store> = kube_store.clone();
            // Key loads and writes block on the API: off the async threads.
            let state = tokio::task::spawn_blocking(move || build_state_with(config, store))
                .await
                .context("state builder panicked")??;
            (state, Some(kube_store))
        }
    };
    let config = &state.config;
    if tls.is_none() {
        tracing::warn!("serving the API WITHOUT TLS (--insecure-plaintext); local use only");
    }
    if config.insecure_allow_anonymous {
        tracing::warn!(
            "--insecure-allow-anonymous: callers without a credential may read and write \
             sandboxes and policies"
        );
    }
    if let Some(admin) = &state.authn.admin_token {
        tracing::info!(fingerprint = admin.fingerprint(), "admin token loaded");
    }
    let api = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", config.admin_listen))?;
    let api_addr = api.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let header_timeout = config.header_read_timeout;
    tasks.spawn(accept_loop(
        api,
        tls,
        stack::build(state.clone()),
        header_timeout,
        rx.clone(),
    ));
    tasks.spawn(accept_loop(
        admin,
        None,
        admin::service_for(state.clone()),
        header_timeout,
        rx.clone(),
    ));
    if let (Some(kube_store), StoreConfig::Kubernetes { lease_duration, .. }) =
        (kube_store, &config.store)
    {
        let elector = lease::Elector::new(
            kube_store.client(),
            kube_store.namespace(),
            replicated::identity(),
            *lease_duration,
        );
        tracing::info!(
            identity = elector.identity(),
            "standing for the gateway Lease"
        );
        let (leader, leading) = watch::channel(false);
        let gauge = state.metrics.leader.clone();
        let mut shown = leading.clone();
        tasks.spawn(async move {
            while shown.changed().await.is_ok() {
                gauge.set(i64::from(*shown.borrow()));
            }
        });
        tasks.spawn(elector.run(leader, rx.clone()));
        tasks.spawn(replicated::collect_garbage(
            kube_store.clone(),
            leading,
            *lease_duration,
            rx.clone(),
        ));
        tasks.spawn(replicated::follow(state.clone(), kube_store, rx.clone()));
    }
    tasks.spawn(rotate_keys_by_age(state.clone(), rx));
    tracing::info!(%api_addr, %admin_addr, issuer = %config.issuer, "gateway serving");
    Ok(Running {
        api_addr,
        admin_addr,
        state,
        shutdown,
        tasks,
    })
}

/// Serve until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn rotate_keys_by_age(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEY_CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let state = state.clone();
        let _ =
            tokio::task::spawn_blocking(move || rotate_if_due(&state, crate::fsutil::now())).await;
    }
}

/// Rotate the signing key if it is older than `--key-rotation-interval`,
/// otherwise drop retired keys past their window. Returns the new kid.
pub fn rotate_if_due(state: &AppState, now: u64) -> Option<String> {
    let keys = state.tokens.keys();
    // Another replica may have rotated (shared keys); no-op for key files.
    if let Err(e) = keys.refresh(now) {
        tracing::warn!(error = %e, "cannot reload the shared signing keys");
    }
    if keys.active_age(now) >= state.config.key_rotation_interval.as_secs() {
        match keys.rotate(now) {
            Ok(k) => {
                state.metrics.key_rotations.inc();
                tracing::info!(kid = k.kid(), "signing key rotated by age");
                return Some(k.kid().to_owned());
            }
            Err(e) => tracing::error!(error = %e, "automatic key rotation failed"),
        }
    } else if let Err(e) = keys.prune(now) {
        tracing::error!(error = %e, "pruning expired keys failed");
    }
    None
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: HttpService,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                conns.spawn(async move {
                    match tls {
                        None => serve_connection(stream, service, header_timeout, shutdown).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => {
                                    serve_connection(tls_stream, service, header_timeout, shutdown).await
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_connection<IO>(
    io: IO,
    service: HttpService,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let hyper_service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let fut = Next::new(service.clone()).run(req.map(boxed));
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    // With upgrades: `exec` and relay dial-backs switch protocols (101).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
