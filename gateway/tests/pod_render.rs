//! The sandbox pod as `palisade sandbox render` and `palisade inject` print
//! it, checked by tools that are not ours:
//!
//! * golden files (`tests/golden/*.yaml`) for the default, OpenShift and
//!   classic renderings and for `inject` on a Deployment and a CronJob;
//!   `UPDATE_GOLDEN=1` rewrites them, any other drift fails;
//! * every object validated by `kubernetes-validate --strict` (pip) against
//!   every Kubernetes version from 1.29 (native sidecars) to the newest it
//!   ships; under `CI=true` a missing tool fails the test;
//! * every pod (and pod template) passes Pod Security "restricted" but for
//!   the `palisade-init` container, which fails it for exactly its
//!   NET_ADMIN/NET_RAW and UID 0 (docs/kubernetes.md); a sidecar given a
//!   capability fails the check;
//! * the commands' refusals: exit 1 and a message naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // helpers outside #[test] fns; a panic is the failure report

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use palisade_gateway::podsecurity::{self, CheckId, Level, Version};
use serde::Deserialize;
use serde_json::{Value, json};

const ID: &str = "sbx-0123456789abcdef0123456789abcdef";
const GATEWAY: &str = "https://gateway.palisade.svc:8443";
/// The oldest Kubernetes with native sidecars (`restartPolicy: Always` on
/// init containers, beta and on by default).
const OLDEST_MINOR: u32 = 29;
const INIT: &str = "palisade-init";
const SIDECAR: &str = "palisade-sidecar";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden(name: &str) -> String {
    golden_dir().join(name).display().to_string()
}

fn palisade(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run palisade");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// One golden case: the command line and the file its stdout must equal.
struct Case {
    golden: &'static str,
    args: Vec<String>,
    /// Substrings stderr must have (warnings); anything else there fails.
    warnings: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let render = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "sandbox",
            "render",
            "demo",
            "--namespace",
            "agents",
            "--image",
            "registry.example/agent:1.0",
            "--sandbox-id",
            ID,
            "--owner",
            "alice@example.com",
            "--label",
            "team=platform",
            "--env",
            "LOG_LEVEL=info",
            "--request",
            "cpu=500m",
            "--limit",
            "memory=1Gi",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(["--", "python3", "-m", "app"].map(str::to_owned));
        args
    };
    let policy = golden("policy.yaml");
    let credential_policy = golden("policy-file-credential.yaml");
    let ca = golden("gateway-ca.pem");
    let deployment = golden("deployment.input.yaml");
    let cronjob = golden("cronjob.input.yaml");
    vec![
        Case {
            golden: "render-default.yaml",
            args: render(&["--policy", &policy, "--gateway-url", GATEWAY]),
            warnings: &[],
        },
        Case {
            golden: "render-openshift.yaml",
            args: render(&[
                "--policy",
                &policy,
                "--gateway-url",
                GATEWAY,
                "--gateway-ca",
                &ca,
                "--namespace-annotation",
                "openshift.io/sa.scc.uid-range=1000650000/10000",
                "--namespace-annotation",
                "openshift.io/sa.scc.supplemental-groups=1000650000/10000",
                "--namespace-annotation",
                "openshift.io/sa.scc.mcs=s0:c26,c5",
                "--openshift-scc",
                "palisade-sandbox",
                "--service-account",
                "palisade-sandbox",
                "--image-pull-policy",
                "if-not-present",
            ]),
            warnings: &[],
        },
        Case {
            golden: "render-classic.yaml",
            args: render(&[
                "--policy",
                &credential_policy,
                "--policy-source",
                "file",
                "--topology",
                "classic",
                "--sidecar-secret",
                "internal-api-token",
                "--uid-range",
                "1000650000-1000659999",
                "--image-pull-policy",
                "never",
            ]),
            warnings: &["with --topology classic the sidecar does not stop"],
        },
        Case {
            golden: "inject-deployment.yaml",
            args: [
                "inject",
                "-f",
                &deployment,
                "--sandbox-id",
                ID,
                "--policy",
                "pypi-install",
                "--gateway-url",
                GATEWAY,
                "--owner",
                "team-platform",
            ]
            .map(str::to_owned)
            .to_vec(),
            warnings: &[],
        },
        Case {
            golden: "inject-cronjob.yaml",
            args: [
                "inject",
                "-f",
                &cronjob,
                "--sandbox-id",
                ID,
                "--policy-source",
                "file",
                "--policy",
                &policy,
            ]
            .map(str::to_owned)
            .to_vec(),
            warnings: &[],
        },
    ]
}

