//! The part of a Pod the checks read, taken from its JSON form once, with
//! every field's path kept for the violations.
//!
//! JSON `null` is the same as an absent field (as when the API server
//! decodes it). A field of the wrong type is an `invalidPod` violation,
//! never silently ignored: the checker fails closed on what it cannot read.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{CheckId, Violation};

#[derive(Debug, Default)]
pub(super) struct Pod {
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub host_users: Option<bool>,
    /// `spec.os.name == "windows"`.
    pub windows: bool,
    pub security_context: PodSecurityContext,
    pub volumes: Vec<Volume>,
    /// Init containers, containers, ephemeral containers, in that order.
    pub containers: Vec<Container>,
}

#[derive(Debug, Default)]
pub(super) struct PodSecurityContext {
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<i64>,
    /// `Some("")` when `seccompProfile` is set without a type.
    pub seccomp_type: Option<String>,
    pub app_armor_type: Option<String>,
    pub se_linux: Option<SeLinux>,
    /// `(index, name)` of each `sysctls[*]`.
    pub sysctls: Vec<(usize, String)>,
    pub host_process: Option<bool>,
}

#[derive(Debug, Default)]
pub(super) struct SeLinux {
    pub type_: String,
    pub user: String,
    pub role: String,
}

#[derive(Debug)]
pub(super) struct Volume {
    pub name: String,
    pub path: String,
    /// The source keys set (`hostPath`, `nfs`, …; unknown ones too). None
    /// is allowed: the API server makes such a volume an `emptyDir`.
    pub sources: Vec<String>,
}

#[derive(Debug)]
pub(super) struct Container {
    pub name: String,
    /// `spec.containers[1]`, `spec.initContainers[0]`, …
    pub path: String,
    /// `(index in ports, hostPort)` of each port that has a `hostPort`.
    pub host_ports: Vec<(usize, i64)>,
    pub sc: ContainerSecurityContext,
    /// `(path, host)` of each probe or lifecycle handler `host` that is set
    /// and not empty.
    pub handler_hosts: Vec<(String, String)>,
}

#[derive(Debug, Default)]
pub(super) struct ContainerSecurityContext {
    pub privileged: Option<bool>,
    pub capabilities: Option<Capabilities>,
    pub proc_mount: Option<String>,
    pub seccomp_type: Option<String>,
    pub app_armor_type: Option<String>,
    pub se_linux: Option<SeLinux>,
    pub host_process: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<i64>,
}

#[derive(Debug, Default)]
pub(super) struct Capabilities {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

impl Container {
    /// `<container path>.securityContext.<rest>`.
    pub fn sc_path(&self, rest: &str) -> String {
        format!("{}.securityContext.{rest}", self.path)
    }
}

/// Reads `pod`; the violations are the fields it could not read.
pub(super) fn read(pod: &Value) -> (Pod, Vec<Violation>) {
    let mut r = Reader::default();
    let out = r.pod(pod);
    (out, r.invalid)
}

#[derive(Default)]
struct Reader {
    invalid: Vec<Violation>,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn invalid(&mut self, path: String, detail: String) {
        self.invalid.push(Violation {
            check: CheckId::InvalidPod,
            path,
            reason: "invalid pod",
            detail,
        });
    }

    fn wrong_type(&mut self, path: String, want: &str, got: &Value) {
        let detail = format!("must be {want}, not {}", kind_of(got));
        self.invalid(path, detail);
    }

    /// `obj[key]`, or `None` when absent or `null`.
    fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        obj.get(key).filter(|v| !v.is_null())
    }

