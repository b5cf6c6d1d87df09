//! Policy errors: each names the field path, line/column when known, the
//! offending value and what is allowed.
use std::fmt;

/// Path used for errors about the document as a whole (size, encoding, syntax
/// errors before any field is known).
pub const DOCUMENT_PATH: &str = "(document)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Field path like `spec.egress[0].hosts[1]`.
    pub path: String,
    /// 1-based line and column in the source, when known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl PolicyError {
    /// An error about the document as a whole.
    pub fn document(message: impl Into<String>, location: Option<(usize, usize)>) -> Self {
        Self {
            path: DOCUMENT_PATH.to_owned(),
            location,
            message: message.into(),
        }
    }
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

impl PolicyErrors {
    /// One error.
    pub fn single(error: PolicyError) -> Self {
        Self(vec![error])
    }

    /// Render every error as `FILE:line:col: path: message` (or
    /// `FILE: path: message` when the location is unknown), one per line.
    pub fn render(&self, file: &str) -> String {
        self.0
            .iter()
            .map(|e| match e.location {
                Some((l, c)) => format!("{file}:{l}:{c}: {}: {}", e.path, e.message),
                None => format!("{file}: {}: {}", e.path, e.message),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path into the document, built while validating; rendered like
/// `spec.egress[0].hosts[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Segment>);

impl FieldPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    /// This path plus a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_owned()));
        p
    }
    /// This path plus a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(DOCUMENT_PATH);
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A semantic error before its location is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: FieldPath,
    pub message: String,
}
