//! Path and value globs.
//!
//! Path globs are split at `/` into segments: a segment `**` matches zero or
//! more whole segments, any other segment matches exactly one segment, and a
//! `*` inside it matches any run of characters within that segment (never a
//! `/`). Value globs (query parameter values) have only `*`, matching any run
//! of characters.
//!
//! Owns: matching only. Syntax checks live in `crate::validate`.
//! Must never: allocate while matching, or backtrack exponentially (both
//! matchers are the classic single-backtrack-point wildcard algorithm, O(n·m)).

/// One segment of a path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more segments.
    AnyDepth,
    /// Literal text, possibly with `*` wildcards within the segment.
    Glob(Box<str>),
}

/// A compiled path glob (`/repos/*/pulls/**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    segments: Vec<Segment>,
}

impl PathGlob {
    /// Compile a validated pattern (starting with `/`).
    pub fn new(pattern: &str) -> Self {
        let body = pattern.strip_prefix('/').unwrap_or(pattern);
        let segments = body
            .split('/')
            .map(|s| {
                if s == "**" {
                    Segment::AnyDepth
                } else {
                    Segment::Glob(s.into())
                }
            })
            .collect();
        Self { segments }
    }

    /// Whether a normalised request path matches. An empty path counts as `/`.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.strip_prefix('/').unwrap_or(path);
        // Position in the path: byte offset where the next segment starts, or
        // None once every segment is consumed.
        let mut pos: Option<usize> = Some(0);
        let mut pi = 0;
        // Last `**` seen: (pattern index after it, path position it resumes from).
        let mut resume: Option<(usize, Option<usize>)> = None;
        loop {
            match (self.segments.get(pi), pos) {
                (None, None) => return true,
                (Some(Segment::AnyDepth), _) => {
                    pi += 1;
                    resume = Some((pi, pos));
                    continue;
                }
                (Some(Segment::Glob(g)), Some(off)) => {
                    let (seg, next) = next_segment(path, off);
                    if wildcard_match(g.as_bytes(), seg.as_bytes()) {
                        pi += 1;
                        pos = next;
                        continue;
                    }
                }
                _ => {}
            }
            // Mismatch: let the last `**` swallow one more segment.
            match resume {
                Some((after, Some(off))) => {
                    let (_, next) = next_segment(path, off);
                    resume = Some((after, next));
                    pi = after;
                    pos = next;
                }
                _ => return false,
            }
        }
    }
}

fn next_segment(path: &str, off: usize) -> (&str, Option<usize>) {
    let rest = path.get(off..).unwrap_or("");
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(off + i + 1)),
        None => (rest, None),
    }
}

/// `*` matches any run of bytes (including none); everything else is literal.
pub fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p + 1, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathGlob::new(pattern).matches(path)
    }

    #[test]
    fn literal_and_root() {
        assert!(m("/", "/"));
        assert!(m("/", ""), "empty path counts as /");
        assert!(!m("/", "/a"));
        assert!(m("/a/b", "/a/b"));
        assert!(!m("/a/b", "/a/b/"));
        assert!(!m("/a/b", "/a"));
        assert!(!m("/a/b", "/A/b"), "paths are case-sensitive");
    }

    #[test]
    fn single_star_stays_in_segment() {
        assert!(m("/a/*", "/a/x"));
        assert!(m("/a/*", "/a/"));
        assert!(!m("/a/*", "/a/x/y"));
        assert!(!m("/a/*", "/a"));
        assert!(m("/a/*.tar.gz", "/a/pkg-1.0.tar.gz"));
        assert!(!m("/a/*.tar.gz", "/a/b/pkg.tar.gz"));
        assert!(m("/a/x*y*z", "/a/xaaybbz"));
        assert!(!m("/a/x*y*z", "/a/xaay/bbz"));
        assert!(m("/*", "/"));
        assert!(!m("/*", "/a/b"));
    }

    #[test]
    fn double_star_start_middle_end() {
        // end
        assert!(m("/a/**", "/a"));
        assert!(m("/a/**", "/a/"));
        assert!(m("/a/**", "/a/b"));
        assert!(m("/a/**", "/a/b/c/d"));
        assert!(!m("/a/**", "/ab"));
        assert!(!m("/a/**", "/b/a"));
        // start
        assert!(m("/**/info/refs", "/info/refs"));
        assert!(m("/**/info/refs", "/org/repo.git/info/refs"));
        assert!(!m("/**/info/refs", "/org/repo.git/info/refs/x"));
        // middle
        assert!(m("/a/**/z", "/a/z"));
        assert!(m("/a/**/z", "/a/b/z"));
        assert!(m("/a/**/z", "/a/b/c/z"));
        assert!(!m("/a/**/z", "/a/b/c/zz"));
        assert!(m("/a/**/b/**/c", "/a/x/b/y/b/z/c"));
        // everything
        assert!(m("/**", "/"));
        assert!(m("/**", ""));
        assert!(m("/**", "/a/b/c"));
        // combined with *
        assert!(m("/simple/*/**", "/simple/requests/"));
        assert!(m("/simple/*/**", "/simple/requests"));
        assert!(!m("/simple/*/**", "/simple"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*", b""));
        assert!(wildcard_match(b"*", b"anything/at all"));
        assert!(wildcard_match(b"main", b"main"));
        assert!(!wildcard_match(b"main", b"mainx"));
        assert!(wildcard_match(b"v*", b"v1.2"));
        assert!(!wildcard_match(b"v*", b"x1"));
        assert!(wildcard_match(b"*a*b", b"xxaxxb"));
        assert!(!wildcard_match(b"*a*b", b"xxaxxbc"));
        assert!(wildcard_match(b"", b""));
        assert!(!wildcard_match(b"", b"a"));
    }
}
