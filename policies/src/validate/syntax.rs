//! Small lexical checks shared by the validators (and by the gateway's pod
//! renderer). Each returns the end of a sentence (`is invalid: ...`) that the
//! caller prefixes with the value.

/// Names that appear in metrics labels: policy, rule and credential names.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(
            "is invalid: use 1-63 lowercase letters, digits and `-`, starting and ending with a \
             letter or digit (`github-api`)"
                .to_owned(),
        )
    }
}

/// A Kubernetes-style DNS subdomain (Secret names, label key prefixes).
pub fn dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The name part of a label key or a label value (Kubernetes rules).
pub fn label_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

pub fn label_key(s: &str) -> Result<(), String> {
    let ok = match s.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && label_name(name),
        None => label_name(s),
    };
    if ok {
        Ok(())
    } else {
        Err(
            "is invalid: use an optional DNS prefix and `/`, then 1-63 letters, digits, `-`, `_` \
             or `.`, starting and ending with a letter or digit (`team`, `example.com/owner`)"
                .to_owned(),
        )
    }
}

pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || label_name(s) {
        Ok(())
    } else {
        Err(
            "is invalid: use at most 63 letters, digits, `-`, `_` or `.`, starting and ending \
             with a letter or digit"
                .to_owned(),
        )
    }
}

/// RFC 9110 `token` (method names, header names, auth schemes).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Environment variable name.
pub fn env_name(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A value without whitespace or control characters (audiences, scopes).
pub fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical() {
        assert!(dns_label("github-api").is_ok());
        assert!(dns_label("a").is_ok());
        for bad in ["", "-a", "a-", "Github", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
        assert!(label_key("example.com/owner").is_ok());
        assert!(label_key("team").is_ok());
        assert!(label_key("/x").is_err());
        assert!(label_key("a b").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("-x").is_err());
        assert!(is_token("X-Api-Key"));
        assert!(!is_token("X Api"));
        assert!(!is_token(":authority"));
        assert!(!is_token(""));
        assert!(env_name("GITHUB_TOKEN"));
        assert!(!env_name("1X"));
        assert!(!env_name("A-B"));
        assert!(dns_subdomain("github-token.v1"));
        assert!(!dns_subdomain("Github"));
    }
}