    fn object<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        let v = Self::get(obj, key)?;
        match v.as_object() {
            Some(m) => Some(m),
            None => {
                self.wrong_type(child(path, key), "an object", v);
                None
            }
        }
    }

    fn array<'v>(&mut self, obj: &'v Map<String, Value>, key: &str, path: &str) -> &'v [Value] {
        let Some(v) = Self::get(obj, key) else {
            return &[];
        };
        match v.as_array() {
            Some(a) => a,
            None => {
                self.wrong_type(child(path, key), "an array", v);
                &[]
            }
        }
    }

    fn boolean(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<bool> {
        let v = Self::get(obj, key)?;
        let b = v.as_bool();
        if b.is_none() {
            self.wrong_type(child(path, key), "a boolean", v);
        }
        b
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        let v = Self::get(obj, key)?;
        match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.wrong_type(child(path, key), "a string", v);
                None
            }
        }
    }

    fn integer(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<i64> {
        let v = Self::get(obj, key)?;
        let i = v.as_i64();
        if i.is_none() {
            self.wrong_type(child(path, key), "an integer", v);
        }
        i
    }

    /// The strings of `obj[key]` (an array of strings).
    fn strings(&mut self, obj: &Map<String, Value>, key: &str, parent: &str) -> Vec<String> {
        let path = child(parent, key);
        let mut out = Vec::new();
        for (i, v) in self.array(obj, key, parent).iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.wrong_type(format!("{path}[{i}]"), "a string", v),
            }
        }
        out
    }

    fn pod(&mut self, pod: &Value) -> Pod {
        let mut out = Pod::default();
        let Some(root) = pod.as_object() else {
            self.wrong_type("(pod)".to_owned(), "a Pod object", pod);
            return out;
        };
        if let Some(kind) = self.string(root, "kind", "")
            && kind != "Pod"
        {
            self.invalid("kind".to_owned(), format!("must be \"Pod\", not {kind:?}"));
        }
        if let Some(meta) = self.object(root, "metadata", "")
            && let Some(annotations) = self.object(meta, "annotations", "metadata")
        {
            for (k, v) in annotations {
                match v {
                    Value::String(s) => {
                        out.annotations.insert(k.clone(), s.clone());
                    }
                    // The API server decodes a null annotation as "" (and
                    // the seccomp annotation check refuses "").
                    Value::Null => {
                        out.annotations.insert(k.clone(), String::new());
                    }
                    other => {
                        self.wrong_type(format!("metadata.annotations[{k}]"), "a string", other)
                    }
                }
            }
        }
        let Some(spec) = self.object(root, "spec", "") else {
            if Self::get(root, "spec").is_none() {
                self.invalid("spec".to_owned(), "is required".to_owned());
            }
            return out;
        };
        let p = "spec";
        out.host_network = self.boolean(spec, "hostNetwork", p).unwrap_or(false);
        out.host_pid = self.boolean(spec, "hostPID", p).unwrap_or(false);
        out.host_ipc = self.boolean(spec, "hostIPC", p).unwrap_or(false);
        out.host_users = self.boolean(spec, "hostUsers", p);
        if let Some(os) = self.object(spec, "os", p) {
            out.windows = self.string(os, "name", "spec.os").as_deref() == Some("windows");
        }
        if let Some(sc) = self.object(spec, "securityContext", p) {
            out.security_context = self.pod_security_context(sc, "spec.securityContext");
        }
        for (i, v) in self.array(spec, "volumes", p).iter().enumerate() {
            let path = format!("spec.volumes[{i}]");
            if let Some(volume) = self.element(v, &path) {
                out.volumes.push(self.volume(volume, path));
            }
        }
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for (i, v) in self.array(spec, list, p).iter().enumerate() {
                let path = format!("spec.{list}[{i}]");
                if let Some(c) = self.element(v, &path) {
                    out.containers.push(self.container(c, path));
                }
            }
        }
        out
    }

    /// An array element that must be an object.
    fn element<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        let m = v.as_object();
        if m.is_none() {
            self.wrong_type(path.to_owned(), "an object", v);
        }
        m
    }

    fn pod_security_context(&mut self, sc: &Map<String, Value>, p: &str) -> PodSecurityContext {
        let mut out = PodSecurityContext {
            run_as_non_root: self.boolean(sc, "runAsNonRoot", p),
            run_as_user: self.integer(sc, "runAsUser", p),
            seccomp_type: self.profile_type(sc, "seccompProfile", p),
            app_armor_type: self.profile_type(sc, "appArmorProfile", p),
            se_linux: self.se_linux(sc, p),
            sysctls: Vec::new(),
            host_process: self.host_process(sc, p),
        };
        let sysctls_path = child(p, "sysctls");
        for (i, v) in self.array(sc, "sysctls", p).iter().enumerate() {
            let path = format!("{sysctls_path}[{i}]");
            if let Some(s) = self.element(v, &path) {
                let name = self.string(s, "name", &path).unwrap_or_default();
                out.sysctls.push((i, name));
            }
        }
        out
    }

    /// `obj[key].type` of a seccomp or AppArmor profile; `Some("")` when the
    /// profile is set without a type (which no check allows).
    fn profile_type(&mut self, obj: &Map<String, Value>, key: &str, p: &str) -> Option<String> {
        let profile = self.object(obj, key, p)?;
        Some(
            self.string(profile, "type", &child(p, key))
                .unwrap_or_default(),
        )
    }

    fn se_linux(&mut self, obj: &Map<String, Value>, p: &str) -> Option<SeLinux> {
        let o = self.object(obj, "seLinuxOptions", p)?;
        let p = child(p, "seLinuxOptions");
        Some(SeLinux {
            type_: self.string(o, "type", &p).unwrap_or_default(),
            user: self.string(o, "user", &p).unwrap_or_default(),
            role: self.string(o, "role", &p).unwrap_or_default(),
        })
    }

    fn host_process(&mut self, obj: &Map<String, Value>, p: &str) -> Option<bool> {
        let w = self.object(obj, "windowsOptions", p)?;
        self.boolean(w, "hostProcess", &child(p, "windowsOptions"))
    }

    fn volume(&mut self, v: &Map<String, Value>, path: String) -> Volume {
        let name = self.string(v, "name", &path).unwrap_or_default();
        let mut sources = Vec::new();
        for (key, value) in v {
            if key == "name" || value.is_null() {
                continue;
            }
            if !value.is_object() {
                self.wrong_type(child(&path, key), "an object (a volume source)", value);
            }
            sources.push(key.clone());
        }
        Volume {
            name,
            path,
            sources,
        }
    }

    fn container(&mut self, c: &Map<String, Value>, path: String) -> Container {
        let name = match self.string(c, "name", &path) {
            Some(n) if !n.is_empty() => n,
            Some(_) | None => {
                self.invalid(child(&path, "name"), "is required".to_owned());
                String::new()
            }
        };
        let mut host_ports = Vec::new();
        let ports_path = child(&path, "ports");
        for (i, v) in self.array(c, "ports", &path).iter().enumerate() {
            let port_path = format!("{ports_path}[{i}]");
            if let Some(port) = self.element(v, &port_path)
                && let Some(hp) = self.integer(port, "hostPort", &port_path)
            {
                host_ports.push((i, hp));
            }
        }
        let sc = match self.object(c, "securityContext", &path) {
            Some(sc) => self.container_security_context(sc, &child(&path, "securityContext")),
            None => ContainerSecurityContext::default(),
        };
        let mut handler_hosts = Vec::new();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(h) = self.object(c, probe, &path) {
                self.handler_hosts(h, &child(&path, probe), &mut handler_hosts);
            }
        }
        if let Some(lc) = self.object(c, "lifecycle", &path) {
            let lc_path = child(&path, "lifecycle");
            for hook in ["postStart", "preStop"] {
                if let Some(h) = self.object(lc, hook, &lc_path) {
                    self.handler_hosts(h, &child(&lc_path, hook), &mut handler_hosts);
                }
            }
        }
        Container {
            name,
            path,
            host_ports,
            sc,
            handler_hosts,
        }
    }

    /// The non-empty `httpGet.host` and `tcpSocket.host` of a probe or hook.
    fn handler_hosts(&mut self, h: &Map<String, Value>, p: &str, out: &mut Vec<(String, String)>) {
        for action in ["httpGet", "tcpSocket"] {
            let Some(a) = self.object(h, action, p) else {
                continue;
            };
            let action_path = child(p, action);
            if let Some(host) = self.string(a, "host", &action_path)
                && !host.is_empty()
            {
                out.push((child(&action_path, "host"), host));
            }
        }
    }

    fn container_security_context(
        &mut self,
        sc: &Map<String, Value>,
        p: &str,
    ) -> ContainerSecurityContext {
        let capabilities = self.object(sc, "capabilities", p).map(|caps| {
            let cp = child(p, "capabilities");
            Capabilities {
                add: self.strings(caps, "add", &cp),
                drop: self.strings(caps, "drop", &cp),
            }
        });
        ContainerSecurityContext {
            privileged: self.boolean(sc, "privileged", p),
            capabilities,
            proc_mount: self.string(sc, "procMount", p),
            seccomp_type: self.profile_type(sc, "seccompProfile", p),
            app_armor_type: self.profile_type(sc, "appArmorProfile", p),
            se_linux: self.se_linux(sc, p),
            host_process: self.host_process(sc, p),
            allow_privilege_escalation: self.boolean(sc, "allowPrivilegeEscalation", p),
            run_as_non_root: self.boolean(sc, "runAsNonRoot", p),
            run_as_user: self.integer(sc, "runAsUser", p),
        }
    }
}
