//! The launch plan of one sandbox, decided once and without I/O: which
//! directories and files it gets, what runs (`palisade-sidecar init`, the
//! sidecar, `palisade-shim -- CMD`), as which UID, with which arguments and
//! environment, in which network and with which process isolation.
//!
//! Drivers only render a [`LaunchPlan`]: the local driver into `unshare` +
//! `ip netns exec` + `setpriv` command lines and files under its run dir; a
//! Kubernetes pod renderer into an init container, two containers, their
//! security contexts and volumes. Paths in a plan are where the processes see
//! their directories ([`Layout`]), so each driver chooses them.
//!
//! [`plan`] is the local driver's plan (the programs' default UIDs, the
//! launch's one-time bootstrap token); [`plan_with`] takes [`PlanOptions`] for
//! what a pod needs besides: UIDs resolved for the namespace (passed to
//! `palisade-sidecar init` and the shim explicitly), the projected
//! ServiceAccount token instead of a token file, the gateway's CA, a SPIFFE
//! Workload API socket, and no planned HOME for an image that brings its own.
//!
//! Must never: put the bootstrap token anywhere but the sidecar's 0600 file
//! (its bytes are never `Debug`-printed), give the agent a UID, capability or
//! file of the sidecar, or leave the agent unconfined in a [`Network::Captured`]
//! sandbox.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use palisade_api::defaults::{
    AGENT_GID, AGENT_UID, CA_BUNDLE_NAME, EXIT_FILE_NAME, READY_FILE_NAME, SHIM_SOCKET_NAME,
    SIDECAR_GID, SIDECAR_UID,
};

use super::contract::{DriverError, Launch};

/// Command of a sandbox created without one.
pub const DEFAULT_COMMAND: &[&str] = &["sleep", "infinity"];

/// Where the sidecar gets its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicySource {
    /// `--gateway`: identity, policy and credentials over the gateway session.
    Gateway,
    /// `--policy FILE`: the policy text at create time, written to a file (no
    /// live updates, no gateway-sourced credentials).
    File,
}

/// Where a sandbox's directories are, as its processes see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The sidecar's own: bootstrap token, policy file, upstream CA copy.
    pub sidecar: PathBuf,
    /// Shared by sidecar and agent (a pod's memory emptyDir): ready file, CA
    /// bundle, the agent's exit file, the shim's session socket.
    pub shared: PathBuf,
    /// The agent's HOME.
    pub home: PathBuf,
}

/// The sidecar's listeners when it cannot take the default ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarPorts {
    pub outbound: u16,
    pub dns: u16,
    pub explicit_proxy: u16,
    pub admin: u16,
}

/// How a sandbox's traffic is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own, in which `palisade-sidecar init`
    /// installs capture and fence first; the sidecar takes the default ports.
    Captured,
    /// The host's network, nothing captured (development): the sidecar
    /// listens on loopback `ports` and the agent is pointed at its explicit
    /// proxy. NOT a security boundary.
    Shared(SidecarPorts),
}

/// The program a process runs; a driver maps it to a binary or an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Sidecar,
    Shim,
}

/// Which part of the sandbox a process is (also its log prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `palisade-sidecar init`: capture and fence, then it exits.
    Init,
    Sidecar,
    Agent,
}

impl Part {
    pub fn label(self) -> &'static str {
        match self {
            Part::Init => "init",
            Part::Sidecar => "sidecar",
            Part::Agent => "agent",
        }
    }
}

/// Who a process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Root in the sandbox's network namespace: `palisade-sidecar init`,
    /// which needs NET_ADMIN and NET_RAW (a pod grants it those two only).
    NetworkAdmin,
    /// `uid`/`gid`, no supplementary groups, every capability set cleared,
    /// `no_new_privs`.
    Dropped { uid: u32, gid: u32 },
    /// As the driver itself runs (development: no UID change, NOT a boundary).
    Unchanged,
}

/// One process of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub part: Part,
    pub program: Program,
    /// Arguments after the program.
    pub args: Vec<OsString>,
    /// Its environment beyond what every process gets from its driver (the
    /// local driver: `PATH` and `LANG`; nothing of the gateway's own).
    pub env: Vec<(String, OsString)>,
    pub privilege: Privilege,
    /// A PID namespace and `/proc` of its own: it sees its own processes only.
    pub own_pid_namespace: bool,
}

/// Owner of a planned directory or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A directory of the [`Layout`], with its mode and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDir {
    pub path: PathBuf,
    pub mode: u32,
    pub owner: Owner,
}

