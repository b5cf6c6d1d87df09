//! `palisade up`: the gateway with the embedded store and the local driver,
//! on one machine, until Ctrl-C/SIGTERM.
//!
//! As root each sandbox gets a network namespace on a private bridge (see
//! `palisade_gateway::driver::local`); otherwise a development mode with no
//! namespace that is not a security boundary and says so in one line. It
//! writes an admin token (0600, in the data dir) and a CLI context so that
//! `palisade sandbox …` needs no flags, streams the sandboxes' logs, and on
//! the way out stops every sandbox, unregisters it and removes everything
//! it created. See docs/local.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;
use palisade_gateway::config::{Config, ServeArgs};
use palisade_gateway::driver::local::{DEFAULT_BRIDGE, DEFAULT_SUBNET};
use palisade_gateway::driver::{LocalDriverConfig, LocalMode, PolicySource};
use palisade_gateway::state::AppState;

use super::remote::{CliContext, context_path};

/// Data dir when not root (relative to the working directory).
pub const DEFAULT_DEV_DATA_DIR: &str = ".palisade";
/// API port (plaintext, on the bridge address — or loopback in development mode).
pub const DEFAULT_UP_PORT: u16 = 8443;
/// Gateway admin port (/live, /ready, /metrics), loopback only.
pub const DEFAULT_UP_ADMIN_PORT: u16 = 9090;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Store, keys, admin token and driver ledger [default: /var/lib/palisade as
    /// root, ./.palisade otherwise].
    #[arg(long, env = "PALISADE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API port; plaintext, on the bridge address (sandboxes and this host only).
    #[arg(long, default_value_t = DEFAULT_UP_PORT)]
    pub port: u16,
    /// Gateway admin port (/metrics) on 127.0.0.1.
    #[arg(long, default_value_t = DEFAULT_UP_ADMIN_PORT)]
    pub admin_port: u16,
    /// Private IPv4 range of the sandboxes; the first address is the host's.
    #[arg(long, default_value = DEFAULT_SUBNET)]
    pub subnet: Ipv4Net,
    /// Name of the bridge the sandboxes hang off.
    #[arg(long, default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Masquerade sandbox traffic to the host's uplink so policies can reach the
    /// internet. CHANGES THE HOST FIREWALL (an iptables MASQUERADE and two FORWARD
    /// rules, commented `palisade up: egress nat`) and sets net.ipv4.ip_forward=1;
    /// both are undone on exit.
    #[arg(long)]
    pub egress_nat: bool,
    /// Nameservers for the sidecars (comma-separated) [default: the host's
    /// non-loopback ones].
    #[arg(long, value_delimiter = ',')]
    pub dns: Vec<IpAddr>,
    /// Extra CA (PEM) the sidecars trust for upstream servers (test upstreams).
    #[arg(long, value_name = "FILE")]
    pub sidecar_upstream_ca: Option<PathBuf>,
    /// Where sidecars get their policy: the gateway session, or a file written at
    /// create time (no live updates, no secrets from the gateway).
    #[arg(long, value_enum, default_value_t = PolicySource::Gateway)]
    pub sidecar_policy_source: PolicySource,
    /// palisade-sidecar binary [default: beside this one, else PATH].
    #[arg(long)]
    pub sidecar_bin: Option<PathBuf>,
    /// palisade-shim binary [default: beside this one, else PATH].
    #[arg(long)]
    pub shim_bin: Option<PathBuf>,
    /// Per-sandbox runtime dirs [default: /run/palisade as root, <data-dir>/run otherwise].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Development mode even as root (no namespace; NOT a security boundary).
    #[arg(long)]
    pub dev: bool,
    /// Do not stream the sandboxes' logs here.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: UpArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,palisade_gateway=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade up: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(up(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade up: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let mode = if root && !args.dev {
        LocalMode::Isolated
    } else {
        LocalMode::Development
    };
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None if root => PathBuf::from(palisade_gateway::config::DEFAULT_DATA_DIR),
        None => PathBuf::from(DEFAULT_DEV_DATA_DIR),
    };
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("bad --data-dir {}", data_dir.display()))?;
    palisade_gateway::fsutil::private_dir(&data_dir).with_context(|| {
        format!(
            "cannot create the data dir {} (mode 0700); pass --data-dir",
            data_dir.display()
        )
    })?;
    let admin_token_file = ensure_admin_token(&data_dir)?;

    let mut driver = LocalDriverConfig::new(mode, &data_dir)?;
    driver.subnet = args.subnet.trunc();
    driver.bridge = args.bridge.clone();
    driver.egress_nat = args.egress_nat;
    driver.dns = args.dns.clone();
    driver.policy_source = args.sidecar_policy_source;
    driver.echo_logs = !args.quiet;
    if let Some(ca) = &args.sidecar_upstream_ca {
        driver.upstream_ca = Some(std::path::absolute(ca)?);
    }
    if let Some(b) = &args.sidecar_bin {
        driver.sidecar_bin = std::path::absolute(b)?;
    }
    if let Some(b) = &args.shim_bin {
        driver.shim_bin = std::path::absolute(b)?;
    }
    if let Some(d) = &args.run_dir {
        driver.run_dir = std::path::absolute(d)?;
    }
    if args.egress_nat && mode == LocalMode::Development {
        anyhow::bail!("--egress-nat needs root (and is pointless without namespaces)");
    }
    let host: IpAddr = match mode {
        LocalMode::Isolated => IpAddr::V4(palisade_gateway::driver::local::host_ip(driver.subnet)),
        LocalMode::Development => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let serve = ServeArgs {
        listen: Some(SocketAddr::new(host, args.port)),
        admin_listen: Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            args.admin_port,
        )),
        data_dir: Some(data_dir.clone()),
        insecure_plaintext: true,
        admin_token_file: Some(admin_token_file.clone()),
        ..ServeArgs::default()
    };
    let mut config = Config::resolve(&serve)?;
    config.driver = Some(driver.clone());

    let running = palisade_gateway::server::start(config).await?;
    let state = running.state.clone();
    // A local sandbox does not outlive `palisade up`: records a killed run left
    // have no runtime (the driver already removed its leftovers).
    let stale = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || unregister_all(&state))
            .await
            .unwrap_or(Err(1))
    };
    match stale {
        Ok(0) => {}
        Ok(n) => println!("palisade up: unregistered {n} sandboxes a previous run left behind"),
        Err(_) => anyhow::bail!("cannot unregister the sandboxes of a previous run; see above"),
    }
    let url = format!("http://{}", running.api_addr);
    if let Some(d) = &state.driver {
        d.set_gateway_url(url.clone());
    }
    let context = write_context(&url, &admin_token_file);
    banner(&args, mode, &url, running.admin_addr, &data_dir, &context);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("palisade up: stopping every sandbox and removing what was created …");
    running.shutdown().await;
    let leftovers = match tokio::task::spawn_blocking(move || stop_all(&state)).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("palisade up: stopping the sandboxes failed: {e}");
            1
        }
    };
    if let Ok(Some(path)) = &context
        && CliContext::load(path)
            .ok()
            .flatten()
            .is_some_and(|c| c.gateway == url)
    {
        let _ = std::fs::remove_file(path);
    }
    if leftovers == 0 {
        println!("palisade up: stopped; nothing left behind");
        Ok(())
    } else {
        anyhow::bail!(
            "{leftovers} sandbox records could not be removed from the store; see the log above"
        )
    }
}

