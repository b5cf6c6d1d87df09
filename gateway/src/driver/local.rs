//! The local driver behind `palisade up`.
//!
//! Isolated mode (root): one network namespace `palisade-<short id>` per
//! sandbox, a veth into the bridge `palisade0` (gateway address = first host
//! of the subnet, 10.231.0.1 by default; sandbox ports are isolated from
//! each other), `palisade-sidecar init` as root in the namespace, then
//! `palisade-sidecar run` as UID/GID 1337 and `palisade-shim -- CMD` as UID/GID
//! 1000, both through `ip netns exec` + `setpriv` with no supplementary
//! groups, every capability set cleared and `no_new_privs`. Each of the two
//! runs in a PID namespace of its own with its own `/proc` (`unshare --pid
//! --fork --mount-proc --kill-child`, as root before the UID change): an agent
//! sees its own processes and nothing else — not its sidecar's command line,
//! not another sandbox's.
//!
//! Development mode (not root): no namespace, no UID change; each sidecar
//! gets its own loopback ports and the agent gets `HTTP(S)_PROXY` pointing at
//! the sidecar's explicit proxy. NOT a security boundary.
//!
//! Must never: leave a resource behind that is not in the ledger, hand the
//! bootstrap token to anything but the sidecar's 0600 file, or pass the
//! gateway's own environment to a sandbox process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::ledger::{self, BridgeRecord, Ledger, NatRecord, ProcRecord, SandboxRecord};
use super::logs::{LogSink, pump};
use super::{Driver, DriverError, Launch, LogChunk, net};
use crate::principal::SandboxId;

/// Private range the sandboxes' addresses come from (not the tests' 198.18.0.0/15).
pub const DEFAULT_SUBNET: &str = "10.231.0.0/16";
/// Bridge the sandboxes' veths hang off.
pub const DEFAULT_BRIDGE: &str = "palisade0";
/// Per-sandbox runtime dirs (token file, shared dir, HOME, logs) as root: a tmpfs.
pub const DEFAULT_RUN_DIR: &str = "/run/palisade";
/// Sidecar UID/GID (as in net-sidecar).
pub const SIDECAR_UID: u32 = 1337;
/// Agent UID/GID.
pub const AGENT_UID: u32 = 1000;
/// Each sandbox log file is rotated at this size (one old file is kept).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1024 * 1024;
/// Command of a sandbox created without one.
pub const DEFAULT_COMMAND: &[&str] = &["sleep", "infinity"];
/// How long processes get after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Development mode: sandbox N's sidecar uses ports BASE+10N .. BASE+10N+3.
const DEV_PORT_BASE: u16 = 25000;
const DEV_MAX_SANDBOXES: u16 = 1000;
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How sandboxes are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalMode {
    /// Root: network namespace, sidecar and agent UIDs, capture + fence.
    Isolated,
    /// Not root: no namespace, the agent uses the explicit proxy. Not a security boundary.
    Development,
}

/// Where the sidecar gets its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicySource {
    /// `--gateway`: identity, policy and credentials over the gateway session.
    Gateway,
    /// `--policy FILE`: the policy text at create time, written to a file (no
    /// live updates, no gateway-sourced credentials).
    File,
}

/// Everything the local driver needs, resolved by `palisade up`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalDriverConfig {
    pub mode: LocalMode,
    /// `<data-dir>/driver`: the ledger.
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub subnet: Ipv4Net,
    pub bridge: String,
    /// Masquerade sandbox traffic to the host's uplink (changes the host firewall).
    pub egress_nat: bool,
    /// Nameservers for the sidecars (empty: the host's non-loopback ones).
    pub dns: Vec<IpAddr>,
    pub sidecar_bin: PathBuf,
    pub shim_bin: PathBuf,
    pub policy_source: PolicySource,
    /// Extra CA (PEM) the sidecars trust for upstream servers.
    pub upstream_ca: Option<PathBuf>,
    /// Copy log lines to our stderr.
    pub echo_logs: bool,
    pub max_log_bytes: u64,
}

