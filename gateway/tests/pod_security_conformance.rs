//! Conformance of `palisade_gateway::podsecurity` with the official Pod
//! Security Admission library: every fixture of its test data
//! (`LEVEL/vX.Y/{pass,fail}/*.yaml`, v1.0 … v1.33 at the pinned commit) must
//! get the official verdict — `pass`: no violation at all; `fail`: at least
//! one, and among them the check the fixture is named after (or the
//! restricted check that replaces it at that level and version).
//!
//! Every entry of the tree is judged: a file that is not one YAML Pod, a
//! fixture name that names no check, an unexpected file or directory, a
//! version directory this checker does not know, or a gap in the versions
//! is a failure, never a skip.
//!
//! The fixtures are vendored, unchanged, as `tests/fixtures/pod-security.tar.gz`
//! (kubernetes/pod-security-admission `test/testdata` at commit
//! 8f84a87c7f617f64a4ddc1aea24aeeb7a2e07cb8, Apache License 2.0: LICENSE and
//! README.md inside the archive); `$PALISADE_PSA_FIXTURES` points the test
//! at another copy of the tree (a newer commit). Nothing is skipped.

#![allow(clippy::expect_used, clippy::panic)] // helpers outside #[test] fns; a panic is the failure report

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use palisade_gateway::podsecurity::{self, CheckId, Level, Version};

/// The fixture tree: `$PALISADE_PSA_FIXTURES` if set (it must hold
/// `baseline/` and `restricted/`), else the vendored copy
/// (`tests/fixtures/pod-security.tar.gz`, unpacked with `tar` into a
/// temporary directory that lives as long as the returned guard).
fn fixtures_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Some(dir) = std::env::var_os("PALISADE_PSA_FIXTURES") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("baseline").is_dir() && dir.join("restricted").is_dir(),
            "PALISADE_PSA_FIXTURES={} holds no baseline/ and restricted/ (the directory of \
             kubernetes/pod-security-admission test/testdata)",
            dir.display()
        );
        return (dir, None);
    }
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pod-security.tar.gz");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("tar runs");
    assert!(
        status.success(),
        "tar -xzf {} failed: {status}",
        archive.display()
    );
    (tmp.path().to_path_buf(), Some(tmp))
}

/// Every check, to map a fixture's file name (`capabilities_baseline1`) to
/// the check it is named after.
const ALL_CHECKS: &[CheckId] = &[
    CheckId::HostNamespaces,
    CheckId::Privileged,
    CheckId::CapabilitiesBaseline,
    CheckId::HostPathVolumes,
    CheckId::HostPorts,
    CheckId::AppArmorProfile,
    CheckId::SeLinuxOptions,
    CheckId::ProcMount,
    CheckId::SeccompProfileBaseline,
    CheckId::Sysctls,
    CheckId::WindowsHostProcess,
    CheckId::HostProbesAndHostLifecycle,
    CheckId::RestrictedVolumes,
    CheckId::AllowPrivilegeEscalation,
    CheckId::RunAsNonRoot,
    CheckId::RunAsUser,
    CheckId::SeccompProfileRestricted,
    CheckId::CapabilitiesRestricted,
    CheckId::ProcMountRestricted,
];

/// The checks a `fail` fixture may be refused by: the one it is named
/// after, and the restricted check that replaces it at `level`/`version`.
/// At least one of them must be in force there.
fn expected_checks(
    file_stem: &str,
    level: Level,
    version: Version,
) -> Result<Vec<CheckId>, String> {
    let name = file_stem.trim_end_matches(|c: char| c.is_ascii_digit());
    let Some(&id) = ALL_CHECKS
        .iter()
        .find(|id| id.as_str().eq_ignore_ascii_case(name))
    else {
        return Err(format!("no check is named {name:?}"));
    };
    let mut out = vec![id];
    if level == Level::Restricted {
        let replacement = match id {
            CheckId::HostPathVolumes => Some(CheckId::RestrictedVolumes),
            CheckId::CapabilitiesBaseline if version.minor() >= 22 => {
                Some(CheckId::CapabilitiesRestricted)
            }
            CheckId::SeccompProfileBaseline if version.minor() >= 19 => {
                Some(CheckId::SeccompProfileRestricted)
            }
            CheckId::ProcMount if version.minor() >= 35 => Some(CheckId::ProcMountRestricted),
            _ => None,
        };
        out.extend(replacement);
    }
    let in_force = podsecurity::checks_in_force(level, version);
    if !out.iter().any(|id| in_force.contains(id)) {
        return Err(format!(
            "check {id} is not in force at {level} {version}, so the fixture's verdict cannot be \
             explained"
        ));
    }
    Ok(out)
}