/// What a planned file holds. `Debug` shows lengths only.
#[derive(Clone, PartialEq, Eq)]
pub enum Contents {
    /// A credential (the bootstrap token).
    Secret(Vec<u8>),
    /// Not secret, still not for logs (a policy, a CA certificate).
    Plain(Vec<u8>),
}

impl Contents {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Contents::Secret(b) | Contents::Plain(b) => b,
        }
    }
}

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contents::Secret(b) => write!(f, "Secret(<redacted, {} bytes>)", b.len()),
            Contents::Plain(b) => write!(f, "Plain({} bytes)", b.len()),
        }
    }
}

/// A file written (created new, never overwritten) before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub contents: Contents,
    pub mode: u32,
    pub owner: Owner,
}

/// How the sidecar reaches the gateway.
#[derive(Debug, Clone, Copy)]
pub struct GatewayLink<'a> {
    pub url: &'a str,
    /// `--gateway-insecure-plaintext` (the local driver's gateway has no TLS).
    pub insecure_plaintext: bool,
}

/// The UIDs and GIDs of the sandbox's two confined processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub sidecar: Owner,
    pub agent: Owner,
}

impl Ids {
    /// The programs' defaults (`palisade_api::defaults`): sidecar 1337/1337,
    /// agent 1000/1000.
    pub const DEFAULT: Ids = Ids {
        sidecar: SIDECAR,
        agent: AGENT,
    };
}

/// How the sidecar proves to the gateway which sandbox it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The launch's one-time token, written to the sidecar's 0600 file
    /// (`--token-file`; the local driver).
    OneTimeToken,
    /// A projected ServiceAccount token the driver mounts at this path, into
    /// the sidecar only (`--k8s-sa-token-file`); no token file is planned.
    ServiceAccountToken(PathBuf),
}

/// What [`plan_with`] takes beyond a [`PlanRequest`]; [`PlanOptions::local`]
/// is what [`plan`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// `None`: [`Ids::DEFAULT`], which every program assumes without a flag.
    /// `Some`: these, also passed explicitly to `palisade-sidecar init`
    /// (`--sidecar-uid`, `--sidecar-gid`: whose traffic the capture and the
    /// fence exempt) and to the shim (`--sidecar-uid`: the only peer of its
    /// session socket).
    pub ids: Option<Ids>,
    pub bootstrap: Bootstrap,
    /// PEM of the CA that verifies the gateway's certificate (planned as
    /// `gateway-ca.pem` in the sidecar's dir, `--gateway-ca`).
    pub gateway_ca: Option<Vec<u8>>,
    /// The SPIFFE Workload API socket as the sidecar sees it
    /// (`--spiffe-endpoint-socket`).
    pub spiffe_socket: Option<PathBuf>,
    /// Plan the agent's HOME ([`Layout::home`], `--home`). `false`: the image's.
    pub agent_home: bool,
}

impl PlanOptions {
    /// The local driver's: default UIDs, the one-time token, a planned HOME.
    pub fn local() -> Self {
        Self {
            ids: None,
            bootstrap: Bootstrap::OneTimeToken,
            gateway_ca: None,
            spiffe_socket: None,
            agent_home: true,
        }
    }
}

/// Everything a plan is made from.
#[derive(Debug)]
pub struct PlanRequest<'a> {
    pub launch: &'a Launch<'a>,
    pub gateway: GatewayLink<'a>,
    pub policy_source: PolicySource,
    /// PEM of an extra CA the sidecar trusts for upstream servers (read by
    /// the driver, copied into the sidecar's dir).
    pub upstream_ca: Option<Vec<u8>>,
    pub network: Network,
    pub layout: &'a Layout,
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub network: Network,
    /// Created first, in this order.
    pub dirs: Vec<PlannedDir>,
    /// Written next, in this order.
    pub files: Vec<PlannedFile>,
    /// Run to completion before the others ([`Network::Captured`] only).
    pub init: Option<ProcessPlan>,
    /// Started next.
    pub sidecar: ProcessPlan,
    /// Started last; it waits for the sidecar's ready file itself.
    pub agent: ProcessPlan,
}

const SIDECAR: Owner = Owner {
    uid: SIDECAR_UID,
    gid: SIDECAR_GID,
};
const AGENT: Owner = Owner {
    uid: AGENT_UID,
    gid: AGENT_GID,
};

