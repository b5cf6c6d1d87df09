//! Unit tests per check, including the rules newer than the official
//! fixtures (v1.34 host probes, v1.35 user-namespace relaxations and
//! `procMount_restricted`, v1.37 sysctls). Each starts from a pod that
//! passes and changes one thing.

use serde_json::{Value, json};

use super::*;

fn v(minor: u32) -> Version {
    Version::new(minor).expect("known version")
}

const LATEST: Version = Version::LATEST;
use Level::{Baseline, Restricted};

/// A pod that is restricted at every version: one init container, one
/// container, each fully hardened.
fn good_pod() -> Value {
    let sc = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sandbox"},
        "spec": {
            "initContainers": [{"name": "setup", "image": "img", "securityContext": sc.clone()}],
            "containers": [{"name": "agent", "image": "img", "securityContext": sc}],
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}
        }
    })
}

/// `good_pod` with `f` applied.
fn pod_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut p = good_pod();
    f(&mut p);
    p
}

fn agent_sc(p: &mut Value) -> &mut Value {
    &mut p["spec"]["containers"][0]["securityContext"]
}

fn ids(vs: &[Violation]) -> Vec<&'static str> {
    let mut out: Vec<_> = vs.iter().map(|v| v.check.as_str()).collect();
    out.dedup();
    out
}

/// Exactly one violation, of `id` at `path`.
#[track_caller]
fn assert_only(vs: &[Violation], id: CheckId, path: &str) {
    assert_eq!(vs.len(), 1, "want one {id} at {path}, got {vs:#?}");
    assert_eq!(vs[0].check, id, "{vs:#?}");
    assert_eq!(vs[0].path, path, "{vs:#?}");
}

#[test]
fn podsecurity_versions_and_levels_parse_strictly() {
    assert_eq!("latest".parse::<Version>().unwrap(), v(37));
    assert_eq!(Version::LATEST.to_string(), "v1.37");
    assert_eq!("v1.0".parse::<Version>().unwrap(), v(0));
    assert_eq!("v1.35".parse::<Version>().unwrap(), v(35));
    for bad in [
        "", "1.30", "v1.", "v1.05", "v2.0", "v1.3x", " v1.3", "v1.-1", "Latest",
    ] {
        assert_eq!(
            bad.parse::<Version>(),
            Err(PodSecurityError::Version(bad.to_owned())),
            "{bad:?}"
        );
    }
    let too_new = "v1.38".parse::<Version>().unwrap_err();
    assert_eq!(too_new, PodSecurityError::VersionTooNew(38));
    assert!(too_new.to_string().contains("latest is v1.37"), "{too_new}");
    assert!(Version::new(38).is_err());
    assert_eq!(Version::all().count(), 38);
    assert_eq!("restricted".parse::<Level>().unwrap(), Restricted);
    assert_eq!("baseline".parse::<Level>().unwrap(), Baseline);
    let privileged = "privileged".parse::<Level>().unwrap_err();
    assert!(
        privileged.to_string().contains("nothing to check"),
        "{privileged}"
    );
}

#[test]
fn podsecurity_checks_in_force_follow_the_version_table() {
    let has = |l, ver, id| checks_in_force(l, ver).contains(&id);
    assert!(!has(Baseline, v(33), CheckId::HostProbesAndHostLifecycle));
    assert!(has(Baseline, v(34), CheckId::HostProbesAndHostLifecycle));
    assert!(has(Restricted, v(34), CheckId::HostProbesAndHostLifecycle));
    // procMount_restricted replaces procMount at restricted from v1.35 only.
    assert!(has(Restricted, v(34), CheckId::ProcMount));
    assert!(!has(Restricted, v(34), CheckId::ProcMountRestricted));
    assert!(!has(Restricted, v(35), CheckId::ProcMount));
    assert!(has(Restricted, v(35), CheckId::ProcMountRestricted));
    assert!(has(Baseline, v(35), CheckId::ProcMount));
    assert!(!has(Baseline, v(35), CheckId::ProcMountRestricted));
    // capabilities_restricted (v1.22+) replaces capabilities_baseline.
    assert!(has(Restricted, v(21), CheckId::CapabilitiesBaseline));
    assert!(!has(Restricted, v(22), CheckId::CapabilitiesBaseline));
    assert!(has(Restricted, v(22), CheckId::CapabilitiesRestricted));
    // seccompProfile_restricted (v1.19+) replaces seccompProfile_baseline.
    assert!(has(Restricted, v(18), CheckId::SeccompProfileBaseline));
    assert!(!has(Restricted, v(19), CheckId::SeccompProfileBaseline));
    // restrictedVolumes replaces hostPathVolumes at every version.
    assert!(!has(Restricted, v(0), CheckId::HostPathVolumes));
    assert!(has(Baseline, LATEST, CheckId::HostPathVolumes));
    assert!(!has(Restricted, v(7), CheckId::AllowPrivilegeEscalation));
    assert!(has(Restricted, v(8), CheckId::AllowPrivilegeEscalation));
    assert!(!has(Restricted, v(22), CheckId::RunAsUser));
    assert!(has(Restricted, v(23), CheckId::RunAsUser));
    assert!(!has(Baseline, LATEST, CheckId::RunAsNonRoot));
    assert_eq!(checks_in_force(Baseline, LATEST).len(), 12);
    // 12 baseline + 7 restricted - 4 replaced.
    assert_eq!(checks_in_force(Restricted, LATEST).len(), 15);
}

