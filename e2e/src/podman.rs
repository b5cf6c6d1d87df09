//! The Podman harness: the rendered sandbox pod run by a real container runtime
//! (`podman kube play`), for `e2e/tests/podman_pod.rs`.
//!
//! Owns: the prerequisites ([`require`]), the images ([`build_images`]: `scripts/images
//! --debug` and the test agent image of `e2e/podman/`), a network the test creates
//! ([`PodNetwork`]: an internal Podman bridge whose only other member is an "upstream"
//! [`Netns`] holding the test's servers), and one played pod ([`KubePod`]: start, exec,
//! logs, inspect; `podman kube down` on drop, logs printed first when the test failed).
//!
//! Must never: touch the host's `/etc/containers` (every call runs with `CONTAINERS_CONF`
//! pointing at `images/containers.conf` or a copy of it made for the test), send the pod's
//! traffic anywhere but the test's own network (the bridge is `--internal` and has no
//! address on the host; the pod's only neighbour is the upstream namespace), or leave a
//! pod, network, bridge or secret behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::Netns;
use crate::prereq::{find_tool, in_ci, missing};
use crate::process::CmdOutput;

/// Hard limit for one `podman` call (only against hangs, not an assertion).
pub const PODMAN_TIMEOUT_SECS: u32 = 180;
/// `--internal` bridge networks the harness creates are named `palisade-e2e-<random>`.
pub const NETWORK_PREFIX: &str = "palisade-e2e-";
/// The pod's address in its network (`<prefix>.10`).
pub const POD_HOST: u8 = 10;
/// The upstream namespace's first address (`<prefix>.1`): DNS, the allowed upstream.
pub const UPSTREAM_HOST: u8 = 1;
/// The upstream namespace's second address (`<prefix>.254`): the denied upstream.
pub const DENIED_HOST: u8 = 254;

/// Host tools the Podman e2e needs, beyond [`crate::prereq::missing`]'s, with the Debian
/// package of each.
const PODMAN_TOOLS: [(&str, &str); 9] = [
    ("podman", "podman"),
    ("buildah", "buildah"),
    ("runc", "runc"),
    ("catatonit", "catatonit"),
    ("nsenter", "util-linux"),
    ("objcopy", "binutils"),
    ("cargo", "the Rust toolchain (rustup)"),
    ("iptables-save", "iptables"),
    ("nft", "nftables"),
];

/// Files the Podman e2e needs, with the Debian package of each: static glibc (the shim
/// is linked statically), the CNI bridge plugin of its network, nss_wrapper (the agent
/// image, for the shim's arbitrary-UID passwd entry).
const PODMAN_FILES: [(&str, &str); 3] = [
    ("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    (
        "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
        "libnss-wrapper",
    ),
];

/// The repository root (`e2e/..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `images/containers.conf`: the Podman settings of this repository (runc, cgroupfs,
/// `default_ulimits` within the hard limits).
pub fn repo_containers_conf() -> PathBuf {
    repo_root().join("images/containers.conf")
}

/// Why the Podman e2e cannot run here (empty when it can): root, the tools of
/// [`crate::prereq::missing`] plus Podman's, and `default_ulimits` of
/// `images/containers.conf` within this process's hard limits (rootful Podman cannot raise
/// them without CAP_SYS_RESOURCE and every container would fail to start).
pub fn missing_prereqs(tools: &[&str]) -> Vec<String> {
    let mut reasons = missing(tools);
    for (tool, package) in PODMAN_TOOLS {
        if find_tool(tool).is_none() {
            reasons.push(format!("`{tool}` not found in PATH: install {package} (apt-get install -y {package}, or scripts/bootstrap)"));
        }
    }
    for (file, package) in PODMAN_FILES {
        if !Path::new(file).exists() {
            reasons.push(format!("{file} not found: apt-get install -y {package}"));
        }
    }
    if let Err(e) = check_ulimits(&repo_containers_conf()) {
        reasons.push(format!("{e:#}"));
    }
    reasons
}

