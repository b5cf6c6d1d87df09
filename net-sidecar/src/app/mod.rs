//! `palisade-sidecar run`: the composition root. Everything the data plane is made of is
//! built here, in one place and in start-up order, from one typed [`config::Config`]:
//! admin (so `/live` answers and `/ready` says "starting" from the first moment), the
//! policy source (a file, or the gateway session with its credentials), policy DNS, the
//! sandbox CA, credentials, and the proxy listeners; then readiness, the signal wait and
//! the drain.
//!
//! Module map:
//! * [`config`] — flags and `PALISADE_*` environment, parsed once into [`config::Config`].
//! * [`keeper`] — the parent process that holds the listening sockets and restarts the
//!   data plane (its child) when it dies.
//! * [`shutdown`] — ready file, signals, drain deadline.
//!
//! Must never: serve traffic itself (that is [`crate::proxy`], [`crate::dns`] and
//! [`crate::admin`]), report ready before a policy is in force, or start without one.

pub mod config;
mod keeper;
mod shutdown;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use palisade_policy::CompiledPolicy;
use tokio::sync::{Semaphore, watch};
use tracing_subscriber::EnvFilter;

pub use self::config::RunArgs;
use self::config::{Config, LogFormat, Origin};
use self::shutdown::ReadyFile;
use crate::admin::{self, Metrics, State};
use crate::dns::{self, AnswerCache, DnsConfig, DnsMetrics};
use crate::identity::audit_push::{AUDIT_BUFFER_CAPACITY, AuditBuffer, AuditLayer};
use crate::policy::PolicySource;
use crate::proxy::decide::Decider;
use crate::proxy::http::UpstreamPool;
use crate::proxy::resolve::SystemResolver;
use crate::proxy::{self, Shared};

/// Entry point of `palisade-sidecar run`: the keeper binds the listening sockets and runs
/// the data plane as its child ([`keeper`]); the child (hidden `--data-plane-sockets`)
/// serves on them.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let child = args
        .data_plane_sockets
        .clone()
        .map(|roles| (roles, args.data_plane_keeper, args.data_plane_restarts));
    let config = Config::from_args(args)?;
    let Some((roles, keeper_pid, restarts)) = child else {
        init_logging(config.log_format, None);
        let sockets = keeper::Sockets::bind(&config)?;
        return keeper::keep(sockets, config.ready_file.clone());
    };
    if let Some(pid) = keeper_pid {
        keeper::bind_to_keeper(pid)?;
    }
    let sockets = keeper::Sockets::inherit(&roles)?;
    // With a gateway, audit events are also pushed there (bounded buffer, drop-oldest).
    let audit = match &config.origin {
        Origin::Gateway(_) => Some(AuditBuffer::new(AUDIT_BUFFER_CAPACITY)?),
        Origin::File(_) => None,
    };
    init_logging(config.log_format, audit.clone().map(AuditLayer));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("palisade-dataplane")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config, audit, sockets, restarts))
}

fn init_logging(format: LogFormat, audit: Option<AuditLayer>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The audit layer sees every `audit` event regardless of the log filter.
    let registry = tracing_subscriber::registry().with(audit);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if let Err(err) = result {
        eprintln!("palisade-sidecar: logging already initialised: {err}");
    }
}

/// Everything bound and loaded; the moment the sidecar can enforce policy.
struct Running {
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    max_connections: u32,
    bound: Vec<(&'static str, SocketAddr)>,
    /// The keeper's readiness note.
    notify: Option<std::os::unix::net::UnixDatagram>,
}

/// Adopt listeners bound before the runtime existed.
fn adopt(listeners: Vec<std::net::TcpListener>) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(l)?)
        })
        .collect()
}