#[test]
fn podsecurity_good_pod_passes_every_level_and_version() {
    for ver in Version::all() {
        for level in [Baseline, Restricted] {
            let vs = check(level, ver, &good_pod());
            assert!(vs.is_empty(), "{level} {ver}: {vs:#?}");
        }
    }
}

#[test]
fn podsecurity_capabilities_add_net_admin_fails() {
    let p = pod_with(|p| agent_sc(p)["capabilities"]["add"] = json!(["NET_ADMIN"]));
    let path = "spec.containers[0].securityContext.capabilities.add";
    let vs = check(Restricted, LATEST, &p);
    assert_only(&vs, CheckId::CapabilitiesRestricted, path);
    assert_eq!(vs[0].reason, "unrestricted capabilities");
    assert_eq!(
        vs[0].detail,
        "container \"agent\" must not include \"NET_ADMIN\" in securityContext.capabilities.add"
    );
    assert_only(
        &check(Baseline, LATEST, &p),
        CheckId::CapabilitiesBaseline,
        path,
    );
    // Before v1.22 restricted had only the baseline list.
    assert_only(
        &check(Restricted, v(21), &p),
        CheckId::CapabilitiesBaseline,
        path,
    );
    // A default-set capability is baseline but not restricted; NET_BIND_SERVICE is both.
    let chown = pod_with(|p| agent_sc(p)["capabilities"]["add"] = json!(["CHOWN"]));
    assert!(check(Baseline, LATEST, &chown).is_empty());
    assert_only(
        &check(Restricted, LATEST, &chown),
        CheckId::CapabilitiesRestricted,
        path,
    );
    let bind = pod_with(|p| agent_sc(p)["capabilities"]["add"] = json!(["NET_BIND_SERVICE"]));
    assert!(check(Restricted, LATEST, &bind).is_empty());
}

#[test]
fn podsecurity_capabilities_must_drop_all() {
    let path = "spec.containers[0].securityContext.capabilities.drop";
    for caps in [
        json!({"drop": ["NET_RAW"]}),
        json!({}),
        json!(null),
        json!({"drop": ["all"]}),
    ] {
        let p = pod_with(|p| agent_sc(p)["capabilities"] = caps.clone());
        assert_only(
            &check(Restricted, LATEST, &p),
            CheckId::CapabilitiesRestricted,
            path,
        );
        assert!(check(Restricted, v(21), &p).is_empty(), "{caps}");
        assert!(check(Baseline, LATEST, &p).is_empty(), "{caps}");
    }
}

#[test]
fn podsecurity_host_port_fails() {
    let p = pod_with(|p| {
        p["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": 80}, {"containerPort": 8080, "hostPort": 8080}]);
    });
    let path = "spec.containers[0].ports[1].hostPort";
    for level in [Baseline, Restricted] {
        let vs = check(level, LATEST, &p);
        assert_only(&vs, CheckId::HostPorts, path);
        assert_eq!(vs[0].detail, "container \"agent\" uses hostPort 8080");
    }
    let zero = pod_with(|p| p["spec"]["containers"][0]["ports"] = json!([{"hostPort": 0}]));
    assert!(check(Restricted, LATEST, &zero).is_empty());
}

#[test]
fn podsecurity_host_namespaces_fail() {
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        let p = pod_with(|p| p["spec"][field] = json!(true));
        let vs = check(Baseline, v(0), &p);
        assert_only(&vs, CheckId::HostNamespaces, &format!("spec.{field}"));
        assert_eq!(vs[0].detail, format!("{field}=true"));
        let off = pod_with(|p| p["spec"][field] = json!(false));
        assert!(check(Restricted, LATEST, &off).is_empty());
    }
}

