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
//! Files: `config` (its settings), `dirs` (run dirs and files), `process`
//! (command lines, start, stop), `net` (bridge, namespaces, NAT), `ledger`
//! (crash-safe record of all of it), `logs`, `preflight`. What runs, as whom,
//! with which arguments is not decided here: the driver renders the
//! sandbox's [`LaunchPlan`](crate::driver::plan::LaunchPlan).
//!
//! Must never: leave a resource behind that is not in the ledger, hand the
//! bootstrap token to anything but the sidecar's 0600 file, or pass the
//! gateway's own environment to a sandbox process.

mod config;
mod dirs;
mod ledger;
mod logs;
mod net;
mod preflight;
mod process;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use ipnet::Ipv4Net;
use palisade_api::defaults::ADMIN_PORT;
use parking_lot::Mutex;

pub use config::{
    DEFAULT_BRIDGE, DEFAULT_MAX_LOG_BYTES, DEFAULT_RUN_DIR, DEFAULT_SUBNET, LocalDriverConfig,
    LocalMode,
};
use dirs::{RunDirs, io_err};
use ledger::{BridgeRecord, Ledger, NatRecord, SandboxRecord};
use logs::LogSink;
use process::{Proc, stop};

use crate::driver::contract::{Driver, DriverError, Launch, LogChunk};
use crate::driver::plan::{self, GatewayLink, Network, PlanRequest, Program, SidecarPorts};
use crate::principal::SandboxId;

/// Development mode: sandbox N's sidecar uses ports BASE+10N .. BASE+10N+3.
const DEV_PORT_BASE: u16 = 25000;
const DEV_MAX_SANDBOXES: u16 = 1000;

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

impl LocalDriver {
    /// Clean up what a previous run left (per the ledger), then create the
    /// shared resources (bridge, optional NAT).
    pub fn new(config: LocalDriverConfig) -> Result<LocalDriver, DriverError> {
        crate::fsutil::private_dir(&config.state_dir)
            .map_err(|e| io_err("create", &config.state_dir, e))?;
        if config.mode == LocalMode::Isolated {
            preflight::preflight(&config)?;
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
        let mut state = self.state.lock();
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
        let state = self.state.lock();
        let rt = state.runtimes.get(id.as_str())?;
        match (rt.ip, rt.slot) {
            (Some(ip), _) => Some(format!("http://{ip}:{ADMIN_PORT}")),
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
        let mut state = self.state.lock();
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
        let mut state = self.state.lock();
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
        let gateway = self.gateway_url.lock().clone().ok_or_else(|| {
            DriverError::failed("the gateway address is not known yet; retry in a moment")
        })?;
        let network = match (&record.netns, slot) {
            (Some(_), _) => Network::Captured,
            (None, Some(slot)) => {
                let (outbound, dns, explicit_proxy, admin) = dev_ports(slot);
                Network::Shared(SidecarPorts {
                    outbound,
                    dns,
                    explicit_proxy,
                    admin,
                })
            }
            (None, None) => {
                return Err(DriverError::failed(
                    "the sandbox has neither a network namespace nor a port slot",
                ));
            }
        };
        let upstream_ca = match &c.upstream_ca {
            Some(ca) => Some(std::fs::read(ca).map_err(|e| io_err("read --upstream-ca", ca, e))?),
            None => None,
        };
        let dirs = RunDirs::new(&record.run_dir);
        let plan = plan::plan(&PlanRequest {
            launch,
            gateway: GatewayLink {
                url: &gateway,
                insecure_plaintext: true,
            },
            policy_source: c.policy_source,
            upstream_ca,
            network,
            layout: dirs.layout(),
        })?;
        dirs.create(&plan.dirs, c.mode)?;
        let echo = c.echo_logs.then(|| format!("[{}] ", sandbox.spec.name));
        let log = Arc::new(
            LogSink::create(&dirs.logs, c.max_log_bytes, echo)
                .map_err(|e| io_err("create the log in", &dirs.logs, e))?,
        );
        {
            let mut state = self.state.lock();
            if let Some(rt) = state.runtimes.get_mut(id) {
                rt.log = Some(log.clone());
            }
        }
        for file in &plan.files {
            dirs::write(file, c.mode)?;
        }

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
                format!(
                    "sandbox {id}: netns {ns}, address {ip}, sidecar admin http://{ip}:{ADMIN_PORT}"
                )
                .as_bytes(),
            );
            if let Some(init) = &plan.init {
                process::run_init(init, ns, self.bin(init.program), &log)?;
            }
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
        let netns = record.netns.as_deref();
        for part in [&plan.sidecar, &plan.agent] {
            let proc = process::spawn(part, netns, self.bin(part.program), &log)?;
            self.track(id, proc)?;
        }
        Ok(())
    }

    /// The binary of `program`.
    fn bin(&self, program: Program) -> &std::path::Path {
        match program {
            Program::Sidecar => &self.config.sidecar_bin,
            Program::Shim => &self.config.shim_bin,
        }
    }

    fn track(&self, id: &str, proc: Proc) -> Result<(), DriverError> {
        let mut state = self.state.lock();
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
        *self.gateway_url.lock() = Some(url);
    }

    fn create(&self, launch: &Launch<'_>) -> Result<(), DriverError> {
        let id = launch.sandbox.id.to_string();
        let (record, ip, slot) = self.reserve(&id)?;
        match self.start(launch, &record, ip, slot) {
            Ok(()) => {
                tracing::info!(sandbox = %id, name = %launch.sandbox.spec.name, "sandbox started");
                Ok(())
            }
            Err(e) => {
                let rt = self.state.lock().runtimes.remove(&id);
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
        let rt = self.state.lock().runtimes.remove(id.as_str());
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
        let log = self
            .state
            .lock()
            .runtimes
            .get(id.as_str())
            .and_then(|r| r.log.clone());
        log.map(|l| l.read(after))
            .ok_or(DriverError::NotRunning("local"))
    }

    fn shutdown(&self) {
        let runtimes = {
            let mut state = self.state.lock();
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
        let ledger = self.state.lock().ledger.clone();
        match teardown_ledger(&ledger) {
            Ok(()) => {
                let mut state = self.state.lock();
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