/// Check root and every tool; under `CI=true` a missing one panics, naming what to
/// install; otherwise prints `SKIP: …` and returns `false` (the test returns).
pub fn require(tools: &[&str]) -> bool {
    let reasons = missing_prereqs(tools);
    if reasons.is_empty() {
        return true;
    }
    let text = reasons.join("; ");
    if in_ci() {
        panic!("podman e2e prerequisite missing under CI=true (install it): {text}");
    }
    eprintln!("SKIP: podman e2e prerequisite missing: {text}");
    false
}

/// `default_ulimits` of `conf` (`"nofile=8192:8192"`, …) against the hard limits in
/// `/proc/self/limits`.
fn check_ulimits(conf: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(conf).with_context(|| format!("read {}", conf.display()))?;
    let limits = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let hard = |row: &str| -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with(row))?;
        let fields: Vec<&str> = line[row.len()..].split_whitespace().collect();
        match fields.get(1) {
            Some(&"unlimited") => Some(u64::MAX),
            Some(v) => v.parse().ok(),
            None => None,
        }
    };
    for entry in text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"') && l.contains('='))
    {
        let entry = entry.trim_end_matches(',').trim_matches('"');
        let Some((name, values)) = entry.split_once('=') else {
            continue;
        };
        let row = match name {
            "nofile" => "Max open files",
            "nproc" => "Max processes",
            _ => continue,
        };
        let want: u64 = values
            .rsplit(':')
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}: default_ulimits entry `{entry}`", conf.display()))?;
        let have = hard(row).with_context(|| format!("no `{row}` in /proc/self/limits"))?;
        ensure!(
            want <= have,
            "{}: default_ulimits `{entry}` is above this machine's hard limit {have} \
             (`ulimit -H`); rootful Podman cannot raise it without CAP_SYS_RESOURCE — lower it",
            conf.display()
        );
    }
    Ok(())
}

/// Run a program with a timeout and capture its output.
fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> CmdOutput {
    let cmdline = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &PODMAN_TIMEOUT_SECS.to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) => CmdOutput {
            cmdline,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) => panic!("cannot spawn `{cmdline}`: {e} (need coreutils `timeout`)"),
    }
}

/// `podman ARGS…` with `CONTAINERS_CONF=conf`.
pub fn podman(conf: &Path, args: &[&str]) -> CmdOutput {
    run("podman", args, &[("CONTAINERS_CONF", conf)])
}

/// The image references the pod uses.
#[derive(Debug, Clone)]
pub struct Images {
    /// `localhost/palisade-sidecar:<tag>` (init and sidecar).
    pub sidecar: String,
    /// `localhost/palisade-shim:<tag>` (the init copy of the shim).
    pub shim: String,
    /// `localhost/palisade-e2e-agent:<tag>` (python3 and `e2e/podman/agent.py`).
    pub agent: String,
}

/// Build the sidecar and shim images with `scripts/images --debug --tag TAG` (the debug
/// binaries of `cargo build --workspace`, a static shim) and the agent image with
/// `e2e/podman/agent-image TAG`.
pub fn build_images(tag: &str) -> anyhow::Result<Images> {
    let root = repo_root();
    let conf = repo_containers_conf();
    let env = [("CONTAINERS_CONF", conf.as_path())];
    let images = root.join("scripts/images").display().to_string();
    run(&images, &["--debug", "--tag", tag, "sidecar", "shim"], &env).ok_or_fail()?;
    let agent = root.join("e2e/podman/agent-image").display().to_string();
    run(&agent, &[tag], &env).ok_or_fail()?;
    Ok(Images {
        sidecar: format!("localhost/palisade-sidecar:{tag}"),
        shim: format!("localhost/palisade-shim:{tag}"),
        agent: format!("localhost/palisade-e2e-agent:{tag}"),
    })
}