#[test]
fn podsecurity_privileged_fails_in_any_container_kind() {
    let p =
        pod_with(|p| p["spec"]["initContainers"][0]["securityContext"]["privileged"] = json!(true));
    let path = "spec.initContainers[0].securityContext.privileged";
    assert_only(&check(Baseline, LATEST, &p), CheckId::Privileged, path);
    let eph = pod_with(|p| {
        p["spec"]["ephemeralContainers"] =
            json!([{"name": "debug", "securityContext": {"privileged": true}}]);
    });
    let vs = check(Baseline, LATEST, &eph);
    assert_only(
        &vs,
        CheckId::Privileged,
        "spec.ephemeralContainers[0].securityContext.privileged",
    );
    // null is absent.
    let null = pod_with(|p| agent_sc(p)["privileged"] = Value::Null);
    assert!(check(Restricted, LATEST, &null).is_empty());
}

#[test]
fn podsecurity_volumes() {
    let with_volume = |vol: Value| pod_with(|p| p["spec"]["volumes"] = json!([vol]));
    let host = with_volume(json!({"name": "h", "hostPath": {"path": "/"}}));
    assert_only(
        &check(Baseline, LATEST, &host),
        CheckId::HostPathVolumes,
        "spec.volumes[0].hostPath",
    );
    let vs = check(Restricted, LATEST, &host);
    assert_only(&vs, CheckId::RestrictedVolumes, "spec.volumes[0].hostPath");
    assert_eq!(
        vs[0].detail,
        "volume \"h\" uses restricted volume type \"hostPath\""
    );
    let nfs = with_volume(json!({"name": "n", "nfs": {"server": "s", "path": "/"}}));
    assert!(check(Baseline, LATEST, &nfs).is_empty());
    assert_only(
        &check(Restricted, v(0), &nfs),
        CheckId::RestrictedVolumes,
        "spec.volumes[0].nfs",
    );
    // An unknown source is not on the allowed list either.
    let unknown = with_volume(json!({"name": "u", "somethingNew": {}}));
    assert_only(
        &check(Restricted, LATEST, &unknown),
        CheckId::RestrictedVolumes,
        "spec.volumes[0].somethingNew",
    );
    for ok in [
        json!({"name": "e", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "defaulted"}),
        json!({"name": "i", "image": {"reference": "r"}}),
        json!({"name": "p", "projected": {"sources": []}}),
        json!({"name": "c", "csi": {"driver": "d"}}),
    ] {
        assert!(
            check(Restricted, LATEST, &with_volume(ok.clone())).is_empty(),
            "{ok}"
        );
    }
}

#[test]
fn podsecurity_app_armor() {
    let ann = pod_with(|p| {
        p["metadata"]["annotations"] =
            json!({"container.apparmor.security.beta.kubernetes.io/agent": "unconfined"});
    });
    let path = "metadata.annotations[container.apparmor.security.beta.kubernetes.io/agent]";
    assert_only(&check(Baseline, v(0), &ann), CheckId::AppArmorProfile, path);
    for ok in ["runtime/default", "localhost/prof", ""] {
        let p = pod_with(|p| {
            p["metadata"]["annotations"] =
                json!({"container.apparmor.security.beta.kubernetes.io/agent": ok});
        });
        assert!(check(Restricted, LATEST, &p).is_empty(), "{ok}");
    }
    let field = pod_with(|p| agent_sc(p)["appArmorProfile"] = json!({"type": "Unconfined"}));
    let path = "spec.containers[0].securityContext.appArmorProfile.type";
    assert_only(
        &check(Baseline, LATEST, &field),
        CheckId::AppArmorProfile,
        path,
    );
    let pod_field = pod_with(|p| {
        p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"})
    });
    let path = "spec.securityContext.appArmorProfile.type";
    assert_only(
        &check(Baseline, LATEST, &pod_field),
        CheckId::AppArmorProfile,
        path,
    );
    let local = pod_with(|p| {
        agent_sc(p)["appArmorProfile"] = json!({"type": "Localhost", "localhostProfile": "x"});
    });
    assert!(check(Restricted, LATEST, &local).is_empty());
}

