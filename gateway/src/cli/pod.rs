//! `palisade sandbox render` and `palisade inject`: the sandbox pod, printed
//! as YAML for review and GitOps, from the one renderer ([`palisade_gateway::pod`]).
//!
//! Both commands take the same pod flags ([`PodArgs`]: images, topology,
//! policy source, gateway, UIDs and the namespace's OpenShift annotations);
//! this module only turns flags and files into [`PodSettings`] and prints.
//!
//! Must never: contact a gateway or a cluster (both commands are offline), or
//! print anything but the manifests on stdout (warnings go to stderr, so the
//! output pipes into `kubectl apply -f -`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use palisade_api::{Sandbox, SandboxId, SandboxSpec};
use palisade_gateway::driver::plan::PolicySource;
use palisade_gateway::pod::inject::{InjectOptions, inject};
use palisade_gateway::pod::uids::{
    IdSettings, SUPPLEMENTAL_GROUPS_ANNOTATION, UID_RANGE_ANNOTATION,
};
use palisade_gateway::pod::{
    GatewaySettings, PodSettings, PolicyRef, PullPolicy, SandboxPod, Topology, render,
};

use super::remote::fail;

/// The pod flags `sandbox render` and `inject` share.
#[derive(Debug, Args)]
pub struct PodArgs {
    /// Image of `palisade-sidecar` (the `init` and the sidecar containers).
    #[arg(long, value_name = "IMAGE", default_value = palisade_gateway::pod::DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
    /// Image whose entrypoint copies `palisade-shim` into the pod.
    #[arg(long, value_name = "IMAGE", default_value = palisade_gateway::pod::DEFAULT_SHIM_IMAGE)]
    pub shim_image: String,
    /// `imagePullPolicy` of every container (default: the cluster's, by tag).
    #[arg(long, value_enum, value_name = "POLICY")]
    pub image_pull_policy: Option<PullPolicy>,
    /// `native`: the sidecar is an init container with `restartPolicy:
    /// Always` (Kubernetes >= 1.29); `classic`: an ordinary container, for
    /// runtimes without native sidecars (Podman).
    #[arg(long, value_enum, default_value_t = Topology::Native)]
    pub topology: Topology,
    /// `gateway`: the sidecar gets identity, policy and credentials from the
    /// gateway (--gateway-url); `file`: the policy file goes into a ConfigMap.
    #[arg(long, value_enum, default_value_t = PolicySource::Gateway)]
    pub policy_source: PolicySource,
    /// The gateway's URL as the pod reaches it (https://host:port).
    #[arg(long, alias = "gateway", value_name = "URL")]
    pub gateway_url: Option<String>,
    /// PEM file of the CA that verifies the gateway's certificate.
    #[arg(long, value_name = "FILE")]
    pub gateway_ca: Option<String>,
    /// PEM file of trust anchors for upstreams of inspected connections.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<String>,
    /// A Secret mounted read-only at /etc/palisade/secrets into the sidecar
    /// only (a file policy's `from: {file: …}` credentials).
    #[arg(long, value_name = "NAME")]
    pub sidecar_secret: Option<String>,
    /// The pod's ServiceAccount (the one the gateway accepts tokens of).
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// Lifetime of the sidecar's projected ServiceAccount token (600..=3600).
    #[arg(long, value_name = "SECONDS", default_value_t = palisade_gateway::pod::DEFAULT_TOKEN_EXPIRATION_SECONDS)]
    pub token_expiration_seconds: i64,
    /// A SPIFFE CSI driver (e.g. csi.spiffe.io) whose Workload API socket
    /// is mounted into the sidecar only.
    #[arg(long, value_name = "DRIVER")]
    pub spiffe_csi_driver: Option<String>,
    /// Pin the OpenShift SCC the pod is admitted under
    /// (annotation `openshift.io/required-scc`).
    #[arg(long, value_name = "SCC")]
    pub openshift_scc: Option<String>,
    /// The agent's UID (default: the SCC range's first UID, else 1000).
    #[arg(long, value_name = "UID")]
    pub agent_uid: Option<u32>,
    /// The agent's GID and the pod's fsGroup (default: the SCC groups'
    /// first, else the agent's UID).
    #[arg(long, value_name = "GID")]
    pub agent_gid: Option<u32>,
    /// The sidecar's (proxy) UID (default: the next UID of the SCC range,
    /// else 1337).
    #[arg(long, value_name = "UID")]
    pub sidecar_uid: Option<u32>,
    /// The sidecar's GID (default: its UID).
    #[arg(long, value_name = "GID")]
    pub sidecar_gid: Option<u32>,
    /// The namespace's UID range, as OpenShift annotates it
    /// (`openshift.io/sa.scc.uid-range`: START/SIZE or START-END).
    #[arg(long, value_name = "START/SIZE")]
    pub uid_range: Option<String>,
    /// The namespace's supplemental groups
    /// (`openshift.io/sa.scc.supplemental-groups`: START/SIZE[,…]).
    #[arg(long, value_name = "START/SIZE")]
    pub supplemental_groups: Option<String>,
    /// An annotation of the namespace, KEY=VALUE (repeatable); the
    /// `openshift.io/sa.scc.*` ones decide the UIDs.
    #[arg(long = "namespace-annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    pub namespace_annotations: Vec<(String, String)>,
}