/// A Podman network the test owns: `podman network create --internal --disable-dns` with
/// its own /24, whose bridge (created here, before Podman would, and with no address on
/// the host) holds one more member, a veth into [`PodNetwork::upstream`]: a namespace with
/// `<prefix>.1` and `<prefix>.254`, where the test runs its servers. The pod can reach
/// nothing else. Dropped: the network, the bridge and the namespace are removed.
#[derive(Debug)]
pub struct PodNetwork {
    /// The Podman network name.
    pub name: String,
    /// The first three octets of the /24 (`10.213.7`).
    pub prefix: String,
    /// The bridge's interface name (`cni-podmanN`).
    pub bridge: String,
    /// The namespace on the other end of the veth; its interface is [`Self::upstream_if`].
    pub upstream: Netns,
    /// The upstream namespace's interface on the bridge.
    pub upstream_if: String,
    /// `CONTAINERS_CONF` for this network's pods: `images/containers.conf` plus
    /// `dns_servers = ["<prefix>.1"]` (the cluster DNS of this test).
    pub conf: PathBuf,
    host_if: String,
    bridge_created: bool,
}

impl PodNetwork {
    /// Create the network, the bridge and the upstream namespace.
    pub fn create() -> anyhow::Result<PodNetwork> {
        let base = repo_containers_conf();
        let prefix = free_prefix(&base)?;
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let name = format!("{NETWORK_PREFIX}{tag}");
        podman(
            &base,
            &[
                "network",
                "create",
                "--internal",
                "--disable-dns",
                "--subnet",
                &format!("{prefix}.0/24"),
                &name,
            ],
        )
        .ok_or_fail()?;
        let upstream = Netns::new("up")?;
        let mut net = PodNetwork {
            name,
            prefix: prefix.clone(),
            bridge: String::new(),
            upstream,
            upstream_if: format!("plu{tag}"),
            conf: PathBuf::new(),
            host_if: format!("plh{tag}"),
            bridge_created: false,
        };
        net.bridge = podman(
            &base,
            &[
                "network",
                "inspect",
                "--format",
                "{{.NetworkInterface}}",
                &net.name,
            ],
        )
        .ok_or_fail()?
        .stdout
        .trim()
        .to_owned();
        ensure!(
            !net.bridge.is_empty(),
            "podman network inspect {} named no bridge",
            net.name
        );
        if !Path::new("/sys/class/net").join(&net.bridge).exists() {
            ip(&["link", "add", &net.bridge, "type", "bridge"])?;
            net.bridge_created = true;
        }
        ip(&["link", "set", &net.bridge, "up"])?;
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.upstream_if,
        ])?;
        ip(&[
            "link",
            "set",
            &net.upstream_if,
            "netns",
            net.upstream.name(),
        ])?;
        ip(&["link", "set", &net.host_if, "master", &net.bridge, "up"])?;
        for host in [UPSTREAM_HOST, DENIED_HOST] {
            net.upstream
                .run([
                    "ip",
                    "addr",
                    "add",
                    &format!("{prefix}.{host}/24"),
                    "dev",
                    &net.upstream_if,
                ])
                .ok_or_fail()?;
        }
        net.upstream
            .run(["ip", "link", "set", &net.upstream_if, "up"])
            .ok_or_fail()?;
        net.conf = net.upstream.workdir().join("containers.conf");
        let text =
            std::fs::read_to_string(&base).with_context(|| format!("read {}", base.display()))?;
        ensure!(
            text.contains("\n[containers]\n"),
            "{} has no [containers] table",
            base.display()
        );
        let text = text.replacen(
            "\n[containers]\n",
            &format!(
                "\n[containers]\n# The test's DNS server, in its upstream namespace.\n\
                 dns_servers = [\"{}\"]\ndns_searches = [\".\"]\n",
                net.addr(UPSTREAM_HOST)
            ),
            1,
        );
        std::fs::write(&net.conf, text).with_context(|| format!("write {}", net.conf.display()))?;
        Ok(net)
    }

    /// `<prefix>.<host>`.
    pub fn addr(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let rm = podman(
            &repo_containers_conf(),
            &["network", "rm", "-f", &self.name],
        );
        if !rm.success() {
            eprintln!("podman e2e teardown: {rm}");
        }
        let _ = ip(&["link", "del", &self.host_if]);
        if self.bridge_created || Path::new("/sys/class/net").join(&self.bridge).exists() {
            // CNI's bridge plugin never deletes the bridge it used.
            let _ = ip(&["link", "del", &self.bridge]);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args, &[]).ok_or_fail().map(|_| ())
}

