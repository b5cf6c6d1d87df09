//! Policy levels and policy versions, as the `pod-security.kubernetes.io/*`
//! namespace labels spell them (`restricted`, `v1.29`, `latest`).

use std::fmt;
use std::str::FromStr;

use super::PodSecurityError;

/// A Pod Security Standards level that has checks. (`privileged` has none:
/// there is nothing to verify, so it is not a value here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Prevents known privilege escalations.
    Baseline,
    /// Baseline plus current pod hardening best practice.
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = PodSecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => Err(PodSecurityError::Level(other.to_owned())),
        }
    }
}

/// A policy version `v1.0` … [`Version::LATEST`]. A check revision applies
/// from its minimum version up to the next revision, as in the official
/// registry; `latest` is the newest version this checker implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    minor: u32,
}

/// The newest policy version implemented (the profile published with
/// Kubernetes 1.37). `latest` means this version.
pub const LATEST_MINOR: u32 = 37;

impl Version {
    /// `latest`: the newest policy version this checker implements.
    pub const LATEST: Version = Version {
        minor: LATEST_MINOR,
    };

    /// Policy version `v1.<minor>`. Versions newer than [`Version::LATEST`]
    /// are refused: their rules are unknown here, and guessing would pass
    /// pods the real policy refuses.
    pub fn new(minor: u32) -> Result<Version, PodSecurityError> {
        if minor > LATEST_MINOR {
            return Err(PodSecurityError::VersionTooNew(minor));
        }
        Ok(Version { minor })
    }

    /// The `N` of `v1.N`.
    pub fn minor(self) -> u32 {
        self.minor
    }

    /// Every version `v1.0` … `latest`, oldest first.
    pub fn all() -> impl Iterator<Item = Version> {
        (0..=LATEST_MINOR).map(|minor| Version { minor })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}", self.minor)
    }
}

impl FromStr for Version {
    type Err = PodSecurityError;

    /// `latest` or `v1.N` exactly as the namespace label takes it (no
    /// leading zeros, no spaces, major version 1 only).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(Version::LATEST);
        }
        let bad = || PodSecurityError::Version(s.to_owned());
        let digits = s.strip_prefix("v1.").ok_or_else(bad)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(bad());
        }
        let minor: u32 = digits.parse().map_err(|_| bad())?;
        Version::new(minor)
    }
}