/// Stop every runtime (driver shutdown), then unregister every sandbox:
/// a local sandbox does not outlive `palisade up`. Returns failures.
fn stop_all(state: &Arc<AppState>) -> usize {
    if let Some(d) = &state.driver {
        d.shutdown();
    }
    // `Ok(removed)` is success: only failures are leftovers.
    unregister_all(state).err().unwrap_or(0)
}

/// Delete every sandbox record; `Ok(count)` or `Err(failures)`.
fn unregister_all(state: &Arc<AppState>) -> Result<usize, usize> {
    let sandboxes = state.store.list_sandboxes().map_err(|e| {
        eprintln!("palisade up: cannot list sandboxes: {e}");
        1usize
    })?;
    let mut failures = 0;
    let mut removed = 0;
    for s in sandboxes {
        match state.store.delete_sandbox(&s.id) {
            Ok(_) => removed += 1,
            Err(e) => {
                eprintln!("palisade up: cannot unregister {}: {e}", s.id);
                failures += 1;
            }
        }
    }
    if failures == 0 {
        Ok(removed)
    } else {
        Err(failures)
    }
}

/// `<data-dir>/admin-token` (0600), created with 32 random bytes if missing.
fn ensure_admin_token(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("admin-token");
    if !path.exists() {
        let token = hex::encode(rand::random::<[u8; 32]>());
        palisade_gateway::fsutil::write_private(&path, format!("{token}\n").as_bytes())
            .with_context(|| format!("cannot write the admin token {}", path.display()))?;
    }
    Ok(path)
}

/// Write the CLI context; `Ok(None)` when there is no place for it.
fn write_context(url: &str, token_file: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = context_path() else {
        return Ok(None);
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ctx = CliContext {
        gateway: url.to_owned(),
        token_file: Some(token_file.to_path_buf()),
        ca_file: None,
    };
    palisade_gateway::fsutil::write_private(&path, &serde_json::to_vec_pretty(&ctx)?)
        .with_context(|| format!("cannot write the CLI context {}", path.display()))?;
    Ok(Some(path))
}

fn banner(
    args: &UpArgs,
    mode: LocalMode,
    url: &str,
    admin: SocketAddr,
    data_dir: &Path,
    context: &anyhow::Result<Option<PathBuf>>,
) {
    println!(
        "palisade up: gateway {url} (metrics http://{admin}/metrics), data in {}",
        data_dir.display()
    );
    match mode {
        LocalMode::Isolated => println!(
            "palisade up: sandboxes get a network namespace on bridge {} ({}), sidecar UID {}, \
             agent UID {}; egress NAT {}",
            args.bridge,
            args.subnet.trunc(),
            palisade_api::defaults::SIDECAR_UID,
            palisade_api::defaults::AGENT_UID,
            if args.egress_nat {
                "ON (host firewall changed until exit)"
            } else {
                "off (--egress-nat to reach the internet)"
            }
        ),
        LocalMode::Development => println!(
            "palisade up: DEVELOPMENT MODE ({}): no network namespace, the agent only gets \
             HTTP(S)_PROXY — this is NOT a security boundary",
            if args.dev { "--dev" } else { "not root" }
        ),
    }
    match context {
        Ok(Some(path)) => println!(
            "palisade up: CLI context in {} — try `palisade sandbox create demo --policy FILE -- \
             CMD…`, `palisade sandbox logs demo -f`",
            path.display()
        ),
        Ok(None) => println!(
            "palisade up: no HOME for a CLI context; use --gateway {url} --token-file {}",
            data_dir.join("admin-token").display()
        ),
        Err(e) => println!("palisade up: {e:#}; use --gateway {url}"),
    }
    println!("palisade up: ready; Ctrl-C stops every sandbox and removes what was created");
}