/// A `10.213.N` no route and no Podman/CNI network of this host uses.
fn free_prefix(conf: &Path) -> anyhow::Result<String> {
    let routes = run("ip", &["-4", "route", "show", "table", "all"], &[])
        .ok_or_fail()?
        .stdout;
    let networks = podman(
        conf,
        &[
            "network",
            "ls",
            "--format",
            "{{range .Subnets}}{{.Subnet}} {{end}}",
        ],
    )
    .ok_or_fail()?
    .stdout;
    for _ in 0..64 {
        let n = 16 + rand::random::<u8>() % 224;
        let prefix = format!("10.213.{n}");
        let needle = format!("{prefix}.");
        if !routes.contains(&needle) && !networks.contains(&needle) {
            return Ok(prefix);
        }
    }
    bail!("no free 10.213.N.0/24 for the test network (see `ip route`, `podman network ls`)")
}

/// One pod played from a YAML file (`podman kube play`). Dropped: its logs are printed if
/// the test is failing, then `podman kube down` and `podman pod rm -f`, and the secrets
/// the test created for it are removed.
#[derive(Debug)]
pub struct KubePod {
    /// The pod's name (`metadata.name`).
    pub name: String,
    /// The played YAML.
    pub yaml: PathBuf,
    conf: PathBuf,
    secrets: Vec<String>,
    empty_dirs: Vec<EmptyDir>,
}

impl KubePod {
    /// The pod `name` of `yaml` (written from a [`Podman43Manifest`] with `empty_dirs`),
    /// not yet played; `secrets` are Podman secrets made for it. On drop those, the
    /// emptyDir volumes and the volumes Podman made for the pod's ConfigMaps and Secrets
    /// are removed.
    pub fn new(
        conf: &Path,
        name: &str,
        yaml: &Path,
        secrets: Vec<String>,
        empty_dirs: Vec<EmptyDir>,
    ) -> KubePod {
        KubePod {
            name: name.to_owned(),
            yaml: yaml.to_path_buf(),
            conf: conf.to_path_buf(),
            secrets,
            empty_dirs,
        }
    }

    /// Make the emptyDir volumes (as Kubernetes does: fresh, mode 0777, a tmpfs for
    /// `medium: Memory`), then `podman kube play --start=false --network NET --ip IP
    /// YAML`: every container is created (and can be inspected) but nothing runs yet.
    pub fn create(&self, network: &PodNetwork, pod_ip: &str) -> anyhow::Result<CmdOutput> {
        for dir in &self.empty_dirs {
            let mut args = vec!["volume", "create"];
            if dir.memory {
                args.extend([
                    "--opt",
                    "type=tmpfs",
                    "--opt",
                    "device=tmpfs",
                    "--opt",
                    "o=mode=0777",
                ]);
            }
            args.push(&dir.volume);
            self.podman(&args).ok_or_fail()?;
            if !dir.memory {
                let mountpoint = self
                    .podman(&[
                        "volume",
                        "inspect",
                        "--format",
                        "{{.Mountpoint}}",
                        &dir.volume,
                    ])
                    .ok_or_fail()?;
                let path = Path::new(mountpoint.stdout.trim());
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
                    .with_context(|| format!("chmod 0777 {}", path.display()))?;
            }
        }
        let yaml = self.yaml.display().to_string();
        self.podman(&[
            "kube",
            "play",
            "--start=false",
            "--network",
            &network.name,
            "--ip",
            pod_ip,
            &yaml,
        ])
        .ok_or_fail()
    }

    /// `podman pod start`: init containers in order, then the containers.
    pub fn start(&self) -> anyhow::Result<()> {
        self.podman(&["pod", "start", &self.name])
            .ok_or_fail()
            .map(|_| ())
    }

