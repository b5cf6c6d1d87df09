//! Unit tests of the renderer and `inject`: the shape of the pod (who gets
//! which UID, capability, volume), the settings' errors, and every refusal
//! naming its field. Schema, Pod Security and golden files are
//! `gateway/tests/pod_render.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use palisade_api::{Sandbox, SandboxId, SandboxSpec};

use super::inject::{InjectOptions, inject};
use super::uids::{SUPPLEMENTAL_GROUPS_ANNOTATION, UID_RANGE_ANNOTATION};
use super::*;
use crate::driver::plan::PolicySource;

const ID: &str = "sbx-0123456789abcdef0123456789abcdef";
const GATEWAY: &str = "https://gateway.palisade.svc:8443";
const POLICY: &str = "apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata:
  name: pypi
spec:
  egress:
    - name: pypi
      hosts: [pypi.org, files.pythonhosted.org]
      ports: [443]
";

fn sandbox() -> Sandbox {
    Sandbox {
        id: SandboxId::parse(ID).unwrap(),
        spec: SandboxSpec {
            name: "demo".to_owned(),
            namespace: Some("agents".to_owned()),
            command: vec!["python3".to_owned(), "-m".to_owned(), "app".to_owned()],
            ..SandboxSpec::default()
        },
        owner: "alice".to_owned(),
        created_at: 0,
    }
}

fn gateway_settings() -> PodSettings {
    PodSettings {
        gateway: Some(GatewaySettings {
            url: GATEWAY.to_owned(),
            ca_pem: None,
        }),
        ..PodSettings::default()
    }
}

fn file_settings() -> PodSettings {
    PodSettings {
        policy_source: PolicySource::File,
        ..PodSettings::default()
    }
}

fn render_with(
    settings: &PodSettings,
    annotations: &BTreeMap<String, String>,
    env: &[(String, String)],
) -> Result<Rendered, RenderError> {
    let sbx = sandbox();
    render(
        &SandboxPod {
            sandbox: &sbx,
            image: "registry.example/agent:1",
            env,
            resources: None,
            policy: PolicyRef {
                text: Some(POLICY),
                revision: None,
            },
            namespace_annotations: annotations,
        },
        settings,
    )
}

fn rendered(settings: &PodSettings) -> Rendered {
    render_with(settings, &BTreeMap::new(), &[]).unwrap()
}

fn spec(r: &Rendered) -> &PodSpec {
    r.pod.spec.as_ref().unwrap()
}

fn all_containers(spec: &PodSpec) -> Vec<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    all_containers(spec)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn names(list: &[Container]) -> Vec<&str> {
    list.iter().map(|c| c.name.as_str()).collect()
}

fn mounts(c: &Container) -> Vec<(&str, &str)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect()
}