/// The entries of `dir`, sorted, or why they cannot be read.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let read = fs::read_dir(dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| format!("{}: cannot read an entry: {e}", dir.display()))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Default)]
struct Tally {
    pass: usize,
    fail: usize,
}

/// Judges one fixture; `Err` says how the checker disagrees with the
/// official verdict, or why the fixture cannot be judged.
fn judge(file: &Path, level: Level, version: Version, expect_pass: bool) -> Result<(), String> {
    let text = fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let pod: serde_json::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("not one YAML document: {e}"))?;
    if pod.get("kind").and_then(|k| k.as_str()) != Some("Pod") {
        return Err("not a Pod (kind is not \"Pod\")".to_owned());
    }
    let violations = podsecurity::check(level, version, &pod);
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if expect_pass {
        if violations.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "the official library admits it; this checker refuses it: {}",
            podsecurity::summary(level, version, &violations)
        ));
    }
    let want = expected_checks(&stem, level, version)?;
    if violations.iter().any(|v| want.contains(&v.check)) {
        return Ok(());
    }
    let want: Vec<&str> = want.iter().map(|id| id.as_str()).collect();
    if violations.is_empty() {
        return Err(format!(
            "the official library refuses it ({}); this checker admits it",
            want.join(" or ")
        ));
    }
    Err(format!(
        "the official library refuses it by {}; this checker only by: {}",
        want.join(" or "),
        podsecurity::summary(level, version, &violations)
    ))
}

