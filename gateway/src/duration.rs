//! Durations as operators write them (`30s`, `15m`, `1h`, `2d`, plain
//! seconds) and as the gateway shows them (`900s`): flags, the config file,
//! `?wait=` and `--print-config` all go through here.
//!
//! Must never: accept a unit it does not document, or overflow silently.

use std::time::Duration;

/// `30s`, `15m`, `1h`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a duration; write e.g. 30s, 15m, 1h or 2d"))
}

/// Serialise a duration as whole seconds, `"900s"` (`--print-config`).
pub fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs()))
}