/// The local driver's plan of `req.launch`: [`plan_with`] and
/// [`PlanOptions::local`].
pub fn plan(req: &PlanRequest<'_>) -> Result<LaunchPlan, DriverError> {
    plan_with(req, &PlanOptions::local())
}

/// The plan of `req.launch` with `opts`. Fails only on a launch the request
/// cannot run (a file-sourced policy that the sandbox does not have).
pub fn plan_with(req: &PlanRequest<'_>, opts: &PlanOptions) -> Result<LaunchPlan, DriverError> {
    let layout = req.layout;
    let sandbox = req.launch.sandbox;
    let ids = opts.ids.unwrap_or(Ids::DEFAULT);
    let (sidecar_owner, agent_owner) = (ids.sidecar, ids.agent);
    let mut dirs = vec![
        PlannedDir {
            path: layout.sidecar.clone(),
            mode: 0o700,
            owner: sidecar_owner,
        },
        // Like the pod's shared emptyDir: sidecar and agent both write here.
        PlannedDir {
            path: layout.shared.clone(),
            mode: 0o770,
            owner: Owner {
                uid: sidecar_owner.uid,
                gid: agent_owner.gid,
            },
        },
    ];
    if opts.agent_home {
        dirs.push(PlannedDir {
            path: layout.home.clone(),
            mode: 0o700,
            owner: agent_owner,
        });
    }
    let sidecar_file = |name: &str, contents: Contents, mode: u32| PlannedFile {
        path: layout.sidecar.join(name),
        contents,
        mode,
        owner: sidecar_owner,
    };

    let mut files = Vec::new();
    let bootstrap_args: [OsString; 2] = match &opts.bootstrap {
        Bootstrap::OneTimeToken => {
            let token = sidecar_file(
                "bootstrap-token",
                Contents::Secret(req.launch.bootstrap_token.as_bytes().to_vec()),
                0o600,
            );
            let path = token.path.clone();
            // Written whatever the policy source (a file-policy sidecar is not told of it).
            files.push(token);
            ["--token-file".into(), path.into()]
        }
        Bootstrap::ServiceAccountToken(path) => ["--k8s-sa-token-file".into(), path.clone().into()],
    };
    let mut sidecar_args: Vec<OsString> = vec!["run".into()];
    match req.policy_source {
        PolicySource::Gateway => {
            sidecar_args.extend(["--gateway".into(), req.gateway.url.into()]);
            if req.gateway.insecure_plaintext {
                sidecar_args.push("--gateway-insecure-plaintext".into());
            }
            if let Some(pem) = &opts.gateway_ca {
                let ca = sidecar_file("gateway-ca.pem", Contents::Plain(pem.clone()), 0o644);
                sidecar_args.extend(["--gateway-ca".into(), ca.path.clone().into()]);
                files.push(ca);
            }
            sidecar_args.extend(["--sandbox-id".into(), sandbox.id.as_str().into()]);
            sidecar_args.extend(bootstrap_args);
        }
        PolicySource::File => {
            let text = req.launch.policy.ok_or_else(|| {
                DriverError::failed(
                    "this sandbox has no policy; create it with --policy (the sidecar runs \
                     with --sidecar-policy-source file)",
                )
            })?;
            let policy = sidecar_file(
                "policy.yaml",
                Contents::Plain(text.as_bytes().to_vec()),
                0o600,
            );
            sidecar_args.extend(["--policy".into(), policy.path.clone().into()]);
            files.push(policy);
        }
    }
    let ready = layout.shared.join(READY_FILE_NAME);
    let socket = layout.shared.join(SHIM_SOCKET_NAME);
    sidecar_args.extend([
        "--shared-dir".into(),
        layout.shared.clone().into(),
        "--ready-file".into(),
        ready.clone().into(),
        "--shim-socket".into(),
        socket.clone().into(),
    ]);
    if let Some(pem) = &req.upstream_ca {
        let ca = sidecar_file("upstream-ca.pem", Contents::Plain(pem.clone()), 0o644);
        sidecar_args.extend(["--upstream-ca".into(), ca.path.clone().into()]);
        files.push(ca);
    }
    if let Some(socket) = &opts.spiffe_socket {
        sidecar_args.extend(["--spiffe-endpoint-socket".into(), socket.clone().into()]);
    }

    let mut agent_env: Vec<(String, OsString)> = Vec::new();
    let mut shim_args: Vec<OsString> = Vec::new();
    if let Network::Shared(ports) = req.network {
        sidecar_args.extend(
            [
                format!("--outbound-port={}", ports.outbound),
                format!("--dns-port={}", ports.dns),
                format!("--explicit-proxy-port={}", ports.explicit_proxy),
                format!("--admin-addr=127.0.0.1:{}", ports.admin),
            ]
            .map(OsString::from),
        );
        let proxy = format!("http://127.0.0.1:{}", ports.explicit_proxy);
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            agent_env.push((k.to_owned(), proxy.clone().into()));
        }
        // Nothing is hardened without a namespace: the shim would refuse.
        shim_args.push("--allow-insecure".into());
    }
    if let Some(ids) = opts.ids {
        shim_args.extend(["--sidecar-uid".into(), ids.sidecar.uid.to_string().into()]);
    }
    shim_args.extend([
        "--ready-file".into(),
        ready.into(),
        "--ca-bundle".into(),
        layout.shared.join(CA_BUNDLE_NAME).into(),
        "--exit-file".into(),
        layout.shared.join(EXIT_FILE_NAME).into(),
    ]);
    if opts.agent_home {
        shim_args.extend(["--home".into(), layout.home.clone().into()]);
    }
    shim_args.push("--".into());
    if sandbox.spec.command.is_empty() {
        shim_args.extend(DEFAULT_COMMAND.iter().map(OsString::from));
    } else {
        shim_args.extend(sandbox.spec.command.iter().map(OsString::from));
    }
    agent_env.push(("PALISADE_SESSION_SOCKET".to_owned(), socket.clone().into()));
    let sidecar_env = vec![("PALISADE_SHIM_SOCKET".to_owned(), socket.into_os_string())];

    let mut init_args: Vec<OsString> = vec!["init".into()];
    if let Some(ids) = opts.ids {
        init_args.extend([
            "--sidecar-uid".into(),
            ids.sidecar.uid.to_string().into(),
            "--sidecar-gid".into(),
            ids.sidecar.gid.to_string().into(),
        ]);
    }

    let captured = req.network == Network::Captured;
    let confined = |owner: Owner| {
        if captured {
            Privilege::Dropped {
                uid: owner.uid,
                gid: owner.gid,
            }
        } else {
            Privilege::Unchanged
        }
    };
    Ok(LaunchPlan {
        network: req.network,
        dirs,
        files,
        init: captured.then(|| ProcessPlan {
            part: Part::Init,
            program: Program::Sidecar,
            args: init_args,
            env: Vec::new(),
            privilege: Privilege::NetworkAdmin,
            own_pid_namespace: false,
        }),
        sidecar: ProcessPlan {
            part: Part::Sidecar,
            program: Program::Sidecar,
            args: sidecar_args,
            env: sidecar_env,
            privilege: confined(sidecar_owner),
            own_pid_namespace: captured,
        },
        agent: ProcessPlan {
            part: Part::Agent,
            program: Program::Shim,
            args: shim_args,
            env: agent_env,
            privilege: confined(agent_owner),
            own_pid_namespace: captured,
        },
    })
}