    /// The Podman name of container `container` of this pod (`<pod>-<container>`).
    pub fn container(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    /// `podman ARGS…` with this pod's `CONTAINERS_CONF`.
    pub fn podman(&self, args: &[&str]) -> CmdOutput {
        podman(&self.conf, args)
    }

    /// `podman exec [--env K=V…] <container> ARGV…` (as the container's user, with its
    /// capabilities and no_new_privs).
    pub fn exec(&self, container: &str, env: &[&str], argv: &[&str]) -> CmdOutput {
        let name = self.container(container);
        let mut args = vec!["exec"];
        for e in env {
            args.extend(["--env", e]);
        }
        args.push(&name);
        args.extend(argv);
        self.podman(&args)
    }

    /// `podman container inspect` of one container (the first object).
    pub fn inspect(&self, container: &str) -> anyhow::Result<serde_json::Value> {
        let out = self
            .podman(&["container", "inspect", &self.container(container)])
            .ok_or_fail()?;
        let mut all: Vec<serde_json::Value> =
            serde_json::from_str(&out.stdout).context("podman container inspect: not JSON")?;
        ensure!(!all.is_empty(), "podman container inspect printed nothing");
        Ok(all.swap_remove(0))
    }

    /// The host PID of a running container's process 1.
    pub fn pid(&self, container: &str) -> anyhow::Result<u32> {
        let state = self.inspect(container)?;
        let pid = state["State"]["Pid"].as_u64().unwrap_or(0);
        ensure!(
            pid > 0,
            "{} is not running: {}",
            self.container(container),
            state["State"]
        );
        Ok(u32::try_from(pid)?)
    }

    /// stdout + stderr of a container (`podman logs`).
    pub fn logs(&self, container: &str) -> String {
        let out = self.podman(&["logs", &self.container(container)]);
        format!("{}{}", out.stdout, out.stderr)
    }

    /// The exit codes container `container` died with so far, from `podman events` (init
    /// containers are removed once they have run, so their record is there).
    pub fn exits(&self, container: &str) -> anyhow::Result<Vec<i64>> {
        let out = self
            .podman(&[
                "events",
                "--stream=false",
                "--since",
                "10m",
                "--filter",
                &format!("container={}", self.container(container)),
                "--filter",
                "event=died",
                "--format",
                "json",
            ])
            .ok_or_fail()?;
        let mut exits = Vec::new();
        for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("podman events: {line}"))?;
            exits.push(v["ContainerExitCode"].as_i64().unwrap_or(0));
        }
        Ok(exits)
    }

    /// Every container's state and logs, and the pod's events, on stderr.
    pub fn dump(&self) {
        let ps = self.podman(&[
            "ps",
            "-a",
            "--filter",
            &format!("pod={}", self.name),
            "--format",
            "{{.Names}}",
        ]);
        eprintln!("==== podman pod {} ====\n{ps}", self.name);
        for name in ps.stdout.lines().filter(|l| !l.is_empty()) {
            let logs = self.podman(&["logs", name]);
            eprintln!(
                "---- {name} ----\n{}{}",
                logs.stdout.trim_end(),
                logs.stderr.trim_end()
            );
        }
        let events = self.podman(&["events", "--stream=false", "--since", "10m"]);
        let ours: Vec<&str> = events
            .stdout
            .lines()
            .filter(|l| l.contains(&self.name))
            .collect();
        eprintln!("---- events ----\n{}", ours.join("\n"));
    }
}

impl Drop for KubePod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let yaml = self.yaml.display().to_string();
        let down = self.podman(&["kube", "down", &yaml]);
        let rm = self.podman(&["pod", "rm", "-f", "--ignore", &self.name]);
        if !rm.success() {
            eprintln!("podman e2e teardown: {down}\n{rm}");
        }
        for secret in &self.secrets {
            let _ = self.podman(&["secret", "rm", secret]);
        }
        // Podman keeps a named volume per ConfigMap and Secret the pod mounted (named
        // like them: `<pod>-palisade`, the secret's name) and the emptyDirs made above.
        let volumes = self.podman(&["volume", "ls", "--quiet"]);
        for volume in volumes.stdout.lines().map(str::trim) {
            let ours = volume.starts_with(&format!("{}-", self.name))
                || self.secrets.iter().any(|s| s == volume)
                || self.empty_dirs.iter().any(|e| e.volume == volume);
            if ours {
                let _ = self.podman(&["volume", "rm", "-f", volume]);
            }
        }
    }
}

