//! Policy errors: each names the field path, line/column when known, the
//! offending value and what is allowed.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Field path like `spec.egress[0].hosts[1]`.
    pub path: String,
    /// 1-based line and column in the source, when known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((l, c)) => write!(f, "{l}:{c}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every error found in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<PolicyError>);