/// The local addresses of `listeners`, labelled `what` for the start-up log line.
fn addresses<'a>(
    what: &'static str,
    listeners: &'a [tokio::net::TcpListener],
) -> impl Iterator<Item = (&'static str, SocketAddr)> + 'a {
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(move |a| (what, a))
}

/// The policy source and the credential registry: from a file, or from the gateway session
/// (which is established here: not ready until the first JWT and the first policy are in).
async fn policy_and_credentials(
    config: &Config,
    metrics: &Metrics,
    audit: Option<Arc<AuditBuffer>>,
) -> anyhow::Result<(PolicySource, crate::credentials::Registry)> {
    match &config.origin {
        Origin::File(path) => Ok((
            PolicySource::load(path.clone(), metrics.clone()).await?,
            crate::credentials::Registry::new(),
        )),
        Origin::Gateway(gateway) => {
            let audit = match audit {
                Some(a) => a,
                None => AuditBuffer::new(AUDIT_BUFFER_CAPACITY)?,
            };
            let started = crate::identity::start(gateway, metrics.registry(), audit).await?;
            tracing::info!(gateway = %gateway.base, sandbox = %gateway.sandbox_id,
                "sandbox identity established; waiting for the policy");
            Ok((
                PolicySource::from_gateway(started.policy_updates, metrics.clone()).await?,
                crate::credentials::Registry::with_gateway(started.credentials),
            ))
        }
    }
}

async fn start(
    config: &Config,
    audit: Option<Arc<AuditBuffer>>,
    sockets: keeper::Sockets,
    restarts: u64,
) -> anyhow::Result<Running> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    let restarted = prometheus::IntCounter::new(
        "palisade_sidecar_data_plane_restarts_total",
        "Times the keeper started a new data plane after one died (its listening sockets \
         stayed open throughout).",
    )?;
    metrics.registry().register(Box::new(restarted.clone()))?;
    restarted.inc_by(restarts);
    // Admin first: /live answers (and /ready says "starting") while the policy is awaited.
    let state = State::new();
    let admin = adopt(sockets.admin)?;
    let mut bound: Vec<(&'static str, SocketAddr)> = addresses("admin", &admin).collect();
    for l in admin {
        tokio::spawn(admin::serve(l, state.clone(), metrics.clone()));
    }
    let (source, credentials) = policy_and_credentials(config, &metrics, audit).await?;
    let policy = source.subscribe();

    let upstreams = if config.dns_upstreams.is_empty() {
        DnsConfig::upstreams_from_resolv_conf(&config.resolv_conf)?
    } else {
        config.dns_upstreams.clone()
    };
    let cache = Arc::new(AnswerCache::new(config.dns_cache_capacity));
    let dns_metrics =
        DnsMetrics::register(metrics.registry()).context("cannot register DNS metrics")?;
    let dns_config = DnsConfig {
        #[cfg(test)]
        listen: Vec::new(),
        upstreams: upstreams.clone(),
        deny_rcode: config.dns_deny_rcode,
        upstream_timeout: config.dns_upstream_timeout,
    };
    let dns_server = dns::DnsServer::from_sockets(sockets.dns, &dns_config)?;

    let outbound = adopt(sockets.outbound)?;
    let explicit = adopt(sockets.explicit)?;
    bound.extend(addresses("transparent", &outbound));
    bound.extend(addresses("explicit", &explicit));
    bound.extend(dns_server.local_addrs().into_iter().map(|a| ("dns", a)));

    let hosts: Vec<String> = policy
        .borrow()
        .inspected_hosts()
        .map(str::to_owned)
        .collect();
    let tls = Arc::new(
        crate::tls::Interceptor::new(&config.tls, hosts, metrics.leaf_cache.clone())
            .context("cannot set up TLS interception")?,
    );
    tokio::spawn(ca_maintenance(tls.clone(), policy.clone()));
    let grants = crate::credentials::token_grant::TokenGrantClient::new(
        crate::credentials::token_grant::TokenGrantConfig {
            workload_api: config.spiffe_endpoint_socket.clone(),
            ..Default::default()
        },
        tls.client.clone(),
        crate::credentials::token_grant::TokenGrantMetrics::new(metrics.registry())
            .context("cannot register token-grant metrics")?,
    );
    let credentials = credentials.with_token_grants(grants);
    let shared = Arc::new(Shared {
        tls,
        credentials: Arc::new(credentials),
        max_header_bytes: config.max_header_bytes,
        pool: Arc::new(UpstreamPool::new()),
        policy: policy.clone(),
        decider: Decider::new(
            Arc::new(SystemResolver::new(&upstreams, config.dns_upstream_timeout)),
            cache.clone(),
        ),
        metrics: metrics.clone(),
        timeouts: config.timeouts,
        state,
    });
    let limit = Arc::new(Semaphore::new(config.max_connections as usize));

    tokio::spawn(dns_server.run(policy, cache, dns_metrics));
    tokio::spawn(source.watch());
    proxy::serve(&shared, &limit, outbound, explicit);
    Ok(Running {
        shared,
        limit,
        max_connections: config.max_connections,
        bound,
        notify: sockets.notify,
    })
}

/// Keep the sandbox CA current: re-constrain it when a policy reload changes the inspected
/// hosts, and rotate it at 2/3 of its life (checked every minute).
async fn ca_maintenance(
    tls: Arc<crate::tls::Interceptor>,
    mut policy: watch::Receiver<Arc<CompiledPolicy>>,
) {
    const CHECK: std::time::Duration = std::time::Duration::from_secs(60);
    loop {
        tokio::select! {
            changed = policy.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(CHECK) => {}
        }
        let hosts: Vec<String> = policy
            .borrow()
            .inspected_hosts()
            .map(str::to_owned)
            .collect();
        if let Err(err) = tls.store.refresh(hosts) {
            tracing::error!(error = %format!("{err:#}"), "cannot replace the sandbox CA; the current one stays");
        }
    }
}

async fn run(
    config: Config,
    audit: Option<Arc<AuditBuffer>>,
    sockets: keeper::Sockets,
    restarts: u64,
) -> anyhow::Result<ExitCode> {
    let running = start(&config, audit, sockets, restarts).await?;
    let ready_file = config.ready_file.clone().map(ReadyFile);
    if let Some(f) = &ready_file {
        f.write()?;
    }
    running.shared.state.set_ready();
    keeper::notify_ready(running.notify.as_ref());
    let listeners: Vec<String> = running
        .bound
        .iter()
        .map(|(what, a)| format!("{what}={a}"))
        .collect();
    tracing::info!(listeners = %listeners.join(" "), "palisade-sidecar data plane ready");

    let signal = shutdown::termination_signal().await?;
    tracing::info!(signal, drain_timeout = ?config.drain_timeout, "draining: no new connections, finishing in-flight ones");
    running.shared.state.start_draining();
    if let Some(f) = &ready_file {
        f.remove();
    }
    let finished = tokio::select! {
        finished = shutdown::wait_for_connections(&running.limit, running.max_connections, config.drain_timeout) => finished,
        second = shutdown::termination_signal() => {
            tracing::warn!(signal = second.unwrap_or("?"), "second signal: exiting without waiting");
            false
        }
    };
    let open = running.shared.metrics.active_connections.get();
    if finished {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            open_connections = open,
            "drain deadline reached; closing remaining connections"
        );
    }
    Ok(ExitCode::SUCCESS)
}
