//! Pieces of the full sidecar ↔ gateway chain: the real gateway binary in the "internet"
//! namespace (embedded store, admin token from a file), its admin API driven with curl from
//! that namespace, the agent's curl, and the sidecar's metrics.
//!
//! The same shape as `tests/gateway_chain.rs`, shared so other chain tests
//! (`tests/token_grant_chain.rs`) need not copy it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::process::{Proc, as_agent, wait_for_tcp_listen};
use crate::{Topology, workspace_bin};

/// Admin token the gateway is started with (only ever in a 0600 file and a header file).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef0123";
/// Port of the gateway API on upstream address 0 of the internet namespace.
pub const GATEWAY_PORT: u16 = 18443;
/// Port of the gateway admin listener on the internet namespace's loopback.
pub const GATEWAY_ADMIN_PORT: u16 = 18490;

/// chown `p` to `uid:uid`.
pub fn chown(p: &Path, uid: u32) -> anyhow::Result<()> {
    let id = nix::unistd::Uid::from_raw(uid);
    let gid = nix::unistd::Gid::from_raw(uid);
    nix::unistd::chown(p, Some(id), Some(gid)).with_context(|| format!("chown {}", p.display()))
}

/// chmod `p` to `mode`.
pub fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

/// `palisade gateway serve` in the internet namespace (plaintext, embedded store in `dir`).
#[derive(Debug)]
pub struct Gateway {
    proc: Option<Proc>,
    dir: PathBuf,
    /// Flags added to every start (e.g. `--token-ttl 10s`).
    extra: Vec<String>,
    /// `http://<upstream v4 0>:GATEWAY_PORT`.
    pub url: String,
}

impl Gateway {
    /// Start and wait until it listens. `dir` holds the admin token and the data dir.
    pub fn start(topo: &Topology, dir: &Path, start_timeout: Duration) -> anyhow::Result<Self> {
        Self::start_with(topo, dir, start_timeout, &[])
    }

    /// [`Self::start`] with extra `gateway serve` flags (kept for [`Self::restart`]).
    pub fn start_with(
        topo: &Topology,
        dir: &Path,
        start_timeout: Duration,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let token_file = dir.join("admin-token");
        if !token_file.exists() {
            std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
            set_mode(&token_file, 0o600)?;
        }
        let mut g = Self {
            proc: None,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            url: format!("http://{}:{GATEWAY_PORT}", topo.upstream_v4(0)),
        };
        g.restart(topo, start_timeout)?;
        Ok(g)
    }

    /// Start the process again (same data dir: same keys, same store) and wait until it
    /// listens.
    pub fn restart(&mut self, topo: &Topology, start_timeout: Duration) -> anyhow::Result<()> {
        self.kill();
        let listen = format!("{}:{GATEWAY_PORT}", topo.upstream_v4(0));
        let bin = workspace_bin("palisade").display().to_string();
        let data = self.dir.join("data").display().to_string();
        let token = self.dir.join("admin-token").display().to_string();
        let admin = format!("127.0.0.1:{GATEWAY_ADMIN_PORT}");
        let mut argv = vec![
            bin.as_str(),
            "gateway",
            "serve",
            "--listen",
            listen.as_str(),
            "--admin-listen",
            admin.as_str(),
            "--data-dir",
            data.as_str(),
            "--admin-token-file",
            token.as_str(),
            "--insecure-plaintext",
        ];
        argv.extend(self.extra.iter().map(String::as_str));
        let proc = topo.internet.spawn(&argv)?;
        wait_for_tcp_listen(&topo.internet, GATEWAY_PORT, start_timeout)
            .with_context(|| format!("the gateway did not start: {}", proc.describe()))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGKILL the process (no-op if it is not running).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The directory holding the admin token, the data dir and scratch files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gateway's stderr (logs), for failure messages.
    pub fn logs(&self) -> String {
        self.proc.as_ref().map(Proc::stderr).unwrap_or_default()
    }

    /// An admin API call with curl from the internet namespace (the token from a header
    /// file, never on the command line). Returns (status, body); status 0 if curl failed.
    pub fn api(
        &self,
        topo: &Topology,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let headers = self.dir.join("headers");
        let body_file = self.dir.join("body");
        let written = std::fs::write(
            &headers,
            format!("Authorization: Bearer {ADMIN_TOKEN}\nContent-Type: application/json\n"),
        )
        .and_then(|()| std::fs::write(&body_file, body.unwrap_or("")));
        if let Err(e) = written {
            return (0, format!("cannot write the request files: {e}"));
        }
        let url = format!("{}{path}", self.url);
        let h = format!("@{}", headers.display());
        let d = format!("@{}", body_file.display());
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-X",
            method,
            "-H",
            &h,
            "-w",
            "\n%{http_code}",
        ];
        if body.is_some() {
            argv.extend(["--data-binary", d.as_str()]);
        }
        argv.push(url.as_str());
        let out = topo.internet.run(&argv);
        let (text, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), text.to_owned())
    }
}

