//! Tests of [`super::Config::resolve`] and `--print-config`.

use std::time::Duration;

use clap::Parser;

use super::*;
use crate::authn::kube::DEFAULT_TOKEN_AUDIENCE;
use crate::duration::parse_duration;

#[derive(Debug, Parser)]
struct T {
    #[command(flatten)]
    args: ServeArgs,
}

fn args(list: &[&str]) -> ServeArgs {
    T::try_parse_from(std::iter::once("t").chain(list.iter().copied()))
        .unwrap()
        .args
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
    assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn refuses_plaintext_and_anonymous_unless_asked() {
    let e = Config::resolve(&args(&["--admin-token-file", "/x"])).unwrap_err();
    assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
    let e = Config::resolve(&args(&["--insecure-plaintext"])).unwrap_err();
    assert!(e.to_string().contains("--admin-token-file"), "{e}");
    let c = Config::resolve(&args(&[
        "--insecure-plaintext",
        "--insecure-allow-anonymous",
    ]))
    .unwrap();
    assert!(c.tls.is_none() && c.insecure_allow_anonymous);
    assert_eq!(c.issuer, "http://localhost:8443");
    let e = Config::resolve(&args(&["--tls-cert", "/c", "--admin-token-file", "/x"])).unwrap_err();
    assert!(e.to_string().contains("together"), "{e}");
}

#[test]
fn flags_override_file_which_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:1111\nadmin-listen: 127.0.0.1:2222\ninsecure-plaintext: true\n\
         insecure-allow-anonymous: true\ntoken-ttl: 5m\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let c = Config::resolve(&args(&["--config", f, "--listen", "127.0.0.1:3333"])).unwrap();
    assert_eq!(c.listen.port(), 3333);
    assert_eq!(c.admin_listen.port(), 2222);
    assert_eq!(c.token_ttl, Duration::from_secs(300));
    assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    std::fs::write(&file, "listn: 1\n").unwrap();
    let e = Config::resolve(&args(&["--config", f])).unwrap_err();
    assert!(format!("{e:#}").contains("listn"), "{e:#}");
}

#[test]
fn kube_auth_needs_a_service_account_and_namespaces() {
    let base = ["--insecure-plaintext", "--insecure-allow-anonymous"];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        Config::resolve(&args(&v))
    };
    assert_eq!(with(&[]).unwrap().kube, None);
    let e = with(&["--kube-config", "/k"]).unwrap_err();
    assert!(e.to_string().contains("--sandbox-service-account"), "{e}");
    let e = with(&["--sandbox-service-account", "sbx"]).unwrap_err();
    assert!(e.to_string().contains("--sandbox-namespaces"), "{e}");
    let e = with(&[
        "--sandbox-service-account",
        "Bad_SA",
        "--sandbox-namespaces",
        "a",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("not a valid"), "{e}");
    let c = with(&[
        "--sandbox-service-account",
        "sbx",
        "--sandbox-namespaces",
        "a,b",
        "--kube-timeout",
        "2s",
    ])
    .unwrap();
    let k = c.kube.clone().unwrap();
    assert_eq!(k.namespaces, vec!["a", "b"]);
    assert_eq!(k.audience, DEFAULT_TOKEN_AUDIENCE);
    assert_eq!(k.timeout, Duration::from_secs(2));
    assert_eq!(k.kube_config, None);
    let shown = c.redacted_yaml();
    assert!(shown.contains("service-account: sbx"), "{shown}");
    assert!(shown.contains("timeout: 2s"), "{shown}");
}