/// Run every case; compare with (or, under UPDATE_GOLDEN=1, rewrite) its
/// golden file. Returns (golden name, output).
fn outputs() -> Vec<(&'static str, String)> {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut out = Vec::new();
    for case in cases() {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let o = palisade(&args, None);
        let stdout = String::from_utf8(o.stdout).unwrap();
        let stderr = String::from_utf8(o.stderr).unwrap();
        assert!(o.status.success(), "{}: {stderr}", case.golden);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            case.warnings.len(),
            "{}: {stderr}",
            case.golden
        );
        for (line, want) in lines.iter().zip(case.warnings) {
            assert!(line.contains(want), "{}: {stderr}", case.golden);
        }
        let path = golden_dir().join(case.golden);
        if update {
            std::fs::write(&path, &stdout).unwrap();
        } else {
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
                    path.display()
                )
            });
            if want != stdout {
                let line = want
                    .lines()
                    .zip(stdout.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(want.lines().count().min(stdout.lines().count()));
                panic!(
                    "{} drifted from the rendering at line {}:\n  golden: {:?}\n  now:    {:?}\n\
                     review the change; UPDATE_GOLDEN=1 cargo nextest run -p palisade-gateway \
                     --test pod_render rewrites the golden files",
                    case.golden,
                    line + 1,
                    want.lines().nth(line),
                    stdout.lines().nth(line),
                );
            }
        }
        out.push((case.golden, stdout));
    }
    out
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde_yaml_ng::Value::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// The pod of a document: a Pod itself, or the pod template of a workload
/// as the Pod the controller would create.
fn pod_of(doc: &Value) -> Option<Value> {
    let template = match doc["kind"].as_str()? {
        "Pod" => return Some(doc.clone()),
        "Deployment" | "StatefulSet" | "Job" => &doc["spec"]["template"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"],
        "spec": template["spec"],
    }))
}