#[cfg(test)]
mod tests {
    use palisade_api::{Sandbox, SandboxId, SandboxSpec};

    use super::*;

    const ID: &str = "sbx-0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "pbt_not-a-real-token-but-secret";

    fn sandbox(command: &[&str]) -> Sandbox {
        Sandbox {
            id: SandboxId::parse(ID).unwrap(),
            spec: SandboxSpec {
                name: "demo".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..SandboxSpec::default()
            },
            owner: "user:admin".into(),
            created_at: 1,
        }
    }

    fn layout() -> Layout {
        Layout {
            sidecar: "/run/p/x/sidecar".into(),
            shared: "/run/p/x/shared".into(),
            home: "/run/p/x/home".into(),
        }
    }

    fn make(
        sandbox: &Sandbox,
        policy: Option<&str>,
        source: PolicySource,
        ca: Option<&[u8]>,
        network: Network,
    ) -> Result<LaunchPlan, DriverError> {
        let launch = Launch {
            sandbox,
            bootstrap_token: TOKEN,
            policy,
        };
        plan(&PlanRequest {
            launch: &launch,
            gateway: GatewayLink {
                url: "http://10.231.0.1:8443",
                insecure_plaintext: true,
            },
            policy_source: source,
            upstream_ca: ca.map(<[u8]>::to_vec),
            network,
            layout: &layout(),
        })
    }