/// A Podman secret holding a Kubernetes `Secret` object (what `podman kube play` mounts
/// for a pod's `secret` volume) with `entries` (key → value) in `data`, *not*
/// base64-encoded: Podman 4.3 writes `data` values into the volume as they are (where
/// Kubernetes decodes them) and ignores `stringData`. Removed by the [`KubePod`] it is
/// given to.
pub fn create_secret(
    conf: &Path,
    dir: &Path,
    name: &str,
    entries: &[(&str, &str)],
) -> anyhow::Result<String> {
    let data: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": data,
    });
    let file = dir.join(format!("{name}.secret.json"));
    std::fs::write(&file, serde_json::to_vec(&object)?)
        .with_context(|| format!("write {}", file.display()))?;
    let path = file.display().to_string();
    let created = podman(conf, &["secret", "create", name, &path]).ok_or_fail();
    // The secret value is in Podman's store now; the file is not needed.
    let _ = std::fs::remove_file(&file);
    created?;
    Ok(name.to_owned())
}

/// An `emptyDir` of the pod, as [`podman43_compatible`] renamed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyDir {
    /// The volume's name in the pod spec, as rendered.
    pub rendered: String,
    /// The Podman volume name it has now (`<pod>-<rendered>`).
    pub volume: String,
    /// `medium: Memory` (a tmpfs).
    pub memory: bool,
}

/// The manifest Podman 4.3 plays, and every change made to it.
#[derive(Debug, Clone)]
pub struct Podman43Manifest {
    /// The YAML to play.
    pub yaml: String,
    /// Annotation keys removed.
    pub removed_annotations: Vec<String>,
    /// The pod's emptyDirs, renamed.
    pub empty_dirs: Vec<EmptyDir>,
}

/// What Podman 4.3 needs changed in a manifest Kubernetes accepts, and nothing else:
///
/// * it refuses annotation values longer than 63 characters (it applies the label-value
///   limit; Kubernetes has none per value): those annotations are removed;
/// * it plays an `emptyDir` as a *named* volume called like the pod's volume — shared by
///   every pod using that name, outliving the pod, disk-backed even for `medium: Memory`,
///   owned by whichever container mounts it first with mode 0755 — so each is renamed
///   `<pod>-<name>` (in `volumes` and every `volumeMounts`) for [`KubePod::create`] to
///   make as Kubernetes would: a fresh directory, mode 0777, a tmpfs for `Memory`.
pub fn podman43_compatible(yaml: &str) -> anyhow::Result<Podman43Manifest> {
    use serde::Deserialize as _;
    use serde_yaml_ng::Value;
    let mut docs = Vec::new();
    let mut removed_annotations = Vec::new();
    let mut empty_dirs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let mut value = Value::deserialize(doc).context("the rendered YAML does not parse")?;
        if let Some(annotations) = value
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(|a| a.as_mapping_mut())
        {
            let long: Vec<Value> = annotations
                .iter()
                .filter(|(_, v)| v.as_str().is_some_and(|s| s.len() > 63))
                .map(|(k, _)| k.clone())
                .collect();
            for key in long {
                annotations.remove(&key);
                removed_annotations.push(key.as_str().unwrap_or_default().to_owned());
            }
        }
        let is_pod = value.get("kind").and_then(Value::as_str) == Some("Pod");
        let pod_name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(spec) = value.get_mut("spec").filter(|_| is_pod) {
            let mut renamed = Vec::new();
            for volume in spec
                .get_mut("volumes")
                .and_then(Value::as_sequence_mut)
                .into_iter()
                .flatten()
            {
                let Some(empty) = volume.get("emptyDir") else {
                    continue;
                };
                let memory = empty.get("medium").and_then(Value::as_str) == Some("Memory");
                let rendered = volume
                    .get("name")
                    .and_then(Value::as_str)
                    .context("a volume without a name")?
                    .to_owned();
                let new = format!("{pod_name}-{rendered}");
                volume["name"] = Value::from(new.clone());
                renamed.push(EmptyDir {
                    rendered,
                    volume: new,
                    memory,
                });
            }
            for list in ["initContainers", "containers"] {
                for container in spec
                    .get_mut(list)
                    .and_then(Value::as_sequence_mut)
                    .into_iter()
                    .flatten()
                {
                    for mount in container
                        .get_mut("volumeMounts")
                        .and_then(Value::as_sequence_mut)
                        .into_iter()
                        .flatten()
                    {
                        let name = mount.get("name").and_then(Value::as_str);
                        if let Some(e) = renamed.iter().find(|e| Some(e.rendered.as_str()) == name)
                        {
                            mount["name"] = Value::from(e.volume.clone());
                        }
                    }
                }
            }
            empty_dirs.extend(renamed);
        }
        docs.push(serde_yaml_ng::to_string(&value)?);
    }
    Ok(Podman43Manifest {
        yaml: docs.join("---\n"),
        removed_annotations,
        empty_dirs,
    })
}

