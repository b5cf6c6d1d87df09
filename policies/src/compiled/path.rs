//! Request paths as HTTP rules see them: the normalisation the sidecar applies before
//! [`super::CompiledPolicy::match_request`] (whose `path` must already be normalised), and
//! the `;` path parameters it refuses instead of judging — together [`judged_path`]. The
//! sidecar and `palisade policy explain` both use it, so `explain` judges a path exactly as
//! the sidecar does.
//!
//! Owns: which raw paths have one meaning on every server (and what it is), and which do not.
//! Must never: accept a path whose meaning differs between servers (it returns `None` or
//! `true` instead, and the caller refuses the request).

/// Why a raw request path cannot be judged by HTTP rules (the sidecar answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// `;` path parameters ([`has_path_parameters`]).
    Parameters,
    /// A path [`normalize_path`] refuses.
    Ambiguous,
}

impl PathProblem {
    /// What the agent (or the operator) is told.
    pub fn message(self) -> &'static str {
        match self {
            PathProblem::Parameters => {
                "the request path has `;` parameters, which servers strip or keep differently \
                 (ambiguous path)"
            }
            PathProblem::Ambiguous => {
                "the request path is ambiguous (encoded slash or backslash, empty or invalid \
                 segment)"
            }
        }
    }
}

/// The path HTTP rules judge for the raw request path `raw` (no query): refused when it has
/// `;` path parameters or cannot be normalised, else normalised ([`normalize_path`]).
pub fn judged_path(raw: &str) -> Result<String, PathProblem> {
    if has_path_parameters(raw) {
        return Err(PathProblem::Parameters);
    }
    normalize_path(raw).ok_or(PathProblem::Ambiguous)
}

/// Whether a raw request path has a `;` (also percent-encoded) in any segment: Tomcat, Jetty
/// and Spring strip such "path parameters" before routing (`/secret;x=1/` is `/secret/`,
/// `/a/..;/secret` is `/secret`), other servers keep them.
pub fn has_path_parameters(path: &str) -> bool {
    path.contains(';') || path.contains("%3b") || path.contains("%3B")
}

/// Normalise a request path for HTTP rules: decode percent-encoded unreserved characters,
/// upper-case other escapes, resolve `.` and `..`. `None` for paths whose meaning differs
/// between servers (encoded `/` or `\`, NUL, raw `\`, empty segments like `//`) or that are
/// not origin-form.
pub fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v as char);
            } else if matches!(v, b'/' | b'\\' | 0) {
                return None;
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else if b == b'\\' || !b.is_ascii() {
            return None;
        } else {
            decoded.push(b as char);
            i += 1;
        }
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for (n, segment) in segments.iter().enumerate() {
        trailing_slash = false;
        match *segment {
            "" if n == last => trailing_slash = n > 0,
            "" => return None,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || trailing_slash {
        result.push('/');
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_found() {
        for p in ["/a;x=1/b", "/a/..;/b", "/a;", "/a%3bb", "/a%3Bb", "/;/"] {
            assert!(has_path_parameters(p), "{p}");
        }
        for p in ["/a/b", "/a%3/b", "/a%253Bb", "/"] {
            assert!(!has_path_parameters(p), "{p}");
        }
    }

    #[test]
    fn judged_paths_refuse_parameters_before_normalising() {
        assert_eq!(judged_path("/a/../b").as_deref(), Ok("/b"));
        assert_eq!(judged_path("/a/..;/b"), Err(PathProblem::Parameters));
        assert_eq!(judged_path("/a%2Fb"), Err(PathProblem::Ambiguous));
    }

    #[test]
    fn paths() {
        let ok = |p: &str, want: &str| assert_eq!(normalize_path(p).as_deref(), Some(want), "{p}");
        ok("/", "/");
        ok("/a/b", "/a/b");
        ok("/a/b/", "/a/b/");
        ok("/a/./b", "/a/b");
        ok("/a/../b", "/b");
        ok("/a/b/..", "/a/");
        ok("/../../etc", "/etc");
        ok("/%61%2e%2E/x", "/a../x");
        ok("/%2e%2e/admin", "/admin");
        ok("/a%20b", "/a%20b");
        ok("/a%3bb", "/a%3Bb");
        for bad in [
            "", "*", "a", "//admin", "/a//b", "/a%2Fb", "/a%5cb", "/a\\b", "/%00", "/%zz", "/%4",
        ] {
            assert_eq!(normalize_path(bad), None, "{bad}");
        }
    }
}