#[test]
fn podsecurity_se_linux_options() {
    let typed = |t: &str| pod_with(|p| agent_sc(p)["seLinuxOptions"] = json!({"type": t}));
    let path = "spec.containers[0].securityContext.seLinuxOptions.type";
    assert_only(
        &check(Baseline, LATEST, &typed("spc_t")),
        CheckId::SeLinuxOptions,
        path,
    );
    assert!(check(Restricted, LATEST, &typed("container_t")).is_empty());
    // container_engine_t from v1.31.
    assert_only(
        &check(Baseline, v(30), &typed("container_engine_t")),
        CheckId::SeLinuxOptions,
        path,
    );
    assert!(check(Baseline, v(31), &typed("container_engine_t")).is_empty());
    let user = pod_with(|p| {
        p["spec"]["securityContext"]["seLinuxOptions"] = json!({"user": "root", "level": "s0"})
    });
    let vs = check(Baseline, LATEST, &user);
    assert_only(
        &vs,
        CheckId::SeLinuxOptions,
        "spec.securityContext.seLinuxOptions.user",
    );
    assert_eq!(
        vs[0].detail,
        "pod set forbidden securityContext.seLinuxOptions: user may not be set"
    );
    let level_only = pod_with(|p| agent_sc(p)["seLinuxOptions"] = json!({"level": "s0:c1"}));
    assert!(check(Restricted, LATEST, &level_only).is_empty());
}

#[test]
fn podsecurity_proc_mount_and_user_namespaces() {
    let unmasked = |host_users: Option<bool>| {
        pod_with(|p| {
            agent_sc(p)["procMount"] = json!("Unmasked");
            if let Some(h) = host_users {
                p["spec"]["hostUsers"] = json!(h);
            }
        })
    };
    let path = "spec.containers[0].securityContext.procMount";
    // Host user namespace: forbidden at every version and level.
    for ver in [v(0), v(34), v(35), LATEST] {
        assert_only(
            &check(Baseline, ver, &unmasked(None)),
            CheckId::ProcMount,
            path,
        );
        assert_only(
            &check(Baseline, ver, &unmasked(Some(true))),
            CheckId::ProcMount,
            path,
        );
    }
    // hostUsers: false relaxes baseline from v1.35, never restricted.
    assert_only(
        &check(Baseline, v(34), &unmasked(Some(false))),
        CheckId::ProcMount,
        path,
    );
    assert!(check(Baseline, v(35), &unmasked(Some(false))).is_empty());
    assert!(check(Baseline, LATEST, &unmasked(Some(false))).is_empty());
    assert_only(
        &check(Restricted, v(34), &unmasked(Some(false))),
        CheckId::ProcMount,
        path,
    );
    assert_only(
        &check(Restricted, v(35), &unmasked(Some(false))),
        CheckId::ProcMountRestricted,
        path,
    );
    assert_only(
        &check(Restricted, LATEST, &unmasked(None)),
        CheckId::ProcMountRestricted,
        path,
    );
    let default = pod_with(|p| agent_sc(p)["procMount"] = json!("Default"));
    assert!(check(Restricted, LATEST, &default).is_empty());
}