/// The agent's curl (UID 1000, empty environment) trusting only `ca_bundle`, with a
/// `max_time_secs` cap (only to avoid hangs): (HTTP status as text, body). Status `000`
/// when curl got no HTTP answer.
pub fn agent_curl(
    topo: &Topology,
    ca_bundle: &Path,
    url: &str,
    max_time_secs: u32,
) -> (String, String) {
    let ca = format!("CURL_CA_BUNDLE={}", ca_bundle.display());
    let max = max_time_secs.to_string();
    let out = topo.pod.run(as_agent(&[
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        ca.as_str(),
        "curl",
        "-sS",
        "--max-time",
        max.as_str(),
        "-w",
        "\n%{http_code}",
        url,
    ]));
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "000"));
    (code.trim().to_owned(), body.to_owned())
}

/// The sidecar's `/metrics` (admin port 15020), scraped from the internet namespace.
pub fn sidecar_metrics(topo: &Topology) -> String {
    let url = format!("http://{}:15020/metrics", topo.pod_v4());
    topo.internet
        .run(["curl", "-sS", "--max-time", "10", &url])
        .stdout
}

/// The value of one exact series (`name{labels}`) in a Prometheus text page; 0 if absent.
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Create a sandbox named `name` with policy `policy` through the admin API: (sandbox id,
/// one-time bootstrap token).
pub fn create_sandbox(
    gateway: &Gateway,
    topo: &Topology,
    name: &str,
    policy: &str,
) -> anyhow::Result<(String, String)> {
    let spec = serde_json::json!({"name": name, "policy": policy}).to_string();
    let (code, body) = gateway.api(topo, "POST", "/v1/sandboxes", Some(&spec));
    anyhow::ensure!((200..300).contains(&code), "POST sandbox: {code} {body}");
    let created: serde_json::Value = serde_json::from_str(&body)?;
    let field = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .with_context(|| format!("unexpected sandbox answer: {body}"))
    };
    Ok((
        field(&created["sandbox"]["id"])?,
        field(&created["bootstrapToken"])?,
    ))
}

/// The files of a gateway-managed sidecar under the pod's workdir: the one-time token as a
/// 0600 file of UID 1337 in a 0700 directory, and the shared directory (UID 1337, 0755)
/// where the CA bundle and the ready file appear.
#[derive(Debug)]
pub struct SidecarFiles {
    pub token_file: PathBuf,
    pub shared: PathBuf,
    pub ready: PathBuf,
    no_shim: PathBuf,
}

impl SidecarFiles {
    pub fn prepare(work: &Path, bootstrap: &str) -> anyhow::Result<Self> {
        let identity = work.join("identity");
        std::fs::create_dir_all(&identity)?;
        let token_file = identity.join("bootstrap-token");
        std::fs::write(&token_file, format!("{bootstrap}\n"))?;
        chown(&token_file, crate::SIDECAR_UID)?;
        set_mode(&token_file, 0o600)?;
        chown(&identity, crate::SIDECAR_UID)?;
        set_mode(&identity, 0o700)?;
        let shared = work.join("shared");
        std::fs::create_dir_all(&shared)?;
        chown(&shared, crate::SIDECAR_UID)?;
        set_mode(&shared, 0o755)?;
        Ok(Self {
            token_file,
            ready: shared.join("ready"),
            shared,
            no_shim: work.join("no-shim.sock"),
        })
    }

    /// `palisade-sidecar run` against `gateway` (plaintext) as sandbox `sandbox_id`,
    /// trusting `upstream_ca` upstream, JSON logs, plus `extra` flags.
    pub fn run_argv(
        &self,
        gateway: &Gateway,
        sandbox_id: &str,
        upstream_ca: &Path,
        extra: &[&str],
    ) -> Vec<String> {
        let paths = [
            self.token_file.display().to_string(),
            self.ready.display().to_string(),
            self.shared.display().to_string(),
            upstream_ca.display().to_string(),
            self.no_shim.display().to_string(),
        ];
        let mut args = vec![
            "run",
            "--gateway",
            gateway.url.as_str(),
            "--gateway-insecure-plaintext",
            "--sandbox-id",
            sandbox_id,
            "--token-file",
            &paths[0],
            "--ready-file",
            &paths[1],
            "--shared-dir",
            &paths[2],
            "--upstream-ca",
            &paths[3],
            "--shim-socket",
            &paths[4],
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        crate::bins::sidecar_argv(&args)
    }
}
