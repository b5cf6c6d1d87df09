//! The static admin token (`--admin-token-file`): compared in constant time;
//! logs and `--print-config` show only its fingerprint.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Shortest accepted admin token (characters).
pub const MIN_ADMIN_TOKEN_LEN: usize = 24;

#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    fingerprint: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({})", self.fingerprint)
    }
}

impl AdminToken {
    /// Read the token file: must be mode 0600 (or stricter) and hold at least
    /// [`MIN_ADMIN_TOKEN_LEN`] characters (surrounding whitespace ignored).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read admin token file {}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            anyhow::bail!(
                "admin token file {} is readable by group or others; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read admin token file {}: {e}", path.display()))?;
        Self::from_secret(text.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "admin token in {} is shorter than {MIN_ADMIN_TOKEN_LEN} characters; generate one \
                 with `openssl rand -hex 32`",
                path.display()
            )
        })
    }

    pub fn from_secret(secret: &str) -> Option<Self> {
        (secret.len() >= MIN_ADMIN_TOKEN_LEN).then(|| Self {
            digest: Sha256::digest(secret.as_bytes()).into(),
            fingerprint: crate::tokens::fingerprint(secret),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Constant-time comparison (of fixed-length digests, so the presented
    /// token's length does not leak either).
    pub fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn load_checks_mode_and_length_and_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            AdminToken::load(&p)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = AdminToken::load(&p).unwrap();
        assert!(t.matches("0123456789abcdef0123456789abcdef"));
        assert!(!t.matches("0123456789abcdef0123456789abcdeF"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("0123456789"));
        std::fs::write(&p, "short").unwrap();
        assert!(
            AdminToken::load(&p)
                .unwrap_err()
                .to_string()
                .contains("shorter")
        );
    }
}