#[test]
fn podsecurity_user_namespaces_relax_run_as_non_root_and_run_as_user_from_1_35() {
    // Root in a user namespace: no runAsNonRoot anywhere, UID 0 everywhere.
    let root = |host_users: Value| {
        pod_with(|p| {
            p["spec"]["hostUsers"] = host_users;
            p["spec"]["securityContext"] =
                json!({"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}});
            for list in ["initContainers", "containers"] {
                let sc = &mut p["spec"][list][0]["securityContext"];
                sc.as_object_mut().unwrap().remove("runAsNonRoot");
                sc["runAsUser"] = json!(0);
            }
        })
    };
    let userns = root(json!(false));
    assert!(check(Restricted, v(35), &userns).is_empty());
    assert!(check(Restricted, LATEST, &userns).is_empty());
    let vs = check(Restricted, v(34), &userns);
    assert_eq!(ids(&vs), ["runAsNonRoot", "runAsUser"], "{vs:#?}");
    // The same pod in the host user namespace fails at every version.
    for host_users in [json!(true), Value::Null] {
        let vs = check(Restricted, LATEST, &root(host_users));
        assert_eq!(ids(&vs), ["runAsNonRoot", "runAsUser"], "{vs:#?}");
    }
    // Capabilities are not relaxed by user namespaces.
    let caps = pod_with(|p| {
        p["spec"]["hostUsers"] = json!(false);
        agent_sc(p)["capabilities"]["add"] = json!(["SYS_ADMIN"]);
    });
    assert_eq!(
        ids(&check(Restricted, LATEST, &caps)),
        ["capabilities_restricted"]
    );
}

#[test]
fn podsecurity_run_as_non_root() {
    let path = "spec.containers[0].securityContext.runAsNonRoot";
    let unset = pod_with(|p| {
        p["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsNonRoot");
        agent_sc(p).as_object_mut().unwrap().remove("runAsNonRoot");
    });
    let vs = check(Restricted, v(0), &unset);
    assert_only(&vs, CheckId::RunAsNonRoot, path);
    assert_eq!(
        vs[0].detail,
        "pod or container \"agent\" must set securityContext.runAsNonRoot=true"
    );
    assert!(check(Baseline, LATEST, &unset).is_empty());
    // A pod-level true covers containers that set nothing; an explicit false does not.
    let explicit = pod_with(|p| agent_sc(p)["runAsNonRoot"] = json!(false));
    assert_only(
        &check(Restricted, LATEST, &explicit),
        CheckId::RunAsNonRoot,
        path,
    );
    let pod_false = pod_with(|p| p["spec"]["securityContext"]["runAsNonRoot"] = json!(false));
    assert_only(
        &check(Restricted, LATEST, &pod_false),
        CheckId::RunAsNonRoot,
        "spec.securityContext.runAsNonRoot",
    );
}

#[test]
fn podsecurity_run_as_user_zero_from_1_23() {
    let p = pod_with(|p| agent_sc(p)["runAsUser"] = json!(0));
    let path = "spec.containers[0].securityContext.runAsUser";
    assert_only(&check(Restricted, v(23), &p), CheckId::RunAsUser, path);
    assert!(check(Restricted, v(22), &p).is_empty());
    assert!(check(Baseline, LATEST, &p).is_empty());
    let pod_level = pod_with(|p| p["spec"]["securityContext"]["runAsUser"] = json!(0));
    assert_only(
        &check(Restricted, LATEST, &pod_level),
        CheckId::RunAsUser,
        "spec.securityContext.runAsUser",
    );
    let uid = pod_with(|p| agent_sc(p)["runAsUser"] = json!(1000));
    assert!(check(Restricted, LATEST, &uid).is_empty());
}

#[test]
fn podsecurity_allow_privilege_escalation_from_1_8() {
    let path = "spec.containers[0].securityContext.allowPrivilegeEscalation";
    for value in [Value::Null, json!(true)] {
        let p = pod_with(|p| agent_sc(p)["allowPrivilegeEscalation"] = value.clone());
        assert_only(
            &check(Restricted, v(8), &p),
            CheckId::AllowPrivilegeEscalation,
            path,
        );
        assert!(check(Restricted, v(7), &p).is_empty());
        assert!(check(Baseline, LATEST, &p).is_empty());
    }
}

#[test]
fn podsecurity_seccomp() {
    let unconfined = pod_with(|p| agent_sc(p)["seccompProfile"] = json!({"type": "Unconfined"}));
    let path = "spec.containers[0].securityContext.seccompProfile.type";
    assert_only(
        &check(Restricted, LATEST, &unconfined),
        CheckId::SeccompProfileRestricted,
        path,
    );
    assert_only(
        &check(Baseline, v(19), &unconfined),
        CheckId::SeccompProfileBaseline,
        path,
    );
    // Before v1.19 only the annotations counted.
    assert!(check(Baseline, v(18), &unconfined).is_empty());
    let no_type = pod_with(|p| agent_sc(p)["seccompProfile"] = json!({}));
    assert_only(
        &check(Baseline, LATEST, &no_type),
        CheckId::SeccompProfileBaseline,
        path,
    );
    // Restricted wants a profile: pod level, or every container.
    let unset = pod_with(|p| {
        p["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("seccompProfile");
        agent_sc(p)
            .as_object_mut()
            .unwrap()
            .remove("seccompProfile");
    });
    let vs = check(Restricted, LATEST, &unset);
    assert_only(&vs, CheckId::SeccompProfileRestricted, path);
    assert!(
        vs[0]
            .detail
            .starts_with("pod or container \"agent\" must set"),
        "{vs:#?}"
    );
    assert!(check(Restricted, v(18), &unset).is_empty());
    assert!(check(Baseline, LATEST, &unset).is_empty());
    let local = pod_with(|p| {
        p["spec"]["securityContext"]["seccompProfile"] =
            json!({"type": "Localhost", "localhostProfile": "p.json"})
    });
    assert!(check(Restricted, LATEST, &local).is_empty());
}

#[test]
fn podsecurity_seccomp_annotations_before_1_19() {
    let annotated =
        |key: &str, value: &str| pod_with(|p| p["metadata"]["annotations"] = json!({ key: value }));
    let pod_key = "seccomp.security.alpha.kubernetes.io/pod";
    let p = annotated(pod_key, "unconfined");
    let path = format!("metadata.annotations[{pod_key}]");
    assert_only(
        &check(Baseline, v(18), &p),
        CheckId::SeccompProfileBaseline,
        &path,
    );
    assert_only(
        &check(Restricted, v(18), &p),
        CheckId::SeccompProfileBaseline,
        &path,
    );
    assert!(check(Baseline, v(19), &p).is_empty());
    let container_key = "container.seccomp.security.alpha.kubernetes.io/agent";
    let c = annotated(container_key, "unconfined");
    assert_eq!(ids(&check(Baseline, v(0), &c)), ["seccompProfile_baseline"]);
    // An annotation for a container the pod does not have is not read.
    let other = annotated(
        "container.seccomp.security.alpha.kubernetes.io/ghost",
        "unconfined",
    );
    assert!(check(Baseline, v(0), &other).is_empty());
    for ok in ["runtime/default", "docker/default", "localhost/p"] {
        assert!(
            check(Baseline, v(0), &annotated(pod_key, ok)).is_empty(),
            "{ok}"
        );
    }
    // Empty is not a profile; null is decoded as empty, as the API server does.
    assert_only(
        &check(Baseline, v(18), &annotated(pod_key, "")),
        CheckId::SeccompProfileBaseline,
        &path,
    );
    let null = pod_with(|p| p["metadata"]["annotations"] = json!({ pod_key: null }));
    assert_only(
        &check(Baseline, v(18), &null),
        CheckId::SeccompProfileBaseline,
        &path,
    );
}

#[test]
fn podsecurity_sysctls_by_version() {
    let with = |name: &str| {
        pod_with(|p| {
            p["spec"]["securityContext"]["sysctls"] = json!([{"name": name, "value": "1"}])
        })
    };
    let path = "spec.securityContext.sysctls[0].name";
    let cases: &[(&str, u32)] = &[
        ("kernel.shm_rmid_forced", 0),
        ("net.ipv4.ip_unprivileged_port_start", 0),
        ("net.ipv4.ip_local_reserved_ports", 27),
        ("net.ipv4.tcp_keepalive_time", 29),
        ("net.ipv4.tcp_keepalive_probes", 29),
        ("net.ipv4.tcp_rmem", 32),
        ("net.ipv4.tcp_wmem", 32),
        ("net.ipv4.tcp_slow_start_after_idle", 37),
        ("net.ipv4.tcp_notsent_lowat", 37),
    ];
    for &(name, since) in cases {
        assert!(
            check(Baseline, v(since), &with(name)).is_empty(),
            "{name} at v1.{since}"
        );
        if since > 0 {
            let vs = check(Baseline, v(since - 1), &with(name));
            assert_only(&vs, CheckId::Sysctls, path);
            assert_eq!(vs[0].detail, name);
        }
    }
    assert_only(
        &check(Restricted, LATEST, &with("kernel.msgmax")),
        CheckId::Sysctls,
        path,
    );
}

#[test]
fn podsecurity_windows_host_process() {
    let c = pod_with(|p| agent_sc(p)["windowsOptions"] = json!({"hostProcess": true}));
    let path = "spec.containers[0].securityContext.windowsOptions.hostProcess";
    assert_only(
        &check(Baseline, v(0), &c),
        CheckId::WindowsHostProcess,
        path,
    );
    let pod =
        pod_with(|p| p["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true}));
    let path = "spec.securityContext.windowsOptions.hostProcess";
    assert_only(
        &check(Baseline, LATEST, &pod),
        CheckId::WindowsHostProcess,
        path,
    );
    let off = pod_with(|p| {
        agent_sc(p)["windowsOptions"] = json!({"hostProcess": false, "runAsUserName": "u"})
    });
    assert!(check(Restricted, LATEST, &off).is_empty());
}

#[test]
fn podsecurity_host_probes_and_lifecycle_from_1_34() {
    let cases = [
        (
            "livenessProbe",
            json!({"httpGet": {"host": "10.0.0.1", "port": 80}}),
            "livenessProbe.httpGet.host",
        ),
        (
            "readinessProbe",
            json!({"tcpSocket": {"host": "node", "port": 80}}),
            "readinessProbe.tcpSocket.host",
        ),
        (
            "startupProbe",
            json!({"httpGet": {"host": "h", "port": 1}}),
            "startupProbe.httpGet.host",
        ),
        (
            "lifecycle",
            json!({"preStop": {"httpGet": {"host": "h", "port": 1}}}),
            "lifecycle.preStop.httpGet.host",
        ),
        (
            "lifecycle",
            json!({"postStart": {"tcpSocket": {"host": "h", "port": 1}}}),
            "lifecycle.postStart.tcpSocket.host",
        ),
    ];
    for (field, value, suffix) in cases {
        let p = pod_with(|p| p["spec"]["containers"][0][field] = value.clone());
        let path = format!("spec.containers[0].{suffix}");
        assert_only(
            &check(Baseline, v(34), &p),
            CheckId::HostProbesAndHostLifecycle,
            &path,
        );
        assert_only(
            &check(Restricted, LATEST, &p),
            CheckId::HostProbesAndHostLifecycle,
            &path,
        );
        assert!(check(Baseline, v(33), &p).is_empty(), "{suffix}");
        assert!(check(Restricted, v(33), &p).is_empty(), "{suffix}");
    }
    let vs = check(
        Baseline,
        LATEST,
        &pod_with(|p| {
            p["spec"]["containers"][0]["livenessProbe"] =
                json!({"httpGet": {"host": "169.254.169.254", "port": 80}});
        }),
    );
    assert_eq!(vs[0].reason, "probe or lifecycle host");
    assert_eq!(
        vs[0].detail,
        "container \"agent\" uses probe or lifecycle host \"169.254.169.254\""
    );
    let empty_host = pod_with(|p| {
        p["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"host": "", "path": "/ready", "port": 15020}});
    });
    assert!(check(Restricted, LATEST, &empty_host).is_empty());
}

/// A Windows pod need not set Linux-only fields from v1.25, but a bad value
/// it sets anyway still fails.
#[test]
fn podsecurity_windows_exemptions_from_1_25() {
    let windows = json!({
        "kind": "Pod",
        "spec": {
            "os": {"name": "windows"},
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app", "image": "img"}]
        }
    });
    assert!(check(Restricted, v(25), &windows).is_empty());
    assert!(check(Restricted, LATEST, &windows).is_empty());
    let vs = check(Restricted, v(24), &windows);
    assert_eq!(
        ids(&vs),
        [
            "allowPrivilegeEscalation",
            "seccompProfile_restricted",
            "capabilities_restricted"
        ],
        "{vs:#?}"
    );
    let mut linux = windows.clone();
    linux["spec"]["os"]["name"] = json!("linux");
    assert_eq!(check(Restricted, LATEST, &linux).len(), 3);
    let mut caps = windows.clone();
    caps["spec"]["containers"][0]["securityContext"] = json!({
        "capabilities": {"add": ["SYS_ADMIN"]},
        "allowPrivilegeEscalation": true,
        "seccompProfile": {"type": "Unconfined"}
    });
    let vs = check(Restricted, LATEST, &caps);
    assert_eq!(
        ids(&vs),
        [
            "allowPrivilegeEscalation",
            "seccompProfile_restricted",
            "capabilities_restricted"
        ],
        "{vs:#?}"
    );
}

#[test]
fn podsecurity_unreadable_pods_fail_closed() {
    let cases: Vec<(Value, &str)> = vec![
        (json!("not a pod"), "(pod)"),
        (
            json!({"kind": "Deployment", "spec": {"containers": []}}),
            "kind",
        ),
        (json!({"kind": "Pod"}), "spec"),
        (json!({"spec": []}), "spec"),
        (
            pod_with(|p| p["spec"]["hostNetwork"] = json!("true")),
            "spec.hostNetwork",
        ),
        (
            pod_with(|p| agent_sc(p)["privileged"] = json!(1)),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            pod_with(|p| agent_sc(p)["capabilities"]["drop"] = json!("ALL")),
            "spec.containers[0].securityContext.capabilities.drop",
        ),
        (
            pod_with(|p| agent_sc(p)["capabilities"]["add"] = json!([7])),
            "spec.containers[0].securityContext.capabilities.add[0]",
        ),
        (
            pod_with(|p| agent_sc(p)["runAsUser"] = json!("0")),
            "spec.containers[0].securityContext.runAsUser",
        ),
        (
            pod_with(|p| p["spec"]["containers"] = json!({"name": "x"})),
            "spec.containers",
        ),
        (
            pod_with(|p| p["spec"]["containers"][0] = json!({"image": "img"})),
            "spec.containers[0].name",
        ),
        (
            pod_with(|p| p["spec"]["volumes"] = json!([{"name": "v", "hostPath": "/"}])),
            "spec.volumes[0].hostPath",
        ),
        (
            pod_with(|p| p["metadata"]["annotations"] = json!({"a": 1})),
            "metadata.annotations[a]",
        ),
    ];
    for (pod, path) in cases {
        for level in [Baseline, Restricted] {
            let vs = check(level, LATEST, &pod);
            assert!(
                vs.iter()
                    .any(|v| v.check == CheckId::InvalidPod && v.path == path),
                "{level} {pod}: want invalidPod at {path}, got {vs:#?}"
            );
        }
    }
}

/// The renderer's case: restricted except the documented `init` container.
fn pod_with_init() -> Value {
    pod_with(|p| {
        let init = json!({
            "name": "init",
            "image": "sidecar",
            "securityContext": {
                "runAsUser": 0,
                "runAsNonRoot": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "allowPrivilegeEscalation": false
            }
        });
        p["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .insert(0, init);
    })
}

#[test]
fn podsecurity_check_except_exempts_named_containers_only() {
    let p = pod_with_init();
    let vs = check(Restricted, LATEST, &p);
    assert_eq!(
        ids(&vs),
        ["runAsNonRoot", "runAsUser", "capabilities_restricted"],
        "{vs:#?}"
    );
    assert!(
        vs.iter()
            .all(|v| v.path.starts_with("spec.initContainers[0].")),
        "{vs:#?}"
    );
    assert_eq!(check_except(Restricted, LATEST, &p, &["init"]), Ok(vec![]));
    // Exempting something else leaves init's violations.
    let vs = check_except(Restricted, LATEST, &p, &["agent"]).unwrap();
    assert_eq!(
        ids(&vs),
        ["runAsNonRoot", "runAsUser", "capabilities_restricted"]
    );
    // A mistake in a non-exempt container keeps its original path.
    let p2 = pod_with(|p| {
        let mut q = pod_with_init();
        p["spec"] = q["spec"].take();
        p["spec"]["initContainers"][1]["securityContext"]["privileged"] = json!(true);
    });
    let vs = check_except(Restricted, LATEST, &p2, &["init"]).unwrap();
    assert_only(
        &vs,
        CheckId::Privileged,
        "spec.initContainers[1].securityContext.privileged",
    );
    // Pod-level violations are still reported.
    let p3 = pod_with(|p| {
        let mut q = pod_with_init();
        p["spec"] = q["spec"].take();
        p["spec"]["hostNetwork"] = json!(true);
        p["spec"]["securityContext"]["runAsUser"] = json!(0);
    });
    let vs = check_except(Restricted, LATEST, &p3, &["init"]).unwrap();
    assert_eq!(ids(&vs), ["hostNamespaces", "runAsUser"], "{vs:#?}");
    assert_eq!(vs[1].path, "spec.securityContext.runAsUser");
    assert_eq!(
        check_except(Restricted, LATEST, &p, &["iinit"]),
        Err(PodSecurityError::UnknownExemptContainer("iinit".to_owned()))
    );
}

#[test]
fn podsecurity_summary_reads_like_the_admission_message() {
    let p = pod_with(|p| {
        p["spec"]["hostNetwork"] = json!(true);
        agent_sc(p)["capabilities"] = json!({"add": ["NET_ADMIN"]});
    });
    let vs = check(Restricted, LATEST, &p);
    assert_eq!(
        summary(Restricted, LATEST, &vs),
        "violates PodSecurity \"restricted:v1.37\": host namespaces (hostNetwork=true), \
         unrestricted capabilities (container \"agent\" must set securityContext.capabilities.drop=[\"ALL\"]; \
         container \"agent\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)"
    );
    assert_eq!(summary(Restricted, LATEST, &[]), "");
    assert!(
        vs[0]
            .to_string()
            .starts_with("hostNamespaces (spec.hostNetwork): host namespaces: ")
    );
}

#[test]
fn podsecurity_typed_k8s_pod() {
    use k8s_openapi::api::core::v1 as core;
    let pod = core::Pod {
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: "agent".to_owned(),
                security_context: Some(core::SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(core::Capabilities {
                        add: Some(vec!["NET_ADMIN".to_owned()]),
                        drop: Some(vec!["ALL".to_owned()]),
                    }),
                    run_as_non_root: Some(true),
                    seccomp_profile: Some(core::SeccompProfile {
                        type_: "RuntimeDefault".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let vs = check_k8s_pod(Restricted, LATEST, &pod);
    assert_only(
        &vs,
        CheckId::CapabilitiesRestricted,
        "spec.containers[0].securityContext.capabilities.add",
    );
    let vs = check_k8s_pod(Baseline, LATEST, &pod);
    assert_only(
        &vs,
        CheckId::CapabilitiesBaseline,
        "spec.containers[0].securityContext.capabilities.add",
    );
}
