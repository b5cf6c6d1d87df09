//! A sandbox's directories under the run dir (`<run-dir>/<8 hex>/`): the
//! plan's [`Layout`] (`sidecar/`, `shared/`, `home/`) between the driver's own
//! root (0711) and `logs/` (0700, root), and the plan's files written into
//! them. As root, modes and owners are the plan's; not root (development),
//! every dir is 0700 and nothing changes owner.
//!
//! Must never: overwrite a file (files are created new), or leave a planned
//! file readable by another UID than the plan says in isolated mode.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::config::LocalMode;
use crate::driver::contract::DriverError;
use crate::driver::plan::{Layout, Owner, PlannedDir, PlannedFile};

pub(super) fn io_err(what: &str, path: &Path, e: std::io::Error) -> DriverError {
    DriverError::failed(format!("cannot {what} {}: {e}", path.display()))
}

/// The per-sandbox dirs under the run dir.
pub(super) struct RunDirs {
    root: PathBuf,
    pub logs: PathBuf,
    layout: Layout,
}

impl RunDirs {
    pub fn new(root: &Path) -> RunDirs {
        RunDirs {
            root: root.to_path_buf(),
            logs: root.join("logs"),
            layout: Layout {
                sidecar: root.join("sidecar"),
                shared: root.join("shared"),
                home: root.join("home"),
            },
        }
    }

    /// Where the plan's dirs are (the processes see them where they are).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The root, the plan's `dirs` in their order, then `logs/`.
    pub fn create(&self, planned: &[PlannedDir], mode: LocalMode) -> Result<(), DriverError> {
        let isolated = mode == LocalMode::Isolated;
        let root = Owner { uid: 0, gid: 0 };
        let all = std::iter::once((self.root.as_path(), 0o711, root))
            .chain(planned.iter().map(|d| (d.path.as_path(), d.mode, d.owner)))
            .chain(std::iter::once((self.logs.as_path(), 0o700, root)));
        for (dir, perm, owner) in all {
            std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
            let perm = if isolated { perm } else { 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(perm))
                .map_err(|e| io_err("chmod", dir, e))?;
            if isolated {
                chown(dir, owner)?;
            }
        }
        Ok(())
    }
}

fn chown(path: &Path, owner: Owner) -> Result<(), DriverError> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(owner.uid)),
        Some(nix::unistd::Gid::from_raw(owner.gid)),
    )
    .map_err(|e| DriverError::failed(format!("cannot chown {}: {e}", path.display())))
}

/// Create `file` with its mode, owned as planned in isolated mode.
pub(super) fn write(file: &PlannedFile, mode: LocalMode) -> Result<(), DriverError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = &file.path;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file.mode)
        .open(path)
        .map_err(|e| io_err("create", path, e))?;
    f.write_all(file.contents.bytes())
        .map_err(|e| io_err("write", path, e))?;
    if mode == LocalMode::Isolated {
        chown(path, file.owner)?;
    }
    Ok(())
}
