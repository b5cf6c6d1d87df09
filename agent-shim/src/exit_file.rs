//! Telling the sidecar the workload is gone.
//!
//! Owns: writing the exit-status file (`<code>\n`, atomically via rename) into the
//! shared dir so the sidecar can shut down and a Job's pod can complete. Must never:
//! fail the shim — a missing or read-only shared dir is only a warning.

use std::path::Path;

use crate::log::warning;

/// Write `code` to `file`; warn (never fail) when that is not possible.
pub fn write(file: &Path, code: i32) {
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        warning!(
            "--exit-file {} has no directory; not written",
            file.display()
        );
        return;
    };
    if !dir.is_dir() {
        warning!(
            "not telling the sidecar the exit status: {} does not exist (shared dir not mounted?)",
            dir.display()
        );
        return;
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result =
        std::fs::write(&tmp, format!("{code}\n")).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        warning!("cannot write exit status to {}: {e}", file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_or_warns() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("agent-exit");
        write(&f, 143);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "143\n");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        write(&tmp.path().join("missing/agent-exit"), 1);
        assert!(!tmp.path().join("missing").exists());
    }
}