impl LocalDriverConfig {
    /// Defaults for a data dir; `palisade up` overrides from its flags.
    pub fn new(mode: LocalMode, data_dir: &Path) -> anyhow::Result<Self> {
        let run_dir = match mode {
            LocalMode::Isolated => PathBuf::from(DEFAULT_RUN_DIR),
            LocalMode::Development => data_dir.join("run"),
        };
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let bin = |name: &str| -> PathBuf {
            exe_dir
                .as_ref()
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Ok(LocalDriverConfig {
            mode,
            state_dir: data_dir.join("driver"),
            run_dir,
            subnet: DEFAULT_SUBNET.parse()?,
            bridge: DEFAULT_BRIDGE.to_owned(),
            egress_nat: false,
            dns: Vec::new(),
            sidecar_bin: bin("palisade-sidecar"),
            shim_bin: bin("palisade-shim"),
            policy_source: PolicySource::Gateway,
            upstream_ca: None,
            echo_logs: false,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        })
    }
}

/// A process group we started.
#[derive(Debug)]
struct Proc {
    label: &'static str,
    child: Arc<Mutex<Child>>,
    record: ProcRecord,
}

/// One sandbox's running parts.
#[derive(Debug)]
struct Runtime {
    ip: Option<Ipv4Addr>,
    slot: Option<u16>,
    record: SandboxRecord,
    procs: Vec<Proc>,
    log: Option<Arc<LogSink>>,
}

#[derive(Debug, Default)]
struct State {
    ledger: Ledger,
    runtimes: BTreeMap<String, Runtime>,
    shut_down: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct LocalDriver {
    config: LocalDriverConfig,
    gateway_url: Mutex<Option<String>>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DriverError {
    DriverError::failed(format!("cannot {what} {}: {e}", path.display()))
}

impl LocalDriver {
    /// Clean up what a previous run left (per the ledger), then create the
    /// shared resources (bridge, optional NAT).
    pub fn new(config: LocalDriverConfig) -> Result<LocalDriver, DriverError> {
        crate::fsutil::private_dir(&config.state_dir)
            .map_err(|e| io_err("create", &config.state_dir, e))?;
        if config.mode == LocalMode::Isolated {
            preflight(&config)?;
        }
        let leftovers = Ledger::load(&config.state_dir)?;
        if !leftovers.is_empty() {
            tracing::warn!(
                sandboxes = leftovers.sandboxes.len(),
                "cleaning up what a previous `palisade up` left behind"
            );
            teardown_ledger(&leftovers)?;
            Ledger::default().save(&config.state_dir)?;
        }
        let mode = match config.mode {
            LocalMode::Isolated => 0o711,
            LocalMode::Development => 0o700,
        };
        std::fs::create_dir_all(&config.run_dir)
            .and_then(|()| {
                std::fs::set_permissions(&config.run_dir, std::fs::Permissions::from_mode(mode))
            })
            .map_err(|e| io_err("create the run dir", &config.run_dir, e))?;
        let driver = LocalDriver {
            config,
            gateway_url: Mutex::new(None),
            state: Mutex::new(State::default()),
        };
        if driver.config.mode == LocalMode::Isolated {
            driver.create_shared_network()?;
        }
        Ok(driver)
    }

    fn create_shared_network(&self) -> Result<(), DriverError> {
        let c = &self.config;
        if net::link_exists(&c.bridge) {
            return Err(DriverError::failed(format!(
                "a network interface named {} already exists and this data dir did not create \
                 it; is another `palisade up` running? Stop it, or pass --bridge NAME and \
                 --subnet CIDR",
                c.bridge
            )));
        }
        let mut state = lock(&self.state);
        state.ledger.bridge = Some(BridgeRecord {
            name: c.bridge.clone(),
            subnet: c.subnet,
        });
        state.ledger.save(&c.state_dir)?;
        net::create_bridge(&c.bridge, c.subnet)?;
        if c.egress_nat {
            state.ledger.nat = Some(NatRecord {
                subnet: c.subnet,
                bridge: c.bridge.clone(),
                ip_forward_before: None,
            });
            state.ledger.save(&c.state_dir)?;
            let before = net::add_egress_nat(c.subnet, &c.bridge)?;
            if let Some(nat) = state.ledger.nat.as_mut() {
                nat.ip_forward_before = Some(before);
            }
            state.ledger.save(&c.state_dir)?;
        }
        Ok(())
    }

    pub fn config(&self) -> &LocalDriverConfig {
        &self.config
    }

    /// Where a sandbox's sidecar admin (/metrics) listens, seen from the host.
    pub fn admin_url(&self, id: &SandboxId) -> Option<String> {
        let state = lock(&self.state);
        let rt = state.runtimes.get(id.as_str())?;
        match (rt.ip, rt.slot) {
            (Some(ip), _) => Some(format!("http://{ip}:15020")),
            (None, Some(slot)) => Some(format!("http://127.0.0.1:{}", dev_ports(slot).3)),
            _ => None,
        }
    }

    /// Reserve names, address/slot and a ledger entry for a new sandbox.
    fn reserve(
        &self,
        id: &str,
    ) -> Result<(SandboxRecord, Option<Ipv4Addr>, Option<u16>), DriverError> {
        let short = short_id(id)?;
        let c = &self.config;
        let mut state = lock(&self.state);
        if state.shut_down {
            return Err(DriverError::failed("the local driver is shutting down"));
        }
        if state.runtimes.contains_key(id) {
            return Err(DriverError::failed(format!(
                "sandbox {id} is already running"
            )));
        }
        let (ip, slot, netns, veth) = match c.mode {
            LocalMode::Isolated => {
                let used: Vec<Ipv4Addr> = state.runtimes.values().filter_map(|r| r.ip).collect();
                let ip = c
                    .subnet
                    .hosts()
                    .skip(1)
                    .find(|a| !used.contains(a))
                    .ok_or_else(|| {
                        DriverError::failed(format!(
                            "no free address left in {}; delete a sandbox or pass a larger --subnet",
                            c.subnet
                        ))
                    })?;
                let netns = format!("palisade-{short}");
                if net::netns_exists(&netns) {
                    return Err(DriverError::failed(format!(
                        "network namespace {netns} already exists and is not ours; remove it with \
                         `ip netns del {netns}`"
                    )));
                }
                (Some(ip), None, Some(netns), Some(format!("pv{short}")))
            }
            LocalMode::Development => {
                let used: Vec<u16> = state.runtimes.values().filter_map(|r| r.slot).collect();
                let slot = (0..DEV_MAX_SANDBOXES)
                    .find(|s| !used.contains(s))
                    .ok_or_else(|| DriverError::failed("too many sandboxes in development mode"))?;
                (None, Some(slot), None, None)
            }
        };
        let record = SandboxRecord {
            netns,
            veth_host: veth,
            run_dir: c.run_dir.join(short),
            processes: Vec::new(),
        };
        state.ledger.sandboxes.insert(id.to_owned(), record.clone());
        state.ledger.save(&c.state_dir)?;
        state.runtimes.insert(
            id.to_owned(),
            Runtime {
                ip,
                slot,
                record: record.clone(),
                procs: Vec::new(),
                log: None,
            },
        );
        Ok((record, ip, slot))
    }

    fn forget(&self, id: &str) {
        let mut state = lock(&self.state);
        state.runtimes.remove(id);
        state.ledger.sandboxes.remove(id);
        if let Err(e) = state.ledger.save(&self.config.state_dir) {
            tracing::error!(error = %e, "cannot update the driver ledger");
        }
    }

    fn start(
        &self,
        launch: &Launch<'_>,
        record: &SandboxRecord,
        ip: Option<Ipv4Addr>,
        slot: Option<u16>,
    ) -> Result<(), DriverError> {
        let c = &self.config;
        let sandbox = launch.sandbox;
        let id = sandbox.id.as_str();
        let gateway = lock(&self.gateway_url).clone().ok_or_else(|| {
            DriverError::failed("the gateway address is not known yet; retry in a moment")
        })?;
        let dirs = RunDirs::create(&record.run_dir, c.mode)?;
        let echo = c.echo_logs.then(|| format!("[{}] ", sandbox.spec.name));
        let log = Arc::new(
            LogSink::create(&dirs.logs, c.max_log_bytes, echo)
                .map_err(|e| io_err("create the log in", &dirs.logs, e))?,
        );
        {
            let mut state = lock(&self.state);
            if let Some(rt) = state.runtimes.get_mut(id) {
                rt.log = Some(log.clone());
            }
        }
        // The sidecar's private files.
        let token = dirs.sidecar.join("bootstrap-token");
        write_owned(
            &token,
            launch.bootstrap_token.as_bytes(),
            0o600,
            c.mode,
            SIDECAR_UID,
        )?;
        let mut sidecar_args: Vec<OsString> = vec!["run".into()];
        match c.policy_source {
            PolicySource::Gateway => {
                for a in [
                    "--gateway",
                    gateway.as_str(),
                    "--gateway-insecure-plaintext",
                    "--sandbox-id",
                    id,
                    "--token-file",
                ] {
                    sidecar_args.push(a.into());
                }
                sidecar_args.push(token.clone().into());
            }
            PolicySource::File => {
                let text = launch.policy.ok_or_else(|| {
                    DriverError::failed(
                        "this sandbox has no policy; create it with --policy (the sidecar runs \
                         with --sidecar-policy-source file)",
                    )
                })?;
                let file = dirs.sidecar.join("policy.yaml");
                write_owned(&file, text.as_bytes(), 0o600, c.mode, SIDECAR_UID)?;
                sidecar_args.push("--policy".into());
                sidecar_args.push(file.into());
            }
        }
        let ready = dirs.shared.join("ready");
        let socket = dirs.shared.join("shim.sock");
        sidecar_args.extend([
            "--shared-dir".into(),
            dirs.shared.clone().into(),
            "--ready-file".into(),
            ready.clone().into(),
            "--shim-socket".into(),
            socket.clone().into(),
        ]);
        if let Some(ca) = &c.upstream_ca {
            let copy = dirs.sidecar.join("upstream-ca.pem");
            let pem = std::fs::read(ca).map_err(|e| io_err("read --upstream-ca", ca, e))?;
            write_owned(&copy, &pem, 0o644, c.mode, SIDECAR_UID)?;
            sidecar_args.push("--upstream-ca".into());
            sidecar_args.push(copy.into());
        }
        let mut agent_env: Vec<(String, OsString)> = Vec::new();
        let mut shim_args: Vec<OsString> = Vec::new();
        if let Some(slot) = slot {
            let (outbound, dns, explicit, admin) = dev_ports(slot);
            sidecar_args.extend(
                [
                    format!("--outbound-port={outbound}"),
                    format!("--dns-port={dns}"),
                    format!("--explicit-proxy-port={explicit}"),
                    format!("--admin-addr=127.0.0.1:{admin}"),
                ]
                .map(OsString::from),
            );
            let proxy = format!("http://127.0.0.1:{explicit}");
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                agent_env.push((k.to_owned(), proxy.clone().into()));
            }
            shim_args.push("--allow-insecure".into());
        }
        shim_args.extend([
            "--ready-file".into(),
            ready.into(),
            "--ca-bundle".into(),
            dirs.shared.join("ca-bundle.pem").into(),
            "--exit-file".into(),
            dirs.shared.join("agent-exit").into(),
            "--home".into(),
            dirs.home.clone().into(),
            "--".into(),
        ]);
        if sandbox.spec.command.is_empty() {
            shim_args.extend(DEFAULT_COMMAND.iter().map(OsString::from));
        } else {
            shim_args.extend(sandbox.spec.command.iter().map(OsString::from));
        }
        agent_env.push(("PALISADE_SESSION_SOCKET".to_owned(), socket.clone().into()));
        let sidecar_env = vec![("PALISADE_SHIM_SOCKET".to_owned(), socket.into_os_string())];

        if let (Some(ns), Some(veth), Some(ip)) = (&record.netns, &record.veth_host, ip) {
            let short = short_id(id)?;
            net::create_sandbox_net(&net::SandboxNet {
                netns: ns,
                veth_host: veth,
                veth_peer: &format!("pp{short}"),
                bridge: &c.bridge,
                subnet: c.subnet,
                ip,
            })?;
            if let Some(text) = net::resolv_conf(&c.dns) {
                let dir = net::etc_netns_dir(ns);
                std::fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
                let file = dir.join("resolv.conf");
                std::fs::write(&file, text).map_err(|e| io_err("write", &file, e))?;
            } else {
                log.line(
                    "palisade",
                    b"warning: no usable nameserver (the host's are loopback-only); pass --dns IP",
                );
            }
            log.line(
                "palisade",
                format!("sandbox {id}: netns {ns}, address {ip}, sidecar admin http://{ip}:15020")
                    .as_bytes(),
            );
            self.init_capture(ns, &log)?;
        } else {
            log.line(
                "palisade",
                format!(
                    "sandbox {id}: development mode (no namespace), sidecar admin \
                     http://127.0.0.1:{}",
                    slot.map(|s| dev_ports(s).3).unwrap_or(0)
                )
                .as_bytes(),
            );
        }
        let sidecar = self.spawn(
            "sidecar",
            record.netns.as_deref(),
            SIDECAR_UID,
            &c.sidecar_bin,
            sidecar_args,
            sidecar_env,
            &log,
        )?;
        self.track(id, sidecar)?;
        let shim = self.spawn(
            "agent",
            record.netns.as_deref(),
            AGENT_UID,
            &c.shim_bin,
            shim_args,
            agent_env,
            &log,
        )?;
        self.track(id, shim)?;
        Ok(())
    }

    fn init_capture(&self, ns: &str, log: &LogSink) -> Result<(), DriverError> {
        let sidecar = self.config.sidecar_bin.to_string_lossy().into_owned();
        let out = Command::new("ip")
            .args(["netns", "exec", ns, &sidecar, "init"])
            .env_clear()
            .env("PATH", PATH_ENV)
            .output()
            .map_err(|e| DriverError::failed(format!("cannot run `ip netns exec`: {e}")))?;
        for line in out.stderr.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            log.line("init", line);
        }
        if !out.status.success() {
            return Err(DriverError::failed(format!(
                "`palisade-sidecar init` failed in {ns}: {}; see `palisade sandbox logs`",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Start one process group; in isolated mode inside `ns` as `uid`/`uid`
    /// with every capability dropped and no_new_privs.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        label: &'static str,
        ns: Option<&str>,
        uid: u32,
        bin: &Path,
        args: Vec<OsString>,
        env: Vec<(String, OsString)>,
        log: &Arc<LogSink>,
    ) -> Result<Proc, DriverError> {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = ns {
            // A PID namespace of its own (the program is its PID 1) and a /proc that shows
            // only it; unshare stays behind as root in the host namespaces, waits, passes
            // the exit status on, and takes the tree down with it if it is killed.
            argv.extend(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child=SIGKILL",
                    "--",
                ]
                .map(OsString::from),
            );
            argv.extend(["ip", "netns", "exec", ns].map(OsString::from));
            argv.extend(
                [
                    "setpriv".to_owned(),
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_owned(),
                    "--inh-caps=-all".to_owned(),
                    "--ambient-caps=-all".to_owned(),
                    "--bounding-set=-all".to_owned(),
                    "--no-new-privs".to_owned(),
                    "--".to_owned(),
                ]
                .map(OsString::from),
            );
        }
        argv.push(bin.into());
        argv.extend(args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("LANG", "C.UTF-8")
            .envs(env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            DriverError::failed(format!(
                "cannot start the {label} ({}): {e}; check the path (--sidecar-bin/--shim-bin) \
                 and that util-linux `setpriv` is installed",
                bin.display()
            ))
        })?;
        let pid = child.id() as i32;
        let record = ProcRecord {
            pid,
            start_time: ledger::start_time(pid).unwrap_or(0),
        };
        if let Some(out) = child.stdout.take() {
            pump(out, log.clone(), label);
        }
        if let Some(err) = child.stderr.take() {
            pump(err, log.clone(), label);
        }
        let child = Arc::new(Mutex::new(child));
        watch(label, child.clone(), log.clone());
        Ok(Proc {
            label,
            child,
            record,
        })
    }

    fn track(&self, id: &str, proc: Proc) -> Result<(), DriverError> {
        let mut state = lock(&self.state);
        let record = proc.record;
        let Some(rt) = state.runtimes.get_mut(id) else {
            stop(&[proc]);
            return Err(DriverError::failed(
                "the sandbox was deleted while it started",
            ));
        };
        rt.procs.push(proc);
        rt.record.processes.push(record);
        if let Some(entry) = state.ledger.sandboxes.get_mut(id) {
            entry.processes.push(record);
        }
        state.ledger.save(&self.config.state_dir)
    }

    fn teardown(&self, rt: Runtime) -> Result<(), DriverError> {
        // The agent first, so it sees its sidecar until the end.
        let mut procs = rt.procs;
        procs.reverse();
        stop(&procs);
        ledger::clean_sandbox(&rt.record)
    }
}

impl Driver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    /// `http://ip:port`, set by `palisade up` once the listener is bound.
    fn set_gateway_url(&self, url: String) {
        *lock(&self.gateway_url) = Some(url);
    }

    fn create(&self, launch: &Launch<'_>) -> Result<(), DriverError> {
        let id = launch.sandbox.id.clone();
        let (record, ip, slot) = self.reserve(&id)?;
        match self.start(launch, &record, ip, slot) {
            Ok(()) => {
                tracing::info!(sandbox = %id, name = %launch.sandbox.spec.name, "sandbox started");
                Ok(())
            }
            Err(e) => {
                let rt = lock(&self.state).runtimes.remove(&id);
                let cleanup = match rt {
                    Some(rt) => self.teardown(rt),
                    None => ledger::clean_sandbox(&record),
                };
                if let Err(c) = cleanup {
                    tracing::error!(sandbox = %id, error = %c, "cleanup after a failed start failed");
                }
                self.forget(&id);
                Err(e)
            }
        }
    }

    fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        let rt = lock(&self.state).runtimes.remove(id.as_str());
        let Some(rt) = rt else {
            return Err(DriverError::NotRunning("local"));
        };
        let result = self.teardown(rt);
        if result.is_ok() {
            self.forget(id.as_str());
            tracing::info!(sandbox = %id, "sandbox runtime removed");
        }
        result
    }

    fn logs(&self, id: &SandboxId, after: u64) -> Result<LogChunk, DriverError> {
        let log = lock(&self.state)
            .runtimes
            .get(id.as_str())
            .and_then(|r| r.log.clone());
        log.map(|l| l.read(after))
            .ok_or(DriverError::NotRunning("local"))
    }

    fn shutdown(&self) {
        let runtimes = {
            let mut state = lock(&self.state);
            if state.shut_down {
                return;
            }
            state.shut_down = true;
            std::mem::take(&mut state.runtimes)
        };
        for (id, rt) in runtimes {
            match self.teardown(rt) {
                Ok(()) => self.forget(&id),
                Err(e) => tracing::error!(sandbox = %id, error = %e, "cannot remove a sandbox"),
            }
        }
        let ledger = lock(&self.state).ledger.clone();
        match teardown_ledger(&ledger) {
            Ok(()) => {
                let mut state = lock(&self.state);
                state.ledger = Ledger::default();
                if let Err(e) = state.ledger.save(&self.config.state_dir) {
                    tracing::error!(error = %e, "cannot update the driver ledger");
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "cleanup incomplete; the next `palisade up` with this data dir retries it"
            ),
        }
    }
}

impl Drop for LocalDriver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address sandboxes see the host (and the gateway) at, in isolated mode:
/// the first host of the subnet, on the bridge.
pub fn host_ip(subnet: Ipv4Net) -> Ipv4Addr {
    net::gateway_ip(subnet)
}

/// Remove everything a ledger names: sandboxes, NAT, bridge.
fn teardown_ledger(l: &Ledger) -> Result<(), DriverError> {
    let mut result = Ok(());
    for rec in l.sandboxes.values() {
        result = result.and(ledger::clean_sandbox(rec));
    }
    if let Some(nat) = &l.nat {
        result = result.and(net::remove_egress_nat(
            nat.subnet,
            &nat.bridge,
            nat.ip_forward_before.as_deref(),
        ));
    }
    if let Some(b) = &l.bridge {
        result = result.and(net::delete_link(&b.name));
    }
    result
}

/// Root, and the tools the isolated mode runs.
fn preflight(c: &LocalDriverConfig) -> Result<(), DriverError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DriverError::failed(
            "the isolated local driver needs root (namespaces, veths, UID changes); run as root \
             or use development mode",
        ));
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("bridge", "iproute2"),
        ("setpriv", "util-linux"),
        ("unshare", "util-linux"),
    ] {
        if which(tool).is_none() {
            return Err(DriverError::failed(format!(
                "`{tool}` not found in PATH; install {pkg}"
            )));
        }
    }
    if c.egress_nat && which("iptables").is_none() {
        return Err(DriverError::failed(
            "--egress-nat needs `iptables` in PATH; install iptables",
        ));
    }
    for bin in [&c.sidecar_bin, &c.shim_bin] {
        if !bin.is_file() && which(&bin.to_string_lossy()).is_none() {
            return Err(DriverError::failed(format!(
                "{} not found; build it (`cargo build -p palisade-sidecar -p palisade-shim`) or \
                 pass --sidecar-bin/--shim-bin",
                bin.display()
            )));
        }
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .unwrap_or_else(|| PATH_ENV.into())
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `sbx-<32 hex>` → the first 8 hex digits (names of namespace, veth, run dir).
fn short_id(id: &str) -> Result<&str, DriverError> {
    SandboxId::parse(id)
        .and_then(|_| id.get(4..12))
        .ok_or_else(|| DriverError::failed(format!("`{id}` is not a sandbox id")))
}

/// Development-mode ports of a slot: (outbound, dns, explicit proxy, admin).
fn dev_ports(slot: u16) -> (u16, u16, u16, u16) {
    let base = DEV_PORT_BASE + slot * 10;
    (base, base + 1, base + 2, base + 3)
}

/// The per-sandbox dirs under the run dir.
struct RunDirs {
    sidecar: PathBuf,
    shared: PathBuf,
    home: PathBuf,
    logs: PathBuf,
}

impl RunDirs {
    fn create(root: &Path, mode: LocalMode) -> Result<RunDirs, DriverError> {
        let dirs = RunDirs {
            sidecar: root.join("sidecar"),
            shared: root.join("shared"),
            home: root.join("home"),
            logs: root.join("logs"),
        };
        let isolated = mode == LocalMode::Isolated;
        // (dir, mode, owner uid, group gid) — ownership only as root.
        let plan: [(&Path, u32, u32, u32); 5] = [
            (root, 0o711, 0, 0),
            (&dirs.sidecar, 0o700, SIDECAR_UID, SIDECAR_UID),
            // Like the pod's shared emptyDir: sidecar and agent both write here.
            (&dirs.shared, 0o770, SIDECAR_UID, AGENT_UID),
            (&dirs.home, 0o700, AGENT_UID, AGENT_UID),
            (&dirs.logs, 0o700, 0, 0),
        ];
        for (dir, perm, uid, gid) in plan {
            std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
            let perm = if isolated { perm } else { 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(perm))
                .map_err(|e| io_err("chmod", dir, e))?;
            if isolated {
                chown(dir, uid, gid)?;
            }
        }
        Ok(dirs)
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), DriverError> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| DriverError::failed(format!("cannot chown {}: {e}", path.display())))
}

/// Write a file with `perm`, owned by `uid` in isolated mode.
fn write_owned(
    path: &Path,
    bytes: &[u8],
    perm: u32,
    mode: LocalMode,
    uid: u32,
) -> Result<(), DriverError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(perm)
        .open(path)
        .map_err(|e| io_err("create", path, e))?;
    f.write_all(bytes).map_err(|e| io_err("write", path, e))?;
    if mode == LocalMode::Isolated {
        chown(path, uid, uid)?;
    }
    Ok(())
}

