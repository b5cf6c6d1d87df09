//! Choosing a backend and running the tools: `iptables-restore`/`ip6tables-restore`
//! (legacy or nf_tables variant, never mixed) or native `nft`. Everything that touches the
//! kernel lives here; rule text comes from the pure generators in `iptables.rs`/`nft.rs`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::iptables::{self, Existing};
use super::nft;
use super::rules::Family;

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Where our rules already are; else iptables (variant detected like Istio does: the one
    /// holding existing rules, else what `iptables --version` reports); else native nft.
    Auto,
    /// iptables, variant (legacy / nf_tables) detected.
    Iptables,
    /// iptables-legacy.
    IptablesLegacy,
    /// iptables-nft (the nf_tables variant of iptables).
    IptablesNft,
    /// Native nftables (`table inet palisade`).
    Nft,
}

/// Which iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// x_tables (`iptables-legacy`).
    Legacy,
    /// nf_tables (`iptables-nft`).
    Nft,
}

impl Variant {
    fn suffix(self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        }
    }
}

/// A concrete backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-restore of the given variant.
    Iptables(Variant),
    /// nft -f.
    Nft,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Iptables(Variant::Legacy) => f.write_str("iptables (legacy)"),
            Backend::Iptables(Variant::Nft) => f.write_str("iptables (nf_tables)"),
            Backend::Nft => f.write_str("nft"),
        }
    }
}

/// Look for an executable in PATH and the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn package_hint(backend: Backend) -> &'static str {
    match backend {
        Backend::Iptables(_) => "install the iptables package or run with --backend nft",
        Backend::Nft => "install the nftables package or run with --backend iptables",
    }
}