    fn strings(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn captured_sandbox_runs_init_then_two_confined_processes() {
        let sbx = sandbox(&[]);
        let p = make(&sbx, None, PolicySource::Gateway, None, Network::Captured).unwrap();
        let init = p.init.as_ref().expect("init runs in a captured sandbox");
        assert_eq!(strings(&init.args), ["init"]);
        assert_eq!(init.privilege, Privilege::NetworkAdmin);
        assert_eq!(
            strings(&p.sidecar.args),
            [
                "run",
                "--gateway",
                "http://10.231.0.1:8443",
                "--gateway-insecure-plaintext",
                "--sandbox-id",
                ID,
                "--token-file",
                "/run/p/x/sidecar/bootstrap-token",
                "--shared-dir",
                "/run/p/x/shared",
                "--ready-file",
                "/run/p/x/shared/ready",
                "--shim-socket",
                "/run/p/x/shared/shim.sock",
            ]
        );
        assert_eq!(
            p.sidecar.env,
            [(
                "PALISADE_SHIM_SOCKET".to_owned(),
                OsString::from("/run/p/x/shared/shim.sock")
            )]
        );
        assert_eq!(
            strings(&p.agent.args),
            [
                "--ready-file",
                "/run/p/x/shared/ready",
                "--ca-bundle",
                "/run/p/x/shared/ca-bundle.pem",
                "--exit-file",
                "/run/p/x/shared/agent-exit",
                "--home",
                "/run/p/x/home",
                "--",
                "sleep",
                "infinity",
            ]
        );
        assert_eq!(
            p.agent.env,
            [(
                "PALISADE_SESSION_SOCKET".to_owned(),
                OsString::from("/run/p/x/shared/shim.sock")
            )]
        );
        assert_eq!(
            p.sidecar.privilege,
            Privilege::Dropped {
                uid: 1337,
                gid: 1337
            }
        );
        assert_eq!(
            p.agent.privilege,
            Privilege::Dropped {
                uid: 1000,
                gid: 1000
            }
        );
        assert!(p.sidecar.own_pid_namespace && p.agent.own_pid_namespace);
        assert_eq!(
            (p.sidecar.program, p.agent.program),
            (Program::Sidecar, Program::Shim)
        );
        let dirs: Vec<_> = p
            .dirs
            .iter()
            .map(|d| (d.path.to_str().unwrap(), d.mode, d.owner.uid, d.owner.gid))
            .collect();
        assert_eq!(
            dirs,
            [
                ("/run/p/x/sidecar", 0o700, 1337, 1337),
                ("/run/p/x/shared", 0o770, 1337, 1000),
                ("/run/p/x/home", 0o700, 1000, 1000),
            ]
        );
        let [token] = p.files.as_slice() else {
            panic!("{:?}", p.files)
        };
        assert_eq!(
            token.path,
            PathBuf::from("/run/p/x/sidecar/bootstrap-token")
        );
        assert_eq!((token.mode, token.owner), (0o600, SIDECAR));
        assert_eq!(token.contents, Contents::Secret(TOKEN.as_bytes().to_vec()));
    }

    #[test]
    fn shared_network_points_the_agent_at_the_explicit_proxy_and_changes_no_uid() {
        let sbx = sandbox(&["sh", "-c", "echo hi"]);
        let ports = SidecarPorts {
            outbound: 25010,
            dns: 25011,
            explicit_proxy: 25012,
            admin: 25013,
        };
        let p = make(
            &sbx,
            Some("kind: Policy"),
            PolicySource::File,
            Some(b"-----BEGIN CERTIFICATE-----"),
            Network::Shared(ports),
        )
        .unwrap();
        assert_eq!(p.init, None, "nothing to capture without a namespace");
        assert_eq!(
            strings(&p.sidecar.args),
            [
                "run",
                "--policy",
                "/run/p/x/sidecar/policy.yaml",
                "--shared-dir",
                "/run/p/x/shared",
                "--ready-file",
                "/run/p/x/shared/ready",
                "--shim-socket",
                "/run/p/x/shared/shim.sock",
                "--upstream-ca",
                "/run/p/x/sidecar/upstream-ca.pem",
                "--outbound-port=25010",
                "--dns-port=25011",
                "--explicit-proxy-port=25012",
                "--admin-addr=127.0.0.1:25013",
            ]
        );
        assert_eq!(p.agent.args[0], "--allow-insecure");
        assert_eq!(strings(&p.agent.args[10..]), ["sh", "-c", "echo hi"]);
        let env: Vec<_> = p
            .agent
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("HTTP_PROXY", "http://127.0.0.1:25012"),
                ("HTTPS_PROXY", "http://127.0.0.1:25012"),
                ("http_proxy", "http://127.0.0.1:25012"),
                ("https_proxy", "http://127.0.0.1:25012"),
                ("PALISADE_SESSION_SOCKET", "/run/p/x/shared/shim.sock"),
            ]
        );
        for proc in [&p.sidecar, &p.agent] {
            assert_eq!(proc.privilege, Privilege::Unchanged);
            assert!(!proc.own_pid_namespace);
        }
        let files: Vec<_> = p
            .files
            .iter()
            .map(|f| (f.path.file_name().unwrap().to_str().unwrap(), f.mode))
            .collect();
        assert_eq!(
            files,
            [
                ("bootstrap-token", 0o600),
                ("policy.yaml", 0o600),
                ("upstream-ca.pem", 0o644)
            ]
        );
    }

    #[test]
    fn a_file_policy_source_needs_a_policy() {
        let sbx = sandbox(&[]);
        let err = make(&sbx, None, PolicySource::File, None, Network::Captured).unwrap_err();
        assert!(err.to_string().contains("has no policy"), "{err}");
    }

    #[test]
    fn pod_options_pass_the_ids_the_service_account_token_and_the_gateway_ca() {
        let sbx = sandbox(&["agent-cmd"]);
        let launch = Launch {
            sandbox: &sbx,
            bootstrap_token: TOKEN,
            policy: None,
        };
        let ids = Ids {
            sidecar: Owner {
                uid: 1000650001,
                gid: 1000650001,
            },
            agent: Owner {
                uid: 1000650000,
                gid: 1000650000,
            },
        };
        let p = plan_with(
            &PlanRequest {
                launch: &launch,
                gateway: GatewayLink {
                    url: "https://gw.example:8443",
                    insecure_plaintext: false,
                },
                policy_source: PolicySource::Gateway,
                upstream_ca: None,
                network: Network::Captured,
                layout: &layout(),
            },
            &PlanOptions {
                ids: Some(ids),
                bootstrap: Bootstrap::ServiceAccountToken("/var/run/secrets/t/token".into()),
                gateway_ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
                spiffe_socket: Some("/spiffe/agent.sock".into()),
                agent_home: false,
            },
        )
        .unwrap();
        let init = p.init.as_ref().unwrap();
        assert_eq!(
            strings(&init.args),
            [
                "init",
                "--sidecar-uid",
                "1000650001",
                "--sidecar-gid",
                "1000650001"
            ]
        );
        assert_eq!(
            strings(&p.sidecar.args),
            [
                "run",
                "--gateway",
                "https://gw.example:8443",
                "--gateway-ca",
                "/run/p/x/sidecar/gateway-ca.pem",
                "--sandbox-id",
                ID,
                "--k8s-sa-token-file",
                "/var/run/secrets/t/token",
                "--shared-dir",
                "/run/p/x/shared",
                "--ready-file",
                "/run/p/x/shared/ready",
                "--shim-socket",
                "/run/p/x/shared/shim.sock",
                "--spiffe-endpoint-socket",
                "/spiffe/agent.sock",
            ]
        );
        assert_eq!(
            strings(&p.agent.args),
            [
                "--sidecar-uid",
                "1000650001",
                "--ready-file",
                "/run/p/x/shared/ready",
                "--ca-bundle",
                "/run/p/x/shared/ca-bundle.pem",
                "--exit-file",
                "/run/p/x/shared/agent-exit",
                "--",
                "agent-cmd",
            ]
        );
        assert_eq!(
            (p.sidecar.privilege, p.agent.privilege),
            (
                Privilege::Dropped {
                    uid: 1000650001,
                    gid: 1000650001
                },
                Privilege::Dropped {
                    uid: 1000650000,
                    gid: 1000650000
                }
            )
        );
        // No token file: the ServiceAccount token is the driver's mount.
        let files: Vec<_> = p.files.iter().map(|f| f.path.to_str().unwrap()).collect();
        assert_eq!(files, ["/run/p/x/sidecar/gateway-ca.pem"]);
        assert!(!format!("{p:?}").contains(TOKEN));
        let dirs: Vec<_> = p.dirs.iter().map(|d| d.path.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            ["/run/p/x/sidecar", "/run/p/x/shared"],
            "no HOME planned"
        );
    }

    #[test]
    fn debug_never_shows_the_bootstrap_token() {
        let sbx = sandbox(&[]);
        let p = make(&sbx, None, PolicySource::Gateway, None, Network::Captured).unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
