//! Paths of the workspace binaries the tests drive (`palisade-sidecar`, `palisade`, …).

use std::path::PathBuf;

/// Directories that may hold the built binaries, best first: `$PALISADE_E2E_BIN_DIR` when
/// set (to run the suite against other builds, e.g. an older revision's, to show a
/// regression test fails there), the profile dir the running test binary lives in
/// (`target/<profile>/deps/<test>` → `target/<profile>`), then
/// `$CARGO_TARGET_DIR/{debug,release}`.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("PALISADE_E2E_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        match deps.parent() {
            Some(profile) if deps.file_name().is_some_and(|n| n == "deps") => {
                dirs.push(profile.to_path_buf());
            }
            _ => dirs.push(deps.to_path_buf()),
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        dirs.push(target.join("debug"));
        dirs.push(target.join("release"));
    }
    dirs
}

/// Absolute path of the workspace binary `name`, from the same target dir as this test.
///
/// Panics with "run `cargo build --workspace` first" when it has not been built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dirs = candidate_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "binary `{name}` not found in {dirs:?}: run `cargo build --workspace` first \
                 (same CARGO_TARGET_DIR and profile as the tests)"
            )
        })
}

/// `palisade-sidecar`.
pub fn sidecar_bin() -> PathBuf {
    workspace_bin("palisade-sidecar")
}

/// `[<palisade-sidecar>, args…]`, ready for [`crate::run_in`] / [`crate::as_uid`].
pub fn sidecar_argv(args: &[&str]) -> Vec<String> {
    let mut v = vec![sidecar_bin().display().to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}