#[test]
fn native_topology_puts_the_sidecar_among_the_init_containers() {
    let r = rendered(&gateway_settings());
    let s = spec(&r);
    assert_eq!(
        names(s.init_containers.as_deref().unwrap()),
        [INIT_CONTAINER, SHIM_INSTALL_CONTAINER, SIDECAR_CONTAINER]
    );
    assert_eq!(names(&s.containers), [AGENT_CONTAINER]);
    let sidecar = container(s, SIDECAR_CONTAINER);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    for probe in [&sidecar.startup_probe, &sidecar.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/ready"));
    }
    assert_eq!(
        r.pod.metadata.annotations.as_ref().unwrap()[TOPOLOGY_ANNOTATION],
        "native"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn classic_topology_makes_the_sidecar_an_ordinary_container_and_says_the_pod_will_not_end() {
    let r = rendered(&PodSettings {
        topology: Topology::Classic,
        ..gateway_settings()
    });
    let s = spec(&r);
    assert_eq!(
        names(s.init_containers.as_deref().unwrap()),
        [INIT_CONTAINER, SHIM_INSTALL_CONTAINER]
    );
    assert_eq!(names(&s.containers), [SIDECAR_CONTAINER, AGENT_CONTAINER]);
    assert_eq!(container(s, SIDECAR_CONTAINER).restart_policy, None);
    assert!(
        r.warnings.iter().any(|w| w.contains("does not stop")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn only_the_init_container_holds_capabilities_and_only_net_admin_and_net_raw() {
    let r = rendered(&gateway_settings());
    let s = spec(&r);
    for c in all_containers(s) {
        let sc = c.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{}",
            c.name
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(
            sc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault",
            "{}",
            c.name
        );
        if c.name == INIT_CONTAINER {
            assert_eq!(
                caps.add.as_deref(),
                Some(&["NET_ADMIN".to_owned(), "NET_RAW".to_owned()][..])
            );
            assert_eq!(sc.run_as_user, Some(0));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
        } else {
            assert_eq!(caps.add, None, "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert_ne!(sc.run_as_user, Some(0), "{}", c.name);
        }
    }
    let sidecar = container(s, SIDECAR_CONTAINER)
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(
        (sidecar.run_as_user, sidecar.read_only_root_filesystem),
        (Some(1337), Some(true))
    );
    let agent = container(s, AGENT_CONTAINER)
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(
        (agent.run_as_user, agent.run_as_group),
        (Some(1000), Some(1000))
    );
}

#[test]
fn the_service_account_token_and_the_gateway_are_the_sidecars_alone() {
    let r = rendered(&gateway_settings());
    let s = spec(&r);
    assert_eq!(s.automount_service_account_token, Some(false));
    assert_eq!(s.enable_service_links, Some(false));
    let token = s
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "palisade-token")
        .unwrap();
    let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("palisade-gateway"));
    assert!(projection.expiration_seconds.unwrap() <= 3600);
    for c in all_containers(s) {
        let has_token = mounts(c).iter().any(|(name, _)| *name == "palisade-token");
        assert_eq!(has_token, c.name == SIDECAR_CONTAINER, "{}", c.name);
        let text = serde_json::to_string(c).unwrap();
        if c.name != SIDECAR_CONTAINER {
            assert!(!text.contains("gateway.palisade.svc"), "{}: {text}", c.name);
        }
    }
    let sidecar_args = container(s, SIDECAR_CONTAINER).args.clone().unwrap();
    assert!(
        sidecar_args.contains(&GATEWAY.to_owned()),
        "{sidecar_args:?}"
    );
    assert!(
        sidecar_args.contains(&format!("{TOKEN_DIR}/{TOKEN_FILE_NAME}")),
        "{sidecar_args:?}"
    );
    let agent = container(s, AGENT_CONTAINER);
    assert_eq!(agent.command.as_deref(), Some(&[SHIM_PATH.to_owned()][..]));
    let args = agent.args.as_ref().unwrap();
    let dashdash = args.iter().position(|a| a == "--").unwrap();
    assert_eq!(args[dashdash + 1..], ["python3", "-m", "app"]);
    let env: Vec<&str> = agent
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["PALISADE_SESSION_SOCKET"]);
}

#[test]
fn metadata_names_the_sandbox_owner_policy_and_scrape_port() {
    let r = rendered(&gateway_settings());
    let a = r.pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(a[SANDBOX_ID_ANNOTATION], ID);
    assert_eq!(a[OWNER_ANNOTATION], "alice");
    assert_eq!(a[POLICY_ANNOTATION], "pypi");
    assert!(a[POLICY_REVISION_ANNOTATION].starts_with("sha256:"));
    assert_eq!(a["prometheus.io/port"], "15020");
    assert_eq!(a["prometheus.io/scrape"], "true");
    let l = r.pod.metadata.labels.as_ref().unwrap();
    assert_eq!(l[SANDBOX_ID_LABEL], ID);
    assert_eq!(l[SANDBOX_NAME_LABEL], "demo");
    assert_eq!(r.pod.metadata.namespace.as_deref(), Some("agents"));
}

#[test]
fn the_file_source_puts_the_policy_into_a_config_map_and_mounts_no_token() {
    let r = rendered(&file_settings());
    let cm = r.config_map.as_ref().unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("demo-palisade"));
    assert_eq!(cm.data.as_ref().unwrap()["policy.yaml"], POLICY);
    let s = spec(&r);
    assert!(
        !s.volumes.iter().flatten().any(|v| v.projected.is_some()),
        "no token without a gateway"
    );
    let sidecar = container(s, SIDECAR_CONTAINER);
    assert!(mounts(sidecar).contains(&("palisade-config", CONFIG_DIR)));
    for c in all_containers(s) {
        if c.name != SIDECAR_CONTAINER {
            assert!(
                !mounts(c).iter().any(|(n, _)| *n == "palisade-config"),
                "{}",
                c.name
            );
        }
    }
    let yaml = r.to_yaml().unwrap();
    let cm_at = yaml.find("kind: ConfigMap").unwrap();
    let pod_at = yaml.find("kind: Pod").unwrap();
    assert!(cm_at < pod_at, "the ConfigMap comes first:\n{yaml}");
}

#[test]
fn openshift_ranges_give_both_uids_and_the_fs_group() {
    let ns = BTreeMap::from([
        (
            UID_RANGE_ANNOTATION.to_owned(),
            "1000650000/10000".to_owned(),
        ),
        (
            SUPPLEMENTAL_GROUPS_ANNOTATION.to_owned(),
            "1000670000/10000".to_owned(),
        ),
    ]);
    let r = render_with(&gateway_settings(), &ns, &[]).unwrap();
    let s = spec(&r);
    let uid = |name: &str| {
        let sc = container(s, name).security_context.as_ref().unwrap();
        (sc.run_as_user, sc.run_as_group)
    };
    assert_eq!(uid(AGENT_CONTAINER), (Some(1000650000), Some(1000670000)));
    assert_eq!(uid(SIDECAR_CONTAINER), (Some(1000650001), Some(1000650001)));
    assert_eq!(
        s.security_context.as_ref().unwrap().fs_group,
        Some(1000670000)
    );
    let init_args = container(s, INIT_CONTAINER).args.clone().unwrap();
    assert_eq!(
        init_args,
        [
            "init",
            "--sidecar-uid",
            "1000650001",
            "--sidecar-gid",
            "1000650001"
        ]
    );

    let bad = BTreeMap::from([(UID_RANGE_ANNOTATION.to_owned(), "1000650000/1".to_owned())]);
    let err = render_with(&gateway_settings(), &bad, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(UID_RANGE_ANNOTATION) && err.contains("1000650000/1"),
        "{err}"
    );
}

#[test]
fn settings_and_inputs_are_refused_with_the_flag_named() {
    let env = |k: &str| vec![(k.to_owned(), "1".to_owned())];
    /// What, the settings, the agent's env, what the error must say.
    type Row = (
        &'static str,
        PodSettings,
        Vec<(String, String)>,
        &'static str,
    );
    let cases: Vec<Row> = vec![
        (
            "gateway source without a URL",
            PodSettings::default(),
            vec![],
            "--gateway-url",
        ),
        (
            "plaintext gateway",
            PodSettings {
                gateway: Some(GatewaySettings {
                    url: "http://gw:8443".to_owned(),
                    ca_pem: None,
                }),
                ..PodSettings::default()
            },
            vec![],
            "must be https://",
        ),
        (
            "file source with a gateway",
            PodSettings {
                policy_source: PolicySource::File,
                ..gateway_settings()
            },
            vec![],
            "a file-sourced policy runs without a gateway",
        ),
        (
            "sidecar secret with the gateway source",
            PodSettings {
                sidecar_secret: Some("creds".to_owned()),
                ..gateway_settings()
            },
            vec![],
            "--sidecar-secret",
        ),
        (
            "token lifetime over an hour",
            PodSettings {
                token_expiration_seconds: 7200,
                ..gateway_settings()
            },
            vec![],
            "--token-expiration-seconds",
        ),
        (
            "an image with a space",
            PodSettings {
                sidecar_image: "bad image".to_owned(),
                ..gateway_settings()
            },
            vec![],
            "--sidecar-image",
        ),
        (
            "PALISADE_ in the agent's env",
            gateway_settings(),
            env("PALISADE_ALLOW_INSECURE"),
            "--env PALISADE_ALLOW_INSECURE",
        ),
        (
            "shared UIDs",
            PodSettings {
                ids: uids::IdSettings {
                    agent_uid: Some(1337),
                    ..uids::IdSettings::default()
                },
                ..gateway_settings()
            },
            vec![],
            "would share UID 1337",
        ),
    ];
    for (what, settings, env, needle) in cases {
        let err = render_with(&settings, &BTreeMap::new(), &env)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
}

#[test]
fn an_invalid_policy_is_refused_before_anything_is_rendered() {
    let sbx = sandbox();
    let err = render(
        &SandboxPod {
            sandbox: &sbx,
            image: "agent:1",
            env: &[],
            resources: None,
            policy: PolicyRef {
                text: Some("apiVersion: palisade.dev/v1alpha1\nkind: Policy\n"),
                revision: None,
            },
            namespace_annotations: &BTreeMap::new(),
        },
        &file_settings(),
    )
    .unwrap_err();
    assert!(matches!(err, RenderError::Policy(_)), "{err}");
}

// ---- inject ----

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: web:1
          command: [/web]
          resources:
            requests: {cpu: 1}
";

fn inject_opts() -> InjectOptions<'static> {
    InjectOptions {
        sandbox_id: Some(SandboxId::parse(ID).unwrap()),
        ..InjectOptions::default()
    }
}

fn injected(input: &str) -> Result<super::inject::Injected, super::inject::InjectError> {
    inject(input, &gateway_settings(), &inject_opts())
}

#[test]
fn inject_wraps_the_template_and_is_idempotent() {
    let once = injected(DEPLOYMENT).unwrap();
    assert_eq!((once.injected, once.already_injected), (1, 0));
    assert!(once.yaml.contains("palisade-sidecar"), "{}", once.yaml);
    assert!(once.yaml.contains("- /palisade/bin/palisade-shim"));
    // `cpu: 1` (a number) survives as a quantity.
    assert!(once.yaml.contains("cpu: '1'"), "{}", once.yaml);
    let twice = injected(&once.yaml).unwrap();
    assert_eq!((twice.injected, twice.already_injected), (0, 1));
    assert_eq!(twice.yaml, once.yaml);
}

#[test]
fn inject_passes_other_kinds_through_and_reads_lists() {
    let input = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: v1\nkind: List\nitems:\n{}",
        DEPLOYMENT
            .lines()
            .enumerate()
            .map(|(i, l)| if i == 0 {
                format!("- {l}\n")
            } else {
                format!("  {l}\n")
            })
            .collect::<String>()
    );
    let out = injected(&input).unwrap();
    assert_eq!(out.injected, 1);
    assert!(
        out.yaml.starts_with("apiVersion: v1\nkind: Service"),
        "{}",
        out.yaml
    );
    assert!(out.yaml.contains("palisade-init"));
}

#[test]
fn inject_refuses_one_sandbox_id_for_several_workloads() {
    let err = injected(&format!(
        "{DEPLOYMENT}---\n{}",
        DEPLOYMENT.replace("name: web\nspec", "name: api\nspec")
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("--sandbox-id names one sandbox"), "{err}");
}

/// A Pod whose spec is `spec` (YAML, indented by 2).
fn pod(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n{spec}")
}

const AGENT: &str = "  containers:\n    - name: a\n      image: a:1\n      command: [/a]\n";

#[test]
fn inject_refuses_what_the_topology_cannot_wrap_naming_the_field() {
    let with_sc = |sc: &str| pod(&format!("{AGENT}      securityContext: {{{sc}}}\n"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "hostAliases",
            pod(&format!(
                "  hostAliases: [{{ip: 10.0.0.1, hostnames: [api.internal]}}]\n{AGENT}"
            )),
            "spec.hostAliases: the Palisade sidecar never reads hosts files",
        ),
        (
            "hostNetwork",
            pod(&format!("  hostNetwork: true\n{AGENT}")),
            "spec.hostNetwork: true",
        ),
        (
            "hostPID",
            pod(&format!("  hostPID: true\n{AGENT}")),
            "spec.hostPID: true",
        ),
        (
            "hostIPC",
            pod(&format!("  hostIPC: true\n{AGENT}")),
            "spec.hostIPC: true",
        ),
        (
            "automount",
            pod(&format!("  automountServiceAccountToken: true\n{AGENT}")),
            "spec.automountServiceAccountToken: true",
        ),
        (
            "privileged",
            with_sc("privileged: true"),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            "capabilities",
            with_sc("capabilities: {add: [NET_ADMIN]}"),
            "spec.containers[0].securityContext.capabilities.add: adds NET_ADMIN",
        ),
        (
            "root",
            with_sc("runAsUser: 0"),
            "spec.containers[0].securityContext.runAsUser: 0 is root",
        ),
        (
            "pod root",
            pod(&format!("  securityContext: {{runAsUser: 0}}\n{AGENT}")),
            "spec.securityContext.runAsUser: 0 is root",
        ),
        (
            "runAsNonRoot false",
            with_sc("runAsNonRoot: false"),
            "spec.containers[0].securityContext.runAsNonRoot",
        ),
        (
            "privilege escalation",
            with_sc("allowPrivilegeEscalation: true"),
            "spec.containers[0].securityContext.allowPrivilegeEscalation",
        ),
        (
            "the sidecar's UID",
            with_sc("runAsUser: 1337"),
            "spec.containers[0].securityContext.runAsUser: the sidecar runs as this ID",
        ),
        (
            "SA token path",
            pod(&format!(
                "{AGENT}      volumeMounts: [{{name: t, mountPath: \
                 /var/run/secrets/kubernetes.io/serviceaccount}}]\n  volumes: [{{name: t, \
                 emptyDir: {{}}}}]\n"
            )),
            "spec.containers[0].volumeMounts[0]: mounts a ServiceAccount token",
        ),
        (
            "projected token",
            pod(&format!(
                "{AGENT}      volumeMounts: [{{name: t, mountPath: /tok}}]\n  volumes: [{{name: \
                 t, projected: {{sources: [{{serviceAccountToken: {{path: token}}}}]}}}}]\n"
            )),
            "spec.containers[0].volumeMounts[0]: mounts a ServiceAccount token",
        ),
        (
            "a Palisade container name",
            pod(
                "  containers:\n    - name: palisade-init\n      image: a:1\n      command: [/a]\n",
            ),
            "spec.containers[0].name",
        ),
        (
            "no command",
            pod("  containers:\n    - name: a\n      image: a:1\n"),
            "spec.containers[0].command",
        ),
        (
            "an unknown field",
            pod(&format!("  frobnicate: true\n{AGENT}")),
            "spec.frobnicate: a field palisade inject does not know",
        ),
        (
            "palisade.dev annotations",
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: \
                 {{palisade.dev/sandbox-id: x}}\nspec:\n{AGENT}"
            ),
            "metadata.annotations[palisade.dev/sandbox-id]",
        ),
        (
            "old apiVersion",
            DEPLOYMENT.replace("apps/v1", "apps/v1beta1"),
            "apiVersion `apps/v1beta1` is not supported",
        ),
    ];
    for (what, input, needle) in cases {
        let err = injected(&input).unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
}

#[test]
fn jobs_need_the_native_topology_to_complete() {
    let job = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  template:\n    spec:\n      \
         restartPolicy: Never\n{}",
        AGENT
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let classic = PodSettings {
        topology: Topology::Classic,
        ..gateway_settings()
    };
    let err = inject(&job, &classic, &inject_opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("would never complete") && err.contains("--topology native"),
        "{err}"
    );
    let native = inject(&job, &gateway_settings(), &inject_opts()).unwrap();
    assert!(
        native.yaml.contains("restartPolicy: Always"),
        "{}",
        native.yaml
    );
    // A classic Deployment is fine: it never completes anyway.
    inject(DEPLOYMENT, &classic, &inject_opts()).unwrap();
}

#[test]
fn a_partly_injected_template_is_refused() {
    let once = injected(DEPLOYMENT).unwrap().yaml;
    let tampered = once.replace("name: palisade-init", "name: not-init");
    let err = injected(&tampered).unwrap_err().to_string();
    assert!(err.contains("partly injected"), "{err}");
}

#[test]
fn the_gateway_source_needs_a_sandbox_id() {
    let err = inject(DEPLOYMENT, &gateway_settings(), &InjectOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--sandbox-id is needed"), "{err}");
}