/// Log how a process ended, once (the agent's end is also kept for `logs`).
fn watch(label: &'static str, child: Arc<Mutex<Child>>, log: Arc<LogSink>) {
    std::thread::spawn(move || {
        loop {
            let status = lock(&child).try_wait();
            match status {
                Ok(Some(status)) => {
                    let how = describe(status);
                    if label == "agent" {
                        log.agent_exited(how);
                    } else {
                        log.line("palisade", format!("{label} {how}").as_bytes());
                    }
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(_) => return,
            }
        }
    });
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_owned(),
    }
}

/// SIGTERM every process group, wait up to [`STOP_GRACE`], then SIGKILL.
fn stop(procs: &[Proc]) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let alive = |p: &Proc| matches!(lock(&p.child).try_wait(), Ok(None));
    for p in procs.iter().filter(|&p| alive(p)) {
        let _ = killpg(Pid::from_raw(p.record.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while procs.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in procs {
        // Also the group's other members, even when the leader is gone.
        let _ = killpg(Pid::from_raw(p.record.pid), Signal::SIGKILL);
        let _ = lock(&p.child).wait();
        tracing::debug!(process = p.label, pid = p.record.pid, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_and_dev_ports() {
        let id = format!("sbx-{}", "ab12cd34".repeat(4));
        assert_eq!(short_id(&id).unwrap(), "ab12cd34");
        assert!(short_id("sbx-../../etc").is_err());
        assert_eq!(dev_ports(0), (25000, 25001, 25002, 25003));
        assert_eq!(dev_ports(3).3, 25033);
    }
}