fn pods() -> Vec<(&'static str, Value)> {
    outputs()
        .into_iter()
        .flat_map(|(name, yaml)| {
            documents(&yaml)
                .iter()
                .filter_map(pod_of)
                .map(|p| (name, p))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn renderings_match_their_golden_files() {
    let outs = outputs();
    assert_eq!(outs.len(), 5);
    // What the golden files are meant to show, so that a regenerated file
    // that lost it fails here, not in review.
    let get = |name: &str| &outs.iter().find(|(n, _)| *n == name).unwrap().1;
    let openshift = get("render-openshift.yaml");
    for want in [
        "runAsUser: 1000650000",
        "runAsUser: 1000650001",
        "fsGroup: 1000650000",
        "openshift.io/required-scc: palisade-sandbox",
        "gateway-ca.pem",
    ] {
        assert!(
            openshift.contains(want),
            "render-openshift.yaml lacks {want}"
        );
    }
    assert!(get("render-classic.yaml").contains("kind: ConfigMap"));
    assert!(get("render-classic.yaml").contains("secretName: internal-api-token"));
    assert!(get("inject-deployment.yaml").contains("kind: Service"));
    assert!(get("inject-cronjob.yaml").contains("restartPolicy: Always"));
}

#[test]
fn inject_output_injected_again_is_unchanged() {
    for (name, yaml) in outputs() {
        if !name.starts_with("inject-") {
            continue;
        }
        let mut args = vec!["inject", "-f", "-"];
        if name == "inject-cronjob.yaml" {
            args.extend(["--policy-source", "file"]);
        } else {
            args.extend(["--sandbox-id", ID, "--gateway-url", GATEWAY]);
        }
        let o = palisade(&args, Some(&yaml));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8(o.stdout).unwrap(), yaml, "{name}");
    }
}

// ---- kubernetes-validate --strict ----

/// The newest Kubernetes version `kubernetes-validate` ships (its default),
/// or `None` when it is not installed.
fn kubernetes_validate_newest() -> Option<(u32, u32)> {
    let tool = palisade_e2e::prereq::find_tool("kubernetes-validate")?;
    let help = Command::new(tool).arg("--help").output().ok()?;
    let text = String::from_utf8_lossy(&help.stdout).replace('\n', " ");
    let version = text
        .split("Defaults to")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut parts = version.trim_end_matches('.').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn require_kubernetes_validate() -> Option<(PathBuf, u32)> {
    let msg = "kubernetes-validate is needed: pip install kubernetes-validate \
               (scripts/bootstrap installs it)";
    match (
        palisade_e2e::prereq::find_tool("kubernetes-validate"),
        kubernetes_validate_newest(),
    ) {
        (Some(tool), Some((1, minor))) => {
            assert!(
                minor >= OLDEST_MINOR,
                "kubernetes-validate ships only up to 1.{minor}; upgrade it"
            );
            Some((tool, minor))
        }
        (Some(_), other) => panic!("cannot read kubernetes-validate's default version: {other:?}"),
        (None, _) => {
            assert!(!palisade_e2e::prereq::in_ci(), "under CI=true: {msg}");
            eprintln!("SKIP: {msg}");
            None
        }
    }
}

/// Validate `files` strictly against 1.`minor`; the documents' count of
/// "passed" lines must be `docs` (nothing skipped as unknown).
fn validate(tool: &Path, minor: u32, files: &[PathBuf]) -> Result<usize, String> {
    let o = Command::new(tool)
        .args(["--strict", "--kubernetes-version", &format!("1.{minor}.0")])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() || text.contains("ERROR") || text.contains("WARN") {
        return Err(text);
    }
    Ok(text.lines().filter(|l| l.contains(" passed ")).count())
}

#[test]
fn every_object_validates_strictly_for_every_supported_kubernetes_version() {
    let Some((tool, newest)) = require_kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut docs = 0;
    for (name, yaml) in outputs() {
        docs += documents(&yaml).len();
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        files.push(path);
    }
    assert_eq!(docs, 9, "the golden renderings hold 9 objects");
    for minor in OLDEST_MINOR..=newest {
        match validate(&tool, minor, &files) {
            Ok(passed) => assert_eq!(passed, docs, "1.{minor}: not every object was validated"),
            Err(text) => panic!("kubernetes-validate --strict 1.{minor}:\n{text}"),
        }
    }

    // The validation is strict: a field the schema does not have fails.
    let (_, default) = outputs().swap_remove(0);
    let mut pod = documents(&default).remove(0);
    pod["spec"]["initContainers"][2]["securityContext"]["capabilitiez"] = json!({});
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, serde_yaml_ng::to_string(&pod).unwrap()).unwrap();
    let err = validate(&tool, newest, &[bad]).unwrap_err();
    assert!(err.contains("capabilitiez"), "{err}");
}

// ---- Pod Security "restricted" ----

fn container_index(pod: &Value, list: &str, name: &str) -> usize {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

#[test]
fn every_pod_is_restricted_but_for_the_init_container() {
    let pods = pods();
    assert_eq!(pods.len(), 5);
    for (name, pod) in &pods {
        let rest =
            podsecurity::check_except(Level::Restricted, Version::LATEST, pod, &[INIT]).unwrap();
        assert!(
            rest.is_empty(),
            "{name}: {}",
            podsecurity::summary(Level::Restricted, Version::LATEST, &rest)
        );

        // The init container is the one exception, for exactly its
        // capabilities and its UID 0.
        let all = podsecurity::check(Level::Restricted, Version::LATEST, pod);
        let init = container_index(pod, "initContainers", INIT);
        let prefix = format!("spec.initContainers[{init}]");
        for v in &all {
            assert!(v.path.starts_with(&prefix), "{name}: {v}");
        }
        let checks: BTreeSet<&str> = all.iter().map(|v| v.check.as_str()).collect();
        assert_eq!(
            checks,
            BTreeSet::from([
                CheckId::CapabilitiesRestricted.as_str(),
                CheckId::RunAsNonRoot.as_str(),
                CheckId::RunAsUser.as_str(),
            ]),
            "{name}: {}",
            podsecurity::summary(Level::Restricted, Version::LATEST, &all)
        );
        let caps = all
            .iter()
            .find(|v| v.check == CheckId::CapabilitiesRestricted)
            .unwrap();
        assert!(
            caps.detail.contains("NET_ADMIN") && caps.detail.contains("NET_RAW"),
            "{name}: {caps}"
        );
    }
}

#[test]
fn a_sidecar_given_a_capability_fails_restricted() {
    for (name, mut pod) in pods() {
        let (list, i) = match pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["name"] == SIDECAR)
        {
            Some(i) => ("initContainers", i),
            None => ("containers", container_index(&pod, "containers", SIDECAR)),
        };
        pod["spec"][list][i]["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
        let v =
            podsecurity::check_except(Level::Restricted, Version::LATEST, &pod, &[INIT]).unwrap();
        assert!(
            v.iter().any(|v| v.check == CheckId::CapabilitiesRestricted
                && v.path.starts_with(&format!("spec.{list}[{i}]"))),
            "{name}: {v:?}"
        );
    }
}

// ---- refusals ----

fn refused(args: &[&str], stdin: Option<&str>) -> String {
    let o = palisade(args, stdin);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(o.stdout.is_empty(), "nothing on stdout when refused");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn inject_refusals_exit_1_and_name_the_field() {
    let gw = [
        "inject",
        "-f",
        "-",
        "--sandbox-id",
        ID,
        "--gateway-url",
        GATEWAY,
    ];
    let pod =
        |spec: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{spec}");
    let agent = "  containers: [{name: a, image: a, command: [/a]";
    for (input, needle) in [
        (
            pod(&format!(
                "  hostAliases: [{{ip: 10.1.1.1, hostnames: [db.internal]}}]\n{agent}}}]\n"
            )),
            "spec.hostAliases: the Palisade sidecar never reads hosts files",
        ),
        (
            pod(&format!(
                "{agent}, securityContext: {{privileged: true}}}}]\n"
            )),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            pod(&format!("  hostPID: true\n{agent}}}]\n")),
            "spec.hostPID: true",
        ),
    ] {
        let err = refused(&gw, Some(&input));
        assert!(
            err.starts_with("palisade inject: document 1 (Pod p): "),
            "{err}"
        );
        assert!(err.contains(needle), "{err}");
    }
    let cron = golden("cronjob.input.yaml");
    let err = refused(
        &[
            "inject",
            "-f",
            &cron,
            "--policy-source",
            "file",
            "--policy",
            &golden("policy.yaml"),
            "--topology",
            "classic",
        ],
        None,
    );
    assert!(
        err.contains("CronJob nightly-audit") && err.contains("never complete"),
        "{err}"
    );
}

#[test]
fn render_refusals_exit_1_and_name_the_flag_or_annotation() {
    let policy = golden("policy.yaml");
    let base = [
        "sandbox", "render", "demo", "--policy", &policy, "--image", "agent:1",
    ];
    for (extra, needle) in [
        (
            &["--gateway-url", GATEWAY, "--uid-range", "1000650000/1"][..],
            "openshift.io/sa.scc.uid-range=\"1000650000/1\" is too small",
        ),
        (
            &[
                "--gateway-url",
                GATEWAY,
                "--namespace-annotation",
                "openshift.io/sa.scc.uid-range=1000650000",
            ][..],
            "openshift.io/sa.scc.uid-range=\"1000650000\" is malformed",
        ),
        (
            &[
                "--gateway-url",
                GATEWAY,
                "--uid-range",
                "1000650000/10000",
                "--agent-uid",
                "2102",
            ][..],
            "runAsUser: Invalid value: 2102: must be in the ranges",
        ),
        (&[][..], "--gateway-url: the gateway policy source needs"),
        (
            &["--gateway-url", "http://gw:8080"][..],
            "--gateway-url: `http://gw:8080` must be https://",
        ),
        (
            &["--policy-source", "file", "--gateway-url", GATEWAY][..],
            "a file-sourced policy runs without a gateway",
        ),
        (
            &[
                "--gateway-url",
                GATEWAY,
                "--env",
                "PALISADE_ALLOW_INSECURE=1",
            ][..],
            "--env PALISADE_ALLOW_INSECURE",
        ),
        (
            &["--gateway-url", GATEWAY, "--gateway-ca", &policy][..],
            "--gateway-ca: no PEM certificate",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let err = refused(&args, None);
        assert!(err.starts_with("palisade sandbox render: "), "{err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

#[test]
fn under_baseline_the_init_container_fails_only_for_its_capabilities() {
    // Why a sandbox namespace cannot enforce even `baseline`
    // (docs/kubernetes.md, "Pod Security admission").
    for (name, pod) in pods() {
        let v = podsecurity::check(Level::Baseline, Version::LATEST, &pod);
        let init = container_index(&pod, "initContainers", INIT);
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        assert_eq!(v[0].check, CheckId::CapabilitiesBaseline, "{name}");
        assert_eq!(
            v[0].path,
            format!("spec.initContainers[{init}].securityContext.capabilities.add"),
            "{name}"
        );
    }
}