#[test]
fn pod_security_conformance_with_official_fixtures() {
    let (root, _unpacked) = fixtures_dir();
    let mut tallies: BTreeMap<(Level, Version), Tally> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut fail = |what: String| failures.push(what);

    match entries(&root) {
        Ok(top) => {
            for path in top {
                let name = file_name(&path);
                let known = match name.as_str() {
                    "baseline" | "restricted" => path.is_dir(),
                    "README.md" | "LICENSE" => path.is_file(),
                    _ => false,
                };
                if !known {
                    fail(format!(
                        "{}: unexpected entry in the fixture tree",
                        path.display()
                    ));
                }
            }
        }
        Err(e) => fail(e),
    }

    for level in [Level::Baseline, Level::Restricted] {
        let level_dir = root.join(level.as_str());
        let mut versions: Vec<(Version, PathBuf)> = Vec::new();
        match entries(&level_dir) {
            Ok(dirs) => {
                for path in dirs {
                    match file_name(&path).parse::<Version>() {
                        Ok(v) if path.is_dir() => versions.push((v, path)),
                        Ok(_) => fail(format!("{}: not a directory", path.display())),
                        Err(e) => fail(format!(
                            "{}: not a policy version this checker knows: {e}",
                            path.display()
                        )),
                    }
                }
            }
            Err(e) => fail(e),
        }
        versions.sort();
        // The test data covers every version from v1.0 up to its newest.
        match versions.last() {
            Some((newest, _)) if versions.len() as u32 == newest.minor() + 1 => {}
            Some((newest, _)) => fail(format!(
                "{level}: {} version directories, but v1.0 … {newest} are {}",
                versions.len(),
                newest.minor() + 1
            )),
            None => fail(format!("{level}: no version directories")),
        }
        for (version, dir) in versions {
            let tally = tallies.entry((level, version)).or_default();
            let subdirs = match entries(&dir) {
                Ok(s) => s,
                Err(e) => {
                    fail(e);
                    continue;
                }
            };
            for path in &subdirs {
                let name = file_name(path);
                if !(path.is_dir() && (name == "pass" || name == "fail")) {
                    fail(format!(
                        "{}: unexpected entry (want pass/ and fail/ only)",
                        path.display()
                    ));
                }
            }
            for (verdict, expect_pass) in [("pass", true), ("fail", false)] {
                let files = match entries(&dir.join(verdict)) {
                    Ok(f) => f,
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                };
                if files.is_empty() {
                    fail(format!("{}/{verdict}: no fixtures", dir.display()));
                }
                for file in files {
                    let shown = format!("{level} {version} {verdict}/{}", file_name(&file));
                    if !(file.is_file() && file.extension().is_some_and(|x| x == "yaml")) {
                        fail(format!(
                            "{shown}: not a .yaml fixture file, cannot judge it"
                        ));
                        continue;
                    }
                    match judge(&file, level, version, expect_pass) {
                        Ok(()) if expect_pass => tally.pass += 1,
                        Ok(()) => tally.fail += 1,
                        Err(why) => fail(format!("{shown}: {why}")),
                    }
                }
            }
        }
    }

    let mut per_level: BTreeMap<Level, (usize, usize)> = BTreeMap::new();
    println!("Pod Security conformance (official fixtures agreed with, pass + fail):");
    for ((level, version), t) in &tallies {
        println!(
            "  {:<10} {:<6} {:>3} pass + {:>3} fail",
            level.to_string(),
            version.to_string(),
            t.pass,
            t.fail
        );
        let sum = per_level.entry(*level).or_default();
        sum.0 += t.pass;
        sum.1 += t.fail;
    }
    let mut checked = 0;
    for (level, (pass, fail)) in &per_level {
        let versions = tallies.keys().filter(|(l, _)| l == level).count();
        println!(
            "  {level}: {} fixtures over {versions} versions ({pass} pass + {fail} fail)",
            pass + fail
        );
        checked += pass + fail;
    }
    println!("Pod Security conformance: {checked} official fixtures checked");
    assert!(
        failures.is_empty(),
        "{} fixture problem(s) — disagreements with the official verdict or fixtures that \
         cannot be judged ({checked} agreed):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 0, "no fixture was checked");
}

// ---------------------------------------------------------------------------
// Palisade's own pods: everything `palisade sandbox render` and `palisade
// inject` print is restricted, but for the documented `init` container.
// ---------------------------------------------------------------------------

const SANDBOX_ID: &str = "sbx-07491c1891044386a51a2c3a3e7c1e31";

/// Runs `palisade ARGS` (the real binary) and returns its stdout.
fn palisade(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run palisade");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(pipe);
    let out = child.wait_with_output().expect("wait for palisade");
    assert!(
        out.status.success(),
        "palisade {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The pods in a multi-document YAML stream: Pods as they are, and the pod
/// templates of Deployments, StatefulSets, Jobs and CronJobs as Pods.
fn pods_in(yaml: &str) -> Vec<(String, serde_json::Value)> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).expect("a YAML document");
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        let name = format!("{kind}/{}", v["metadata"]["name"].as_str().unwrap_or("?"));
        let template = match kind.as_str() {
            "Pod" => Some(v.clone()),
            "Deployment" | "StatefulSet" | "Job" => Some(v["spec"]["template"].clone()),
            "CronJob" => Some(v["spec"]["jobTemplate"]["spec"]["template"].clone()),
            _ => None,
        };
        if let Some(mut pod) = template {
            pod["apiVersion"] = "v1".into();
            pod["kind"] = "Pod".into();
            out.push((name, pod));
        }
    }
    out
}

/// Every container of `pod` as `(path, name)`.
fn containers(pod: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            out.push((format!("spec.{list}[{i}]"), name));
        }
    }
    out
}

/// `pod` passes restricted and baseline at every version once the `init`
/// container is exempt; without the exemption only `init` fails, for its
/// documented NET_ADMIN + NET_RAW; and adding a capability to any other
/// container makes it fail.
fn assert_restricted_but_for_init(what: &str, pod: &serde_json::Value) {
    use palisade_gateway::pod::INIT_CONTAINER;
    let all = containers(pod);
    let init_path = all
        .iter()
        .find(|(_, n)| n == INIT_CONTAINER)
        .map(|(p, _)| format!("{p}."))
        .unwrap_or_else(|| panic!("{what}: no {INIT_CONTAINER} container"));
    for version in Version::all() {
        for level in [Level::Baseline, Level::Restricted] {
            let vs = podsecurity::check_except(level, version, pod, &[INIT_CONTAINER])
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                vs.is_empty(),
                "{what}: {}",
                podsecurity::summary(level, version, &vs)
            );
        }
    }
    let vs = podsecurity::check(Level::Restricted, Version::LATEST, pod);
    assert!(
        vs.iter()
            .any(|v| v.check == CheckId::CapabilitiesRestricted),
        "{what}: the init container's NET_ADMIN/NET_RAW must be what restricted refuses: {vs:#?}"
    );
    assert!(
        vs.iter().all(|v| v.path.starts_with(&init_path)),
        "{what}: a violation outside {INIT_CONTAINER}: {vs:#?}"
    );
    // Mutation: the same capability in any other container is refused there.
    for (path, name) in all.iter().filter(|(_, n)| n != INIT_CONTAINER) {
        let mut mutated = pod.clone();
        let (list, index) = path
            .trim_start_matches("spec.")
            .trim_end_matches(']')
            .split_once('[')
            .expect("container path");
        let index: usize = index.parse().expect("container index");
        let sc = &mut mutated["spec"][list][index]["securityContext"];
        sc["capabilities"]["add"] = serde_json::json!(["NET_ADMIN"]);
        let vs = podsecurity::check_except(
            Level::Restricted,
            Version::LATEST,
            &mutated,
            &[INIT_CONTAINER],
        )
        .expect("init exists");
        let want = format!("{path}.securityContext.capabilities.add");
        assert!(
            vs.iter()
                .any(|v| v.check == CheckId::CapabilitiesRestricted && v.path == want),
            "{what}: NET_ADMIN added to {name} must fail restricted at {want}: {vs:#?}"
        );
    }
}