/// Run `program args…` feeding `stdin`; error (with stderr) on failure.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing rules to {}", program.display()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", program.display()))?;
    if !out.status.success() {
        let cmdline = std::iter::once(program.display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        bail!(
            "{cmdline} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `iptables --version` reports for the unsuffixed binary.
fn default_variant() -> Option<Variant> {
    let tool = find_tool("iptables")?;
    let out = Command::new(tool).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(if text.contains("nf_tables") {
        Variant::Nft
    } else {
        Variant::Legacy
    })
}

/// The restore/save binaries of one variant and family.
#[derive(Debug, Clone)]
pub struct IptTools {
    /// `iptables-<variant>-restore` (or the unsuffixed one when it is that variant).
    pub restore: PathBuf,
    /// `iptables-<variant>-save`.
    pub save: PathBuf,
}

/// Resolve the tools of `variant` for `family`, or explain what to install.
pub fn ipt_tools(variant: Variant, family: Family) -> anyhow::Result<IptTools> {
    let base = family.iptables();
    let pick = |kind: &str| -> anyhow::Result<PathBuf> {
        let suffixed = format!("{base}-{}-{kind}", variant.suffix());
        if let Some(p) = find_tool(&suffixed) {
            return Ok(p);
        }
        let plain = format!("{base}-{kind}");
        if default_variant() == Some(variant)
            && let Some(p) = find_tool(&plain)
        {
            return Ok(p);
        }
        bail!(
            "cannot install capture rules: {suffixed} not found in PATH; {}",
            package_hint(Backend::Iptables(variant))
        )
    };
    Ok(IptTools {
        restore: pick("restore")?,
        save: pick("save")?,
    })
}

/// Parse what of ours (and how much of others') exists in one variant/family.
pub fn ipt_state(tools: &IptTools) -> anyhow::Result<Existing> {
    let save = run(&tools.save, &[], None).with_context(|| {
        format!(
            "cannot read the current rules with {} (init/cleanup need root with NET_ADMIN \
             in the pod's network namespace)",
            tools.save.display()
        )
    })?;
    Ok(iptables::parse_save(&save))
}

fn ipt_restore(tools: &IptTools, text: &str) -> anyhow::Result<()> {
    run(&tools.restore, &["--noflush", "--wait=10"], Some(text)).map(|_| ())
}

/// True when this namespace has an IPv6 stack at all.
pub fn ipv6_present() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// The families to manage: IPv6 only when the kernel has it.
pub fn families() -> Vec<Family> {
    if ipv6_present() {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn nft_tool() -> anyhow::Result<PathBuf> {
    find_tool("nft").with_context(|| {
        format!(
            "cannot install capture rules: nft not found in PATH; {}",
            package_hint(Backend::Nft)
        )
    })
}

fn nft_has_table() -> bool {
    let Some(tool) = find_tool("nft") else {
        return false;
    };
    run(&tool, &["list", "tables"], None)
        .map(|t| nft::table_present(&t))
        .unwrap_or(false)
}

/// Rules count in a variant (v4 + v6), or None when its tools are missing/unreadable.
fn variant_state(variant: Variant) -> Option<(bool, usize)> {
    let mut ours = false;
    let mut foreign = 0;
    for family in families() {
        let tools = ipt_tools(variant, family).ok()?;
        let ex = ipt_state(&tools).ok()?;
        ours |= ex.any_ours();
        foreign += ex.foreign_rules;
    }
    Some((ours, foreign))
}

/// Backends that currently hold rules of ours.
pub fn installed() -> Vec<Backend> {
    let mut found = Vec::new();
    for variant in [Variant::Legacy, Variant::Nft] {
        if let Some((true, _)) = variant_state(variant) {
            found.push(Backend::Iptables(variant));
        }
    }
    if nft_has_table() {
        found.push(Backend::Nft);
    }
    found
}

/// The iptables variant to use: where rules already live (never mix), else the default.
fn detect_variant() -> anyhow::Result<Variant> {
    let legacy = variant_state(Variant::Legacy);
    let nft = variant_state(Variant::Nft);
    match (legacy, nft) {
        (Some((true, _)), _) => Ok(Variant::Legacy),
        (_, Some((true, _))) => Ok(Variant::Nft),
        (Some((_, l)), Some((_, n))) if l > 0 && n == 0 => Ok(Variant::Legacy),
        (Some((_, l)), Some((_, n))) if n > 0 && l == 0 => Ok(Variant::Nft),
        (Some(_), None) => Ok(Variant::Legacy),
        (None, Some(_)) => Ok(Variant::Nft),
        _ => default_variant().with_context(|| {
            format!(
                "cannot install capture rules: iptables not found in PATH; {}",
                package_hint(Backend::Iptables(Variant::Nft))
            )
        }),
    }
}

/// Resolve `--backend` to a concrete backend, refusing to mix with rules of ours elsewhere.
pub fn resolve(choice: BackendChoice) -> anyhow::Result<Backend> {
    let existing = installed();
    let backend = match choice {
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::IptablesLegacy => Backend::Iptables(Variant::Legacy),
        BackendChoice::IptablesNft => Backend::Iptables(Variant::Nft),
        BackendChoice::Iptables => Backend::Iptables(detect_variant()?),
        BackendChoice::Auto => match existing.as_slice() {
            [one] => *one,
            _ if find_tool("iptables").is_some()
                || find_tool("iptables-nft").is_some()
                || find_tool("iptables-legacy").is_some() =>
            {
                Backend::Iptables(detect_variant()?)
            }
            _ if find_tool("nft").is_some() => Backend::Nft,
            _ => bail!(
                "cannot install capture rules: neither iptables nor nft found in PATH; \
                 install the iptables or nftables package"
            ),
        },
    };
    if let Some(other) = existing.iter().find(|b| **b != backend) {
        bail!(
            "palisade rules are already installed with backend {other}; refusing to mix \
             backends — run `palisade-sidecar cleanup` first, or pass the same --backend"
        );
    }
    Ok(backend)
}

/// The rule text `init` applies for `backend`: one (family, text) per restore/nft call.
/// Reads the current state when it can (for the jump replacement); `dry_run` tolerates
/// missing tools/privileges and assumes a fresh namespace.
pub fn init_plan(
    backend: Backend,
    cfg: &super::config::CaptureConfig,
    dry_run: bool,
) -> anyhow::Result<Vec<(Option<Family>, String)>> {
    match backend {
        Backend::Nft => {
            if !dry_run {
                nft_tool()?;
            }
            Ok(vec![(None, nft::init_script(cfg))])
        }
        Backend::Iptables(variant) => {
            let mut plan = Vec::new();
            for family in families() {
                let existing = match ipt_tools(variant, family).and_then(|t| ipt_state(&t)) {
                    Ok(ex) => ex,
                    Err(_) if dry_run => Existing::default(),
                    Err(e) => return Err(e),
                };
                plan.push((
                    Some(family),
                    iptables::init_script(cfg, family, true, &existing),
                ));
            }
            Ok(plan)
        }
    }
}

/// Apply `init` for real.
pub fn apply_init(backend: Backend, cfg: &super::config::CaptureConfig) -> anyhow::Result<()> {
    match backend {
        Backend::Nft => {
            let tool = nft_tool()?;
            run(&tool, &["-f", "-"], Some(&nft::init_script(cfg))).context(
                "cannot install capture rules with nft (needs root with NET_ADMIN in the pod's \
                 network namespace, and Linux >= 5.2 for nat in the inet family)",
            )?;
            Ok(())
        }
        Backend::Iptables(variant) => {
            for family in families() {
                let tools = ipt_tools(variant, family)?;
                let existing = ipt_state(&tools)?;
                let full = iptables::init_script(cfg, family, true, &existing);
                match ipt_restore(&tools, &full) {
                    Ok(()) => {}
                    Err(err) if family == Family::V6 => {
                        // No IPv6 nat (module missing / disabled): still fence IPv6, so v6 TCP
                        // is refused rather than redirected. Loud, never silent.
                        let fence_only = iptables::init_script(cfg, family, false, &existing);
                        ipt_restore(&tools, &fence_only).with_context(|| {
                            format!("cannot install IPv6 fence rules either (first error: {err:#})")
                        })?;
                        super::warn(&format!(
                            "IPv6 redirect rules could not be installed ({err:#}); installed the \
                             IPv6 fence only: IPv6 TCP is refused instead of redirected"
                        ));
                    }
                    Err(err) => {
                        return Err(err).context(format!(
                            "cannot install {} capture rules with {} (needs root with NET_ADMIN \
                             in the pod's network namespace)",
                            family.label(),
                            tools.restore.display()
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

/// Remove exactly our rules from `backend`; returns what it did (for the log line).
pub fn apply_cleanup(backend: Backend, dry_run: bool) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    match backend {
        Backend::Nft => {
            if nft_has_table() {
                let script = nft::cleanup_script();
                if dry_run {
                    done.push(script);
                } else {
                    run(&nft_tool()?, &["-f", "-"], Some(&script))
                        .context("cannot remove table inet palisade with nft")?;
                    done.push("nft: deleted table inet palisade".into());
                }
            }
        }
        Backend::Iptables(variant) => {
            for family in families() {
                let tools = ipt_tools(variant, family)?;
                let existing = ipt_state(&tools)?;
                if let Some(script) = iptables::cleanup_script(family, &existing) {
                    if dry_run {
                        done.push(script);
                    } else {
                        ipt_restore(&tools, &script).with_context(|| {
                            format!("cannot remove {} palisade rules", family.label())
                        })?;
                        done.push(format!(
                            "{backend} {}: removed palisade chains and jumps",
                            family.label()
                        ));
                    }
                }
            }
        }
    }
    Ok(done)
}