impl PodArgs {
    /// The settings, reading the CA files.
    fn settings(&self) -> anyhow::Result<PodSettings> {
        let read = |flag: &str, path: &Option<String>| -> anyhow::Result<Option<Vec<u8>>> {
            path.as_deref()
                .map(|p| std::fs::read(p).with_context(|| format!("{flag}: cannot read {p}")))
                .transpose()
        };
        let gateway_ca = read("--gateway-ca", &self.gateway_ca)?;
        let gateway = match (&self.gateway_url, gateway_ca) {
            (Some(url), ca_pem) => Some(GatewaySettings {
                url: url.clone(),
                ca_pem,
            }),
            (None, Some(_)) => bail!("--gateway-ca needs --gateway-url (the gateway it verifies)"),
            (None, None) => None,
        };
        Ok(PodSettings {
            sidecar_image: self.sidecar_image.clone(),
            shim_image: self.shim_image.clone(),
            pull_policy: self.image_pull_policy,
            ids: IdSettings {
                agent_uid: self.agent_uid,
                agent_gid: self.agent_gid,
                sidecar_uid: self.sidecar_uid,
                sidecar_gid: self.sidecar_gid,
            },
            gateway,
            topology: self.topology,
            policy_source: self.policy_source,
            sidecar_secret: self.sidecar_secret.clone(),
            upstream_ca: read("--upstream-ca", &self.upstream_ca)?,
            service_account: self.service_account.clone(),
            token_expiration_seconds: self.token_expiration_seconds,
            spiffe_csi_driver: self.spiffe_csi_driver.clone(),
            required_scc: self.openshift_scc.clone(),
        })
    }

    /// The namespace's annotations: `--namespace-annotation`, `--uid-range`
    /// and `--supplemental-groups` (which may not contradict each other).
    fn namespace_annotations(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.namespace_annotations {
            if let Some(old) = out.insert(k.clone(), v.clone())
                && old != *v
            {
                bail!("--namespace-annotation {k} is given twice ({old:?} and {v:?})");
            }
        }
        for (flag, key, value) in [
            ("--uid-range", UID_RANGE_ANNOTATION, &self.uid_range),
            (
                "--supplemental-groups",
                SUPPLEMENTAL_GROUPS_ANNOTATION,
                &self.supplemental_groups,
            ),
        ] {
            let Some(value) = value else { continue };
            if let Some(old) = out.get(key)
                && old != value
            {
                bail!(
                    "{flag} {value:?} contradicts --namespace-annotation {key}={old:?}; give one"
                );
            }
            out.insert(key.to_owned(), value.clone());
        }
        Ok(out)
    }
}

/// `palisade sandbox render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The sandbox's name (a DNS label): the pod's name.
    pub name: String,
    /// The policy: a policy file (YAML/JSON), or, with the gateway policy
    /// source, the name of a policy on the gateway.
    #[arg(long, value_name = "FILE|NAME")]
    pub policy: String,
    /// The agent's image (any image: the shim is copied in).
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// The pod's namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The id of the sandbox registered on the gateway (`palisade sandbox
    /// create` prints it); default: a fresh one.
    #[arg(long, value_name = "ID", value_parser = sandbox_id)]
    pub sandbox_id: Option<SandboxId>,
    /// The principal the sandbox belongs to (annotation `palisade.dev/owner`).
    #[arg(long)]
    pub owner: Option<String>,
    /// A label of the pod, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// An environment variable of the agent, KEY=VALUE (repeatable; never
    /// PALISADE_*).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// A resource request of the agent, RESOURCE=QUANTITY (cpu=500m).
    #[arg(long = "request", value_name = "RESOURCE=QUANTITY", value_parser = key_value)]
    pub requests: Vec<(String, String)>,
    /// A resource limit of the agent, RESOURCE=QUANTITY (memory=1Gi).
    #[arg(long = "limit", value_name = "RESOURCE=QUANTITY", value_parser = key_value)]
    pub limits: Vec<(String, String)>,
    #[command(flatten)]
    pub pod: PodArgs,
    /// The agent's command (default: `sleep infinity`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `palisade inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The manifest: Pod, Deployment, StatefulSet, Job or CronJob documents
    /// (other kinds pass through); `-` reads stdin.
    #[arg(long = "filename", short = 'f', value_name = "FILE|-")]
    pub file: String,
    /// The policy: a policy file (needed with --policy-source file), or,
    /// with the gateway source, the name of a policy on the gateway.
    #[arg(long, value_name = "FILE|NAME")]
    pub policy: Option<String>,
    /// The sandbox registered on the gateway that the workload's pods run as
    /// (needed with the gateway policy source).
    #[arg(long, value_name = "ID", value_parser = sandbox_id)]
    pub sandbox_id: Option<SandboxId>,
    /// The container palisade-shim wraps (default: the pod's
    /// kubectl.kubernetes.io/default-container, else the first).
    #[arg(long, value_name = "NAME")]
    pub agent_container: Option<String>,
    /// The principal the workload belongs to (annotation `palisade.dev/owner`).
    #[arg(long)]
    pub owner: Option<String>,
    #[command(flatten)]
    pub pod: PodArgs,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn sandbox_id(s: &str) -> Result<SandboxId, String> {
    SandboxId::parse(s)
        .ok_or_else(|| format!("`{s}` is not a sandbox id (sbx- and 32 lowercase hex digits)"))
}