/// Wait up to `timeout` for `check` to give a value.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const POD: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: demo-palisade
---
apiVersion: v1
kind: Pod
metadata:
  name: demo
  annotations:
    short: ok
    palisade.dev/policy-revision: sha256:0123456789012345678901234567890123456789012345678901234567890123
spec:
  initContainers:
  - name: init
    volumeMounts:
    - {name: run, mountPath: /run}
  containers:
  - name: agent
    volumeMounts:
    - {name: shared, mountPath: /var/run/palisade}
    - {name: config, mountPath: /etc/palisade/config}
  volumes:
  - {name: run, emptyDir: {medium: Memory}}
  - {name: shared, emptyDir: {}}
  - {name: config, configMap: {name: demo-palisade}}
";

    #[test]
    fn podman43_removes_long_annotations_and_renames_empty_dirs_only() {
        let m = podman43_compatible(POD).unwrap();
        assert_eq!(m.removed_annotations, ["palisade.dev/policy-revision"]);
        let dirs: Vec<(&str, &str, bool)> = m
            .empty_dirs
            .iter()
            .map(|e| (e.rendered.as_str(), e.volume.as_str(), e.memory))
            .collect();
        assert_eq!(
            dirs,
            [("run", "demo-run", true), ("shared", "demo-shared", false)]
        );
        assert!(m.yaml.contains("short: ok"), "{}", m.yaml);
        assert!(m.yaml.contains("name: demo-run"), "{}", m.yaml);
        assert!(m.yaml.contains("name: demo-shared"), "{}", m.yaml);
        // The ConfigMap volume and the ConfigMap itself keep their names.
        assert!(m.yaml.contains("name: config"), "{}", m.yaml);
        assert!(m.yaml.contains("name: demo-palisade"), "{}", m.yaml);
        assert!(!m.yaml.contains("name: run\n"), "{}", m.yaml);
        assert_eq!(m.yaml.matches("---\n").count(), 1, "{}", m.yaml);
    }

    #[test]
    fn ulimits_above_the_hard_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\n  \"nofile=1:1\",\n  \"nproc=1:1\",\n]\n",
        )
        .unwrap();
        check_ulimits(&conf).unwrap();
        // Above any hard limit a machine can have for open files (the kernel's nr_open
        // ceiling is 2^30 by default and at most INT_MAX) unless it is "unlimited".
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\n  \"nofile=99999999999:99999999999\",\n]\n",
        )
        .unwrap();
        let err = check_ulimits(&conf).unwrap_err().to_string();
        assert!(err.contains("above this machine's hard limit"), "{err}");
    }
}
