//! Syntax checks of the values a pod is rendered from (names, labels,
//! quantities, URLs, certificates), each with an error that names the
//! setting and the rule. Kubernetes would refuse these later, far from the
//! cause; the renderer refuses them first.
//!
//! Must never: accept a value the API server or the sidecar would refuse.

use super::RenderError;

use palisade_policy::validate::syntax;

/// A DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(setting: &str, s: &str) -> Result<(), RenderError> {
    syntax::dns_label(s).map_err(|_| {
        RenderError::setting(
            setting,
            format!(
                "`{s}` is not a DNS label (1-63 lowercase letters, digits and `-`, starting and \
                 ending with a letter or digit)"
            ),
        )
    })
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain(setting: &str, s: &str) -> Result<(), RenderError> {
    if syntax::dns_subdomain(s) {
        Ok(())
    } else {
        Err(RenderError::setting(
            setting,
            format!(
                "`{s}` is not a DNS subdomain name (lowercase letters, digits, `-` and `.`, at \
                 most 253 characters)"
            ),
        ))
    }
}

/// A label value: empty, or 1–63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || syntax::label_name(s)
}

/// A label `key=value` the user gives (not one of Palisade's own).
pub fn user_label(key: &str, value: &str) -> Result<(), RenderError> {
    let setting = format!("label `{key}`");
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        dns_subdomain(&setting, p).map_err(|_| {
            RenderError::setting(
                &setting,
                format!("the key prefix `{p}` is not a DNS subdomain"),
            )
        })?;
        if format!("{p}/").starts_with(super::PALISADE_PREFIX) || p.ends_with(".palisade.dev") {
            return Err(RenderError::setting(
                &setting,
                "keys under palisade.dev/ are Palisade's own (the gateway trusts them)",
            ));
        }
    }
    if !syntax::label_name(name) {
        return Err(RenderError::setting(
            &setting,
            "the key name must be 1-63 letters, digits, `-`, `_` or `.`, starting and ending \
             with a letter or digit",
        ));
    }
    if !value.is_empty() && !syntax::label_name(value) {
        return Err(RenderError::setting(
            &setting,
            format!(
                "the value `{value}` must be empty or 1-63 letters, digits, `-`, `_` or `.`, \
                 starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// An environment variable name for the agent. `PALISADE_*` configure
/// `palisade-shim` itself (`PALISADE_ALLOW_INSECURE` would turn its
/// hardening check into warnings), so they are refused.
pub fn agent_env_name(setting: &str, name: &str) -> Result<(), RenderError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.as_bytes()[0].is_ascii_digit();
    if !ok {
        return Err(RenderError::setting(
            setting,
            format!(
                "`{name}` is not a valid variable name (letters, digits, `_`, `-`, `.`; not \
                 starting with a digit)"
            ),
        ));
    }
    if name.to_ascii_uppercase().starts_with("PALISADE_") {
        return Err(RenderError::setting(
            setting,
            format!(
                "`{name}`: PALISADE_* variables configure palisade-shim itself (e.g. \
                 PALISADE_ALLOW_INSECURE would disable its hardening check); the renderer sets \
                 the ones the pod needs"
            ),
        ));
    }
    Ok(())
}

/// A Kubernetes resource quantity (`100m`, `1.5`, `64Mi`, `1e3`).
pub fn quantity(setting: &str, s: &str) -> Result<(), RenderError> {
    let bad = || {
        RenderError::setting(
            setting,
            format!(
                "`{s}` is not a quantity (a number with an optional suffix: m, k, M, G, T, P, \
                 E, Ki, Mi, Gi, Ti, Pi, Ei, or an exponent like 1e3)"
            ),
        )
    };
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let dots = number.matches('.').count();
    if number.is_empty() || number == "." || dots > 1 {
        return Err(bad());
    }
    let suffix_ok = match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            true
        }
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())),
    };
    if suffix_ok { Ok(()) } else { Err(bad()) }
}

/// A container image reference: non-empty, no whitespace or control characters.
pub fn image(setting: &str, s: &str) -> Result<(), RenderError> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RenderError::setting(
            setting,
            format!("`{s}` is not an image reference (like registry.example/palisade-sidecar:1.0)"),
        ));
    }
    Ok(())
}

/// The gateway's URL as the sidecar will dial it: https with a host.
pub fn gateway_url(url: &str) -> Result<(), RenderError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| RenderError::setting("--gateway-url", format!("`{url}` is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(RenderError::setting(
            "--gateway-url",
            format!(
                "`{url}` must be https://: the sidecar refuses a plaintext gateway across the \
                 network (the sandbox's token and credentials travel on it)"
            ),
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(RenderError::setting(
            "--gateway-url",
            format!("`{url}` has no host"),
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(RenderError::setting(
            "--gateway-url",
            format!("`{url}` must be https://host[:port] without a path"),
        ));
    }
    Ok(())
}

/// At least one PEM certificate, and nothing else (no private key).
pub fn pem_certificates(setting: &str, pem: &[u8]) -> Result<(), RenderError> {
    let mut certs = 0usize;
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        match item {
            Ok(rustls_pemfile::Item::X509Certificate(_)) => certs += 1,
            Ok(_) => {
                return Err(RenderError::setting(
                    setting,
                    "the file holds something other than certificates (a private key?); it \
                     goes into a ConfigMap, so only certificates may be in it",
                ));
            }
            Err(e) => {
                return Err(RenderError::setting(
                    setting,
                    format!("the file is not valid PEM: {e}"),
                ));
            }
        }
    }
    if certs == 0 {
        return Err(RenderError::setting(
            setting,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    if std::str::from_utf8(pem).is_err() {
        return Err(RenderError::setting(setting, "the file is not UTF-8 text"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "1", "100m", "1.5", "64Mi", "1e3", "2E-2", "+1", ".5", "5.", "1Gi",
        ] {
            quantity("q", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "m", "1.2.3", "10mb", "1e", "Mi", "1 Gi", "1x"] {
            assert!(quantity("q", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        user_label("team", "agents").unwrap();
        user_label("example.com/team", "").unwrap();
        for (k, v) in [
            ("palisade.dev/sandbox-id", "x"),
            ("team", "a b"),
            ("-team", "x"),
            ("Team.Example/x", "y"),
            ("team", &"x".repeat(64)),
        ] {
            assert!(user_label(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn env_names() {
        agent_env_name("e", "HTTP_TIMEOUT").unwrap();
        for bad in [
            "PALISADE_ALLOW_INSECURE",
            "palisade_no_wait",
            "1X",
            "A=B",
            "",
        ] {
            assert!(agent_env_name("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gateway_urls() {
        gateway_url("https://palisade-gateway.palisade.svc:8443").unwrap();
        for bad in [
            "http://gw:8443",
            "gw:8443",
            "https://",
            "https://gw:8443/v1",
            "not a url",
        ] {
            assert!(gateway_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_files() {
        assert!(pem_certificates("c", b"hello").is_err());
        let key =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(pem_certificates("c", key).is_err());
    }
}