#[test]
fn rendered_and_injected_pods_are_restricted_but_for_init() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy_file = manifest.join("../policies/examples/deny-all.yaml");
    let policy_file = policy_file.to_str().expect("UTF-8 path");
    let gateway = [
        "--policy",
        "deny-all",
        "--gateway-url",
        "https://gw.example:8443",
    ];
    let sandbox = ["--sandbox-id", SANDBOX_ID];
    let openshift = [
        "--uid-range",
        "1000680000/10000",
        "--supplemental-groups",
        "1000680000/10000",
    ];
    let render = |extra: &[&str]| {
        let mut args = vec!["sandbox", "render", "demo", "--image", "busybox"];
        args.extend_from_slice(extra);
        palisade(&args, None)
    };
    let mut outputs: Vec<(String, String)> = vec![
        (
            "render native".into(),
            render(&[&gateway[..], &sandbox].concat()),
        ),
        (
            "render classic".into(),
            render(&[&gateway[..], &sandbox, &["--topology", "classic"]].concat()),
        ),
        (
            "render OpenShift + SPIFFE CSI".into(),
            render(
                &[
                    &gateway[..],
                    &sandbox,
                    &openshift,
                    &["--spiffe-csi-driver", "csi.spiffe.io"],
                ]
                .concat(),
            ),
        ),
        (
            "render file policy".into(),
            render(&["--policy-source", "file", "--policy", policy_file]),
        ),
    ];
    let workloads = r#"
apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  containers:
    - {name: app, image: registry.example/app:1, command: [/app]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coder}
spec:
  selector: {matchLabels: {app: coder}}
  template:
    metadata: {labels: {app: coder}}
    spec:
      containers:
        - name: coder
          image: registry.example/coder:1
          command: [python3, -m, coder]
          volumeMounts: [{name: work, mountPath: /work}]
      volumes: [{name: work, emptyDir: {}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: audit
              image: registry.example/audit:2
              command: [/usr/bin/audit, --all]
              securityContext: {runAsUser: 4000, runAsGroup: 4000}
"#;
    // `--sandbox-id` names one sandbox: one workload per run.
    for workload in workloads.split("\n---\n") {
        // A classic sidecar never stops, so inject refuses it for a CronJob.
        let topologies: &[&str] = if workload.contains("kind: CronJob") {
            &["native"]
        } else {
            &["native", "classic"]
        };
        for topology in topologies {
            let mut args = vec!["inject", "-f", "-", "--topology", topology];
            args.extend_from_slice(&gateway);
            args.extend_from_slice(&sandbox);
            outputs.push((
                format!("inject {topology}"),
                palisade(&args, Some(workload)),
            ));
        }
    }
    let mut checked = 0;
    for (what, yaml) in &outputs {
        let pods = pods_in(yaml);
        assert!(!pods.is_empty(), "{what}: no pod in the output:\n{yaml}");
        for (name, pod) in pods {
            assert_restricted_but_for_init(&format!("{what}: {name}"), &pod);
            checked += 1;
        }
    }
    // 4 renderings + Pod and Deployment × 2 topologies + CronJob native.
    assert_eq!(checked, 9, "pods checked");
    println!("Palisade pods restricted but for init: {checked} checked");
}
