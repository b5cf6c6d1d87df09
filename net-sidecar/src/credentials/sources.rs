//! Static sources: a sidecar-only file (re-read when it changes) and an environment variable.

use std::path::PathBuf;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::{CredentialError, CredentialSource, GetFuture, Secret};

/// `from: {file: PATH}`: the file's content, cached by (mtime, length, inode) and re-read
/// when any of them changes (Kubernetes Secret volumes swap a symlink; editors rename).
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    cache: Mutex<Option<(FileStamp, Secret)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(None),
        }
    }

    async fn read(&self) -> Result<Secret, CredentialError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = tokio::fs::metadata(&self.path).await.map_err(|e| {
            CredentialError::Unreadable(format!("{}: {}", self.path.display(), e.kind()))
        })?;
        let stamp = FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
        };
        if let Some((known, secret)) = self.cache.lock().as_ref()
            && *known == stamp
        {
            return Ok(secret.clone());
        }
        if meta.len() > 64 * 1024 {
            return Err(CredentialError::Invalid("the file is larger than 64 KiB"));
        }
        let bytes = tokio::fs::read(&self.path).await.map_err(|e| {
            CredentialError::Unreadable(format!("{}: {}", self.path.display(), e.kind()))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| CredentialError::Invalid("the file is not UTF-8"))?;
        let secret = Secret::new(&text)?;
        *self.cache.lock() = Some((stamp, secret.clone()));
        Ok(secret)
    }
}

impl CredentialSource for FileSource {
    fn get(&self) -> GetFuture<'_> {
        Box::pin(self.read())
    }
    fn kind(&self) -> &'static str {
        "file"
    }
}

/// `from: {env: NAME}`: read once (a process's environment does not change).
#[derive(Debug)]
pub struct EnvSource {
    value: Result<Secret, CredentialError>,
}

impl EnvSource {
    pub fn new(var: &str) -> Self {
        let value = match std::env::var(var) {
            Ok(v) => Secret::new(&v),
            Err(std::env::VarError::NotPresent) => Err(CredentialError::Unreadable(format!(
                "environment variable {var} is not set in the sidecar"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(CredentialError::Invalid(
                "the environment variable is not UTF-8",
            )),
        };
        Self { value }
    }
}

impl CredentialSource for EnvSource {
    fn get(&self) -> GetFuture<'_> {
        let v = self.value.clone();
        Box::pin(async move { v })
    }
    fn kind(&self) -> &'static str {
        "env"
    }
}

/// A source this sidecar cannot serve yet: every request using it fails closed.
#[derive(Debug)]
pub struct Unavailable(pub &'static str);

impl CredentialSource for Unavailable {
    fn get(&self) -> GetFuture<'_> {
        let what = self.0;
        Box::pin(async move { Err(CredentialError::NotImplemented(what)) })
    }
    fn kind(&self) -> &'static str {
        "unavailable"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_source_rereads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "first\n").unwrap();
        let s = FileSource::new(p.clone());
        assert_eq!(s.get().await.unwrap().expose(), "first");
        // Replace by rename (new inode), as Kubernetes and editors do.
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, "second-longer").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(s.get().await.unwrap().expose(), "second-longer");
        std::fs::remove_file(&p).unwrap();
        let err = s.get().await.unwrap_err();
        assert!(matches!(err, CredentialError::Unreadable(_)), "{err}");
        std::fs::write(&p, "bad\r\nX-Injected: 1").unwrap();
        assert!(matches!(
            s.get().await.unwrap_err(),
            CredentialError::Invalid(_)
        ));
    }

    #[tokio::test]
    async fn env_source() {
        let s = EnvSource::new("PALISADE_SURELY_UNSET_VARIABLE_FOR_TESTS");
        let err = s.get().await.unwrap_err();
        assert!(err.to_string().contains("not set"), "{err}");
        let s = EnvSource::new("PATH");
        assert!(s.get().await.is_ok());
    }
}
