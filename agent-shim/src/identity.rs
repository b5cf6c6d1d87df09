//! Arbitrary UIDs (OpenShift): a usable identity for a UID with no passwd entry.
//!
//! Owns: choosing a writable `HOME`, `USER`/`LOGNAME`, and a passwd/group entry for
//! tools that look one up (`whoami`, `id -un`, ssh, git, Python's `getpass`). With
//! nss_wrapper installed the entry lives in shim-written files preloaded into the
//! agent (`LD_PRELOAD`, `NSS_WRAPPER_PASSWD`, `NSS_WRAPPER_GROUP`); without it, the
//! OpenShift convention of a group-writable `/etc/passwd` is used when available.
//! Must never: change the UID/GID, or write outside `HOME`, the shim's private dir
//! and (only if already writable to us) `/etc/passwd`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::unistd::{AccessFlags, Gid, Group, Uid, User, access};

use crate::environment::Env;
use crate::log::{info, warning};

/// Places nss_wrapper is installed by Debian/Ubuntu (`libnss-wrapper`) and
/// RHEL/Fedora/Alpine (`nss_wrapper`).
pub const NSS_WRAPPER_PATHS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
    "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
    "/usr/local/lib/libnss_wrapper.so",
    "/usr/local/lib64/libnss_wrapper.so",
];

/// Settings of the identity step.
#[derive(Debug)]
pub struct Options<'a> {
    /// `--home`: always used when given.
    pub home: Option<&'a Path>,
    /// `--user-name`: the name given to a UID without passwd entry.
    pub user_name: &'a str,
    /// `--nss-wrapper`: explicit library path.
    pub nss_wrapper: Option<&'a Path>,
    /// `/etc/passwd` (a parameter for tests).
    pub passwd: &'a Path,
    /// `/etc/group`.
    pub group: &'a Path,
}

/// Whether `dir` is a directory we can create files in.
fn writable_dir(dir: &Path) -> bool {
    dir.is_dir() && access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

/// Create (0700) or re-use a private directory owned by `uid`. Refuses a pre-existing
/// path that is a symlink, not ours, or open to others (shared `/tmp` squatting).
pub fn private_dir(path: &Path, uid: Uid) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot create {}; pass --home with a writable directory",
                    path.display()
                )
            });
        }
    }
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_dir() || meta.uid() != uid.as_raw() || meta.mode() & 0o077 != 0 {
        bail!(
            "{} exists but is not a private directory owned by UID {uid} (mode 0700); \
             remove it or pass --home with a writable directory",
            path.display()
        );
    }
    Ok(())
}

/// Pick HOME for a UID without passwd entry: `--home`, else `$HOME` if writable, else
/// `/tmp/palisade-home-<uid>`.
fn choose_home(opts: &Options<'_>, env: &Env, uid: Uid) -> Result<PathBuf> {
    if let Some(home) = opts.home {
        return explicit_home(home);
    }
    if let Some(home) = env.get(std::ffi::OsStr::new("HOME")) {
        let home = Path::new(home);
        if !home.as_os_str().is_empty() && writable_dir(home) {
            return Ok(home.to_owned());
        }
    }
    let home = PathBuf::from(format!("/tmp/palisade-home-{uid}"));
    private_dir(&home, uid)?;
    Ok(home)
}

fn explicit_home(home: &Path) -> Result<PathBuf> {
    if !home.exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(home)
            .with_context(|| format!("cannot create --home {}", home.display()))?;
    }
    if !writable_dir(home) {
        bail!(
            "--home {} is not a writable directory for UID {}; mount a writable volume there \
             (e.g. an emptyDir) or choose another --home",
            home.display(),
            nix::unistd::getuid()
        );
    }
    Ok(home.to_owned())
}

/// Names already used in a passwd/group file.
fn names_in(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.split(':').next()).collect()
}

