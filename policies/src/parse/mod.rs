//! Bytes → validated [`Policy`].
//!
//! The steps, each with its own clear error and never a panic:
//! 1. size cap ([`MAX_POLICY_BYTES`]) before anything is parsed;
//! 2. UTF-8 check, reporting where the first bad byte is;
//! 3. a cap on flow brackets ([`MAX_FLOW_BRACKETS`]), which bounds the YAML
//!    scanner's cost on deeply nested flow collections;
//! 4. the guard pass ([`guard`]): depth and node caps, so aliases cannot
//!    multiply the document and deep nesting cannot exhaust the stack;
//! 5. typed deserialisation with the field path of the first shape error
//!    (unknown field, wrong type, missing field);
//! 6. every semantic rule ([`crate::validate`]), all errors collected, each
//!    placed at its line and column ([`locate`]).
//!
//! Must never: panic on any input, or allocate in proportion to YAML alias
//! expansion.

mod guard;
mod locate;

use crate::error::{PolicyError, PolicyErrors, Problem};
use crate::model::Policy;

pub use self::guard::{MAX_DEPTH, MAX_NODES};

/// Largest policy document accepted.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// Most `[` and `{` characters in a document. libyaml's scanner slows down
/// quadratically with flow nesting depth; counting every bracket (in strings
/// and comments too) is a bound on that depth that no quoting can fool.
pub const MAX_FLOW_BRACKETS: usize = 8192;

/// Most semantic errors that get a line and column (each costs a replay of
/// the document); the rest are still reported, without a location.
const MAX_LOCATED_ERRORS: usize = 64;

/// Parse and validate one YAML (or JSON) policy document.
pub fn parse_policy(bytes: &[u8]) -> Result<Policy, PolicyErrors> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(PolicyErrors::single(PolicyError::document(
            format!(
                "policy is {} bytes; the limit is {MAX_POLICY_BYTES} bytes (1 MiB); split it or \
                 remove unused rules",
                bytes.len()
            ),
            None,
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let at = line_col(bytes, e.valid_up_to());
        PolicyErrors::single(PolicyError::document(
            format!(
                "policy is not valid UTF-8 (byte 0x{:02x} at offset {}); save the file as UTF-8",
                bytes.get(e.valid_up_to()).copied().unwrap_or(0),
                e.valid_up_to()
            ),
            Some(at),
        ))
    })?;
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(PolicyErrors::single(PolicyError::document(
            "policy document is empty; a policy needs apiVersion, kind, metadata and spec",
            None,
        )));
    }

    if let Some(offset) = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'[' | b'{'))
        .map(|(i, _)| i)
        .nth(MAX_FLOW_BRACKETS)
    {
        return Err(PolicyErrors::single(PolicyError::document(
            format!(
                "document has more than {MAX_FLOW_BRACKETS} `[` and `{{` characters; policies that \
                 large or that deeply nested are refused — write long lists in block style \
                 (`- item` lines)"
            ),
            Some(line_col(bytes, offset)),
        )));
    }

    let findings = match guard::walk(serde_yaml_ng::Deserializer::from_str(text)) {
        (Ok(findings), _) => findings,
        (Err(e), refusal) => return Err(PolicyErrors::single(guard_error(&e, refusal))),
    };

    let policy: Policy =
        serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
            .map_err(|e| PolicyErrors::single(shape_error(&e)))?;

    let mut problems: Vec<Problem> = findings
        .explicit_empty_methods
        .into_iter()
        .map(|path| Problem {
            path,
            message: "an empty methods list would match every method; omit `methods` to match \
                      any method, or list the methods (`[GET, HEAD]`)"
                .to_owned(),
        })
        .collect();
    problems.extend(crate::validate::problems(&policy));
    if problems.is_empty() {
        return Ok(policy);
    }
    let mut errors: Vec<PolicyError> = problems
        .into_iter()
        .enumerate()
        .map(|(i, p)| PolicyError {
            location: if i < MAX_LOCATED_ERRORS {
                locate::locate(text, &p.path)
            } else {
                None
            },
            path: p.path.to_string(),
            message: p.message,
        })
        .collect();
    // Reading order; errors without a position keep their order at the end.
    errors.sort_by_key(|e| e.location.unwrap_or((usize::MAX, usize::MAX)));
    Err(PolicyErrors(errors))
}

