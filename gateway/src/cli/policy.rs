//! `palisade policy check` and `palisade policy explain`.
//!
//! `check` prints `FILE: OK` or every error as `FILE:line:col: path: message`
//! and exits 1 if any file has an error. `explain` shows what the sidecar
//! would decide for one connection (and optionally one request), with the
//! deciding rule, sub-rule and reason; it exits 0 whether the answer is allow
//! or deny, and 1 when the policy or the arguments are invalid.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use palisade_policy::model::{Mode, TlsMode};
use palisade_policy::{
    CompiledPolicy, Decision, DenyReason, MAX_POLICY_BYTES, Policy, PolicyErrors, judged_path,
    parse_policy,
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; print `FILE: OK` or every error, exit 1 on any error.
    Check {
        /// Policy files (YAML or JSON); `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Show the decision for a connection (and optionally a request).
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file (YAML or JSON); `-` reads standard input.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Destination host name (SNI / Host) or IP address.
    #[arg(long)]
    host: String,
    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// HTTP method of a request to explain (default GET when --path is given).
    #[arg(long)]
    method: Option<String>,
    /// Request path, optionally with `?query` (default `/` when --method is given); judged
    /// as the sidecar judges it: normalised first, refused with `;` parameters or when it is
    /// ambiguous.
    #[arg(long)]
    path: Option<String>,
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { files } => check(&files),
        PolicyCommand::Explain(args) => explain(&args),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let name = display_name(file);
        match load(file) {
            Ok(_) => println!("{name}: OK"),
            Err(report) => {
                failed = true;
                println!("{report}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn explain(args: &ExplainArgs) -> ExitCode {
    let policy = match load(&args.file) {
        Ok(policy) => policy,
        Err(report) => {
            eprintln!("{report}");
            eprintln!(
                "error: the policy is invalid; fix it (see `palisade policy check`) and try again"
            );
            return ExitCode::FAILURE;
        }
    };
    let compiled = CompiledPolicy::compile(&policy);
    print!("{}", render_explanation(&compiled, args));
    ExitCode::SUCCESS
}

/// Everything `explain` prints, as text.
fn render_explanation(policy: &CompiledPolicy, args: &ExplainArgs) -> String {
    let mut out = String::new();
    let mode = match policy.mode() {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    };
    let _ = writeln!(out, "policy:     {} (mode: {mode})", policy.name());
    let _ = writeln!(out, "connection: {}:{}", args.host, args.port);
    let (conn, id) = policy.match_connection(&args.host, args.port);
    let request = match (&args.method, &args.path) {
        (None, None) => None,
        (method, path) => Some((
            method.as_deref().unwrap_or("GET"),
            path.as_deref().unwrap_or("/"),
        )),
    };
    let decision = match (id, request) {
        (Some(id), Some((method, target))) => {
            let rule = policy.rule(id);
            let (raw_path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let _ = writeln!(out, "request:    {method} {target}");
            let _ = writeln!(out, "tls:        {}", tls_name(rule.tls_mode()));
            if let Some(cred) = rule.credential() {
                let _ = writeln!(out, "credential: {cred} (injected by the sidecar)");
            }
            if !rule.has_http_rules() {
                // The sidecar judges no path for a rule without http rules.
                policy.match_request(id, method, raw_path, query)
            } else {
                // Judged as the sidecar judges it: `;` parameters and ambiguous paths are
                // refused before any http rule, others are normalised first.
                match judged_path(raw_path) {
                    Ok(path) => {
                        if path != raw_path {
                            let _ = writeln!(out, "path:       {path} (normalised by the sidecar)");
                        }
                        policy.match_request(id, method, &path, query)
                    }
                    Err(problem) => {
                        let _ = writeln!(out, "decision:   refused (400 bad_request)");
                        let _ = writeln!(out, "rule:       {}", rule.name());
                        let _ = writeln!(
                            out,
                            "reason:     ambiguous_path: {}; the sidecar refuses the request \
                             before any http rule is checked",
                            problem.message()
                        );
                        return out;
                    }
                }
            }
        }
        (Some(id), None) => {
            let rule = policy.rule(id);
            let _ = writeln!(out, "tls:        {}", tls_name(rule.tls_mode()));
            if let Some(cred) = rule.credential() {
                let _ = writeln!(out, "credential: {cred} (injected by the sidecar)");
            }
            conn
        }
        (None, _) => conn,
    };
    let _ = writeln!(out, "decision:   {}", decision.label());
    let (rule, detail) = match decision {
        Decision::Allow { rule, detail } => (Some(rule), detail),
        Decision::Deny { rule, detail, .. } => (rule, detail),
    };
    let _ = writeln!(out, "rule:       {}", rule.unwrap_or("(none)"));
    if let Some(detail) = detail {
        let _ = writeln!(out, "sub-rule:   {detail}");
    }
    let _ = writeln!(
        out,
        "reason:     {}",
        reason(&decision, args, request.is_some())
    );
    if !decision.is_allow() && policy.mode() == Mode::Audit {
        let _ = writeln!(
            out,
            "note:       the policy is in audit mode: this is logged and counted, and the traffic passes"
        );
    }
    out
}

fn reason(decision: &Decision<'_>, args: &ExplainArgs, had_request: bool) -> String {
    let target = format!("{}:{}", args.host, args.port);
    match decision {
        Decision::Allow {
            rule,
            detail: Some(detail),
        } => {
            format!("the request matches {detail} of rule `{rule}`")
        }
        Decision::Allow { rule, detail: None } if had_request => {
            format!("rule `{rule}` names {target} and has no http rules, so every request passes")
        }
        Decision::Allow { rule, .. } => format!("rule `{rule}` names {target}"),
        Decision::Deny {
            rule,
            detail,
            reason,
        } => {
            let code = reason.as_str();
            let text = match reason {
                DenyReason::DenyAll => "the policy is `denyAll: true`".to_owned(),
                DenyReason::NoMatchingRule => format!("no egress rule names {}", args.host),
                DenyReason::PortNotAllowed => format!(
                    "rule `{}` names {} but not port {}",
                    rule.unwrap_or("?"),
                    args.host,
                    args.port
                ),
                DenyReason::DeniedByRule => {
                    format!(
                        "the request matches {} of rule `{}`",
                        detail.unwrap_or("a deny rule"),
                        rule.unwrap_or("?")
                    )
                }
                DenyReason::NoMatchingHttpRule => {
                    format!(
                        "no http rule of rule `{}` allows this request",
                        rule.unwrap_or("?")
                    )
                }
                other => other.as_str().replace('_', " "),
            };
            format!("{code}: {text}")
        }
    }
}

fn tls_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Inspect => "inspect (terminated with the sandbox CA)",
        TlsMode::Passthrough => "passthrough (spliced, not decrypted)",
    }
}

fn display_name(file: &Path) -> String {
    if file == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    }
}

/// Read and parse one file; the error is the full report to print.
fn load(file: &Path) -> Result<Policy, String> {
    let name = display_name(file);
    let bytes = read_capped(file).map_err(|e| format!("{name}: cannot read: {e}"))?;
    parse_policy(&bytes).map_err(|errors: PolicyErrors| errors.render(&name))
}

/// Read at most one byte more than the policy limit, so a huge file is
/// refused by the parser's size check without being read whole.
fn read_capped(file: &Path) -> std::io::Result<Vec<u8>> {
    let limit = u64::try_from(MAX_POLICY_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(file)?
            .take(limit)
            .read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(host: &str, port: u16, method: Option<&str>, path: Option<&str>) -> ExplainArgs {
        ExplainArgs {
            file: PathBuf::from("unused"),
            host: host.to_owned(),
            port,
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
        }
    }

    fn policy() -> CompiledPolicy {
        let text = br#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: t}
spec:
  mode: audit
  egress:
    - name: api
      hosts: [api.example.com]
      ports: [443]
      http: {access: read-only, deny: [{path: /secret/**}]}
"#;
        CompiledPolicy::compile(&parse_policy(text).unwrap())
    }

    #[test]
    fn explains_connections_and_requests() {
        let p = policy();
        let out = render_explanation(&p, &args("api.example.com", 443, None, None));
        assert!(out.contains("decision:   allow"), "{out}");
        assert!(out.contains("rule:       api"), "{out}");
        let out = render_explanation(&p, &args("api.example.com", 80, None, None));
        assert!(out.contains("decision:   deny"), "{out}");
        assert!(
            out.contains("port_not_allowed: rule `api` names api.example.com but not port 80"),
            "{out}"
        );
        assert!(out.contains("audit mode"), "{out}");
        let out = render_explanation(
            &p,
            &args("api.example.com", 443, Some("GET"), Some("/secret/x?y=1")),
        );
        assert!(out.contains("sub-rule:   deny[0]"), "{out}");
        assert!(out.contains("denied_by_rule"), "{out}");
        let out = render_explanation(&p, &args("api.example.com", 443, None, Some("/x")));
        assert!(out.contains("request:    GET /x"), "{out}");
        assert!(out.contains("sub-rule:   access:read-only"), "{out}");
        let out = render_explanation(&p, &args("api.example.com", 443, Some("POST"), None));
        assert!(out.contains("no_matching_http_rule"), "{out}");
    }

    /// `explain` judges the path the sidecar would judge: normalised (so `..` and escapes
    /// cannot walk around a deny rule), and refused where the sidecar refuses it.
    #[test]
    fn explains_the_path_the_sidecar_judges() {
        let p = policy();
        for raw in ["/public/../secret/x", "/%73ecret/x", "/./secret/x"] {
            let out = render_explanation(&p, &args("api.example.com", 443, Some("GET"), Some(raw)));
            assert!(
                out.contains("path:       /secret/x (normalised by the sidecar)"),
                "{raw}: {out}"
            );
            assert!(out.contains("decision:   deny"), "{raw}: {out}");
            assert!(out.contains("sub-rule:   deny[0]"), "{raw}: {out}");
        }
        for raw in [
            "/secret;x=1/y",
            "/a/..;/secret/x",
            "/secret//x",
            "/secret%2Fx",
        ] {
            let out = render_explanation(&p, &args("api.example.com", 443, Some("GET"), Some(raw)));
            assert!(
                out.contains("decision:   refused (400 bad_request)"),
                "{raw}: {out}"
            );
            assert!(out.contains("reason:     ambiguous_path: "), "{raw}: {out}");
            assert!(!out.contains("decision:   allow"), "{raw}: {out}");
        }
        // Already normal: no `path:` line, the decision as before.
        let out = render_explanation(
            &p,
            &args("api.example.com", 443, Some("GET"), Some("/x?y=1")),
        );
        assert!(!out.contains("path:  "), "{out}");
        assert!(out.contains("decision:   allow"), "{out}");
    }
}