/// A policy argument: the file's text, or (gateway source only) a name.
enum PolicyArg {
    File(String),
    Name(String),
}

fn policy_arg(arg: &str, source: PolicySource) -> anyhow::Result<PolicyArg> {
    let path = Path::new(arg);
    let looks_like_file = arg.contains('/')
        || [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| arg.ends_with(ext));
    if looks_like_file || path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--policy: cannot read the policy file {arg}"))?;
        return Ok(PolicyArg::File(text));
    }
    if source == PolicySource::File {
        bail!(
            "--policy {arg}: no such file; the file policy source puts the policy document into \
             a ConfigMap, so --policy must be a policy file"
        );
    }
    Ok(PolicyArg::Name(arg.to_owned()))
}

fn resources(
    requests: &[(String, String)],
    limits: &[(String, String)],
) -> Option<ResourceRequirements> {
    let map = |list: &[(String, String)]| {
        (!list.is_empty()).then(|| {
            list.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    (!requests.is_empty() || !limits.is_empty()).then(|| ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..ResourceRequirements::default()
    })
}

fn warn(command: &str, warnings: &[String]) {
    for w in warnings {
        eprintln!("palisade {command}: warning: {w}");
    }
}

fn sandbox_render(args: RenderArgs) -> anyhow::Result<()> {
    let settings = args.pod.settings()?;
    let annotations = args.pod.namespace_annotations()?;
    let (policy_name, text) = match policy_arg(&args.policy, settings.policy_source)? {
        // The renderer names the policy after the document (`metadata.name`),
        // as the gateway would store it.
        PolicyArg::File(text) => (None, Some(text)),
        PolicyArg::Name(name) => (Some(name), None),
    };
    let generated = args.sandbox_id.is_none();
    let sandbox = Sandbox {
        id: args.sandbox_id.unwrap_or_else(SandboxId::generate),
        spec: SandboxSpec {
            name: args.name,
            namespace: args.namespace,
            service_account: None,
            uid: None,
            gid: None,
            policy: policy_name,
            labels: args.labels.into_iter().collect(),
            command: args.command,
        },
        owner: args.owner.unwrap_or_default(),
        created_at: 0,
    };
    let rendered = render(
        &SandboxPod {
            sandbox: &sandbox,
            image: &args.image,
            env: &args.env,
            resources: resources(&args.requests, &args.limits),
            policy: PolicyRef {
                text: text.as_deref(),
                revision: None,
            },
            namespace_annotations: &annotations,
        },
        &settings,
    )?;
    let mut warnings = rendered.warnings.clone();
    if generated && settings.policy_source == PolicySource::Gateway {
        warnings.push(format!(
            "no --sandbox-id: the pod names a fresh id ({}) that no gateway knows, so its \
             sidecar will be refused; give the id `palisade sandbox create` printed",
            sandbox.id.as_str()
        ));
    }
    print!("{}", rendered.to_yaml()?);
    warn("sandbox render", &warnings);
    Ok(())
}

fn run_inject(args: InjectArgs) -> anyhow::Result<()> {
    let settings = args.pod.settings()?;
    let input = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("-f -: cannot read stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("-f: cannot read {}", args.file))?
    };
    let (policy_name, text) = match args
        .policy
        .as_deref()
        .map(|p| policy_arg(p, settings.policy_source))
        .transpose()?
    {
        Some(PolicyArg::File(text)) => (None, Some(text)),
        Some(PolicyArg::Name(name)) => (Some(name), None),
        None => (None, None),
    };
    let injected = inject(
        &input,
        &settings,
        &InjectOptions {
            sandbox_id: args.sandbox_id,
            policy_name,
            policy: PolicyRef {
                text: text.as_deref(),
                revision: None,
            },
            namespace_annotations: args.pod.namespace_annotations()?,
            agent_container: args.agent_container.as_deref(),
            owner: args.owner.as_deref(),
        },
    )?;
    print!("{}", injected.yaml);
    warn("inject", &injected.warnings);
    if injected.injected == 0 && injected.already_injected == 0 {
        eprintln!(
            "palisade inject: warning: no Pod, Deployment, StatefulSet, Job or CronJob in the input"
        );
    }
    Ok(())
}

pub fn run_render(args: RenderArgs) -> ExitCode {
    match sandbox_render(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("sandbox render", &e),
    }
}

pub fn run_inject_command(args: InjectArgs) -> ExitCode {
    match run_inject(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("inject", &e),
    }
}