/// 1-based line and column of a byte offset.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = bytes.get(..offset).unwrap_or(bytes);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, offset - line_start + 1)
}

fn location(e: &serde_yaml_ng::Error) -> Option<(usize, usize)> {
    e.location().map(|l| (l.line(), l.column()))
}

/// The parser's own message without the path prefix and position suffix it
/// adds (both are reported separately).
fn bare_message(e: &serde_yaml_ng::Error) -> String {
    let mut msg = e.to_string();
    if let Some(l) = e.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(stripped) = msg.strip_suffix(&suffix) {
            msg = stripped.to_owned();
        }
    }
    // serde_yaml_ng prefixes `path: `; paths contain no spaces.
    if let Some((prefix, rest)) = msg.split_once(": ")
        && !prefix.contains(' ')
        && !prefix.is_empty()
    {
        msg = rest.to_owned();
    }
    msg
}

fn guard_error(e: &serde_yaml_ng::Error, refusal: Option<guard::Refusal>) -> PolicyError {
    let at = location(e);
    match refusal {
        Some(guard::Refusal::TooDeep(path)) => PolicyError {
            path: path.to_string(),
            location: at,
            message: format!(
                "document nests deeper than {MAX_DEPTH} levels; no policy field is that deep — \
                 check the indentation and brackets"
            ),
        },
        Some(guard::Refusal::TooManyNodes(path)) => PolicyError {
            path: path.to_string(),
            location: at,
            message: format!(
                "document has more than {MAX_NODES} values (YAML aliases counted expanded); \
                 policies that large are refused — do not use anchors/aliases to multiply content"
            ),
        },
        None => syntax_error(e),
    }
}

/// A YAML syntax error (or a parser limit) found before any field was read.
fn syntax_error(e: &serde_yaml_ng::Error) -> PolicyError {
    let msg = bare_message(e);
    let hint = if msg.contains("more than one document") {
        "; a policy file holds exactly one YAML document (remove the `---` separators)"
    } else if msg.contains("recursion limit") {
        "; the document nests too deeply"
    } else if msg.contains("repetition limit") {
        "; the document expands YAML aliases too often"
    } else {
        "; fix the YAML syntax"
    };
    PolicyError::document(format!("invalid YAML: {msg}{hint}"), location(e))
}

/// A shape error from typed deserialisation. The guard pass has already read
/// the whole document, so this is never a YAML syntax error.
fn shape_error(e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> PolicyError {
    let inner = e.inner();
    let mut message = bare_message(inner);
    let path = e.path().to_string();
    if path == "." {
        message.push_str("; a policy is a mapping with apiVersion, kind, metadata and spec");
        return PolicyError::document(message, location(inner));
    }
    if let Some(hint) = field_hint(&path) {
        message.push_str("; ");
        message.push_str(hint);
    }
    PolicyError {
        path,
        location: location(inner),
        message,
    }
}

/// What a field accepts, appended to type errors.
fn field_hint(path: &str) -> Option<&'static str> {
    let last = path.rsplit('.').next().unwrap_or(path);
    let field = last.split('[').next().unwrap_or(last);
    Some(match field {
        "ports" => "ports are integers 1-65535, as a list (`[443]`)",
        "allowedCidrs" => "write CIDRs such as `10.0.0.0/8` or `fd00::/8`",
        "hosts" => "hosts are a list of names (`[api.example.com]`)",
        "mode" => "allowed: `enforce`, `audit`",
        "dns" => "allowed: `policy`, `forward`",
        "tls" => "allowed: `inspect`, `passthrough`",
        "access" => "allowed: `read-only`, `read-write`, `full`",
        "grant" => "allowed: `clientCredentials`, `tokenExchange`",
        "denyAll" | "opaqueTcp" => "write `true` or `false`",
        "from" => "allowed sources: `secret`, `file`, `env`, `tokenGrant`, `workloadToken`",
        _ => return None,
    })
}