/// Prepare HOME/USER/LOGNAME and the passwd entry; edits `env` for the agent.
pub fn prepare(opts: &Options<'_>, env: &mut Env) -> Result<()> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = User::from_uid(uid).ok().flatten();
    if let Some(user) = user {
        if let Some(home) = opts.home {
            env.insert("HOME".into(), explicit_home(home)?.into_os_string());
        } else if !env.contains_key(std::ffi::OsStr::new("HOME")) {
            env.insert("HOME".into(), user.dir.into_os_string());
        }
        for var in ["USER", "LOGNAME"] {
            env.entry(var.into())
                .or_insert_with(|| user.name.clone().into());
        }
        return Ok(());
    }

    let home = choose_home(opts, env, uid)?;
    check_field("--user-name", opts.user_name)?;
    check_field("HOME", &home.to_string_lossy())?;
    let passwd_text = fs::read_to_string(opts.passwd).unwrap_or_default();
    let group_text = fs::read_to_string(opts.group).unwrap_or_default();
    let name = if names_in(&passwd_text).contains(&opts.user_name) {
        format!("{}-{uid}", opts.user_name)
    } else {
        opts.user_name.to_owned()
    };
    info!(
        "UID {uid} has no passwd entry: HOME={}, USER={name}",
        home.display()
    );
    env.insert("HOME".into(), home.clone().into_os_string());
    env.insert("USER".into(), name.clone().into());
    env.insert("LOGNAME".into(), name.clone().into());

    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let passwd_line = format!(
        "{name}:x:{uid}:{gid}:Palisade agent:{}:{shell}\n",
        home.display()
    );
    let group_line = match Group::from_gid(gid).ok().flatten() {
        Some(_) => None,
        None => Some(format!(
            "{}:x:{gid}:\n",
            unique_group(&group_text, &name, gid)
        )),
    };

    let wrapper = match opts.nss_wrapper {
        Some(path) if path.is_file() => Some(path.to_owned()),
        Some(path) => {
            warning!("--nss-wrapper {} does not exist", path.display());
            None
        }
        None => NSS_WRAPPER_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    if let Some(lib) = wrapper {
        let dir = PathBuf::from(format!("/tmp/palisade-nss-{uid}"));
        private_dir(&dir, uid)?;
        let passwd_file = dir.join("passwd");
        let group_file = dir.join("group");
        write_file(
            &passwd_file,
            &format!("{}{passwd_line}", with_newline(&passwd_text)),
        )?;
        let mut groups = with_newline(&group_text);
        if let Some(line) = &group_line {
            groups.push_str(line);
        }
        write_file(&group_file, &groups)?;
        let preload = match env.get(std::ffi::OsStr::new("LD_PRELOAD")) {
            Some(existing) if !existing.is_empty() => {
                format!("{} {}", lib.display(), existing.to_string_lossy())
            }
            _ => lib.display().to_string(),
        };
        env.insert("LD_PRELOAD".into(), preload.into());
        env.insert("NSS_WRAPPER_PASSWD".into(), passwd_file.into_os_string());
        env.insert("NSS_WRAPPER_GROUP".into(), group_file.into_os_string());
        info!(
            "passwd entry for {name} provided through nss_wrapper ({})",
            lib.display()
        );
        return Ok(());
    }
    if access(opts.passwd, AccessFlags::W_OK).is_ok() {
        // The OpenShift convention: /etc/passwd made group-writable for GID 0 in the image.
        append(opts.passwd, &passwd_line)?;
        if let Some(line) = &group_line
            && access(opts.group, AccessFlags::W_OK).is_ok()
        {
            append(opts.group, line)?;
        }
        info!(
            "passwd entry for {name} appended to {}",
            opts.passwd.display()
        );
        return Ok(());
    }
    warning!(
        "UID {uid} has no passwd entry and neither nss_wrapper nor a writable {} is available: \
         `whoami` and `id -un` will fail; install libnss-wrapper (Debian/Ubuntu) or nss_wrapper \
         (RHEL/Fedora) in the image, or make /etc/passwd writable by group 0 (OpenShift)",
        opts.passwd.display()
    );
    Ok(())
}

/// A passwd field must be non-empty and free of `:` and newlines.
fn check_field(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains([':', '\n']) {
        bail!(
            "{what} {value:?} cannot be used in a passwd entry (empty, or contains ':' or a newline); choose another"
        );
    }
    Ok(())
}

fn unique_group(group_text: &str, name: &str, gid: Gid) -> String {
    if names_in(group_text).contains(&name) {
        format!("{name}-{gid}")
    } else {
        name.to_owned()
    }
}

fn with_newline(text: &str) -> String {
    let mut s = text.to_owned();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn write_file(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_newlines() {
        assert_eq!(
            names_in("root:x:0:0::/root:/bin/sh\nagent:x:1:1::/:/bin/sh"),
            vec!["root", "agent"]
        );
        assert_eq!(with_newline("a"), "a\n");
        assert_eq!(with_newline(""), "");
        assert_eq!(
            unique_group("agent:x:5:\n", "agent", Gid::from_raw(7)),
            "agent-7"
        );
        assert_eq!(
            unique_group("root:x:0:\n", "agent", Gid::from_raw(7)),
            "agent"
        );
    }

    #[test]
    fn private_dir_refuses_open_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid();
        let p = tmp.path().join("home");
        private_dir(&p, uid).unwrap();
        private_dir(&p, uid).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&p, uid).unwrap_err().to_string();
        assert!(err.contains("not a private directory"), "{err}");
    }
}
