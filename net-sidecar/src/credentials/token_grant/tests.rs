//! Token grants against the e2e doubles: a fake SPIFFE Workload API (gRPC on a unix socket,
//! real ES256 SVIDs) and a fake OAuth token endpoint (HTTPS with a test CA, verifying the SVID
//! against the bundle). Loopback and unix sockets only.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::sync::Arc;
use std::time::Duration;

use palisade_e2e::oauth::{Behaviour, FakeTokenEndpoint};
use palisade_e2e::spiffe::FakeWorkloadApi;
use palisade_policy::model::{GrantOverride, GrantType, TokenGrant};

use super::oauth::{Endpoint, form, is_token68, sanitize};
use super::*;

const SVID_AUDIENCE: &str = "oauth.example.org";

struct Env {
    spire: FakeWorkloadApi,
    oauth: FakeTokenEndpoint,
    client: TokenGrantClient,
}

async fn env_with(https: bool, tune: impl FnOnce(&mut TokenGrantConfig)) -> Env {
    let spire = FakeWorkloadApi::start().await.unwrap();
    let oauth = if https {
        FakeTokenEndpoint::start_https(&spire.jwks(), SVID_AUDIENCE)
            .await
            .unwrap()
    } else {
        FakeTokenEndpoint::start_http(&spire.jwks(), SVID_AUDIENCE)
            .await
            .unwrap()
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(oauth.root_store().unwrap())
    .with_no_client_auth();
    let mut config = TokenGrantConfig::default().with_workload_api(spire.socket_path());
    config.timeout = Duration::from_secs(10);
    tune(&mut config);
    let metrics = TokenGrantMetrics::new(&prometheus::Registry::new()).unwrap();
    let client = TokenGrantClient::new(config, Arc::new(tls), metrics);
    Env {
        spire,
        oauth,
        client,
    }
}

async fn env() -> Env {
    env_with(true, |_| {}).await
}

fn grant(endpoint: &str, kind: GrantType, audience: Option<&str>, scopes: &[&str]) -> TokenGrant {
    TokenGrant {
        token_endpoint: endpoint.to_owned(),
        grant: kind,
        svid_audience: SVID_AUDIENCE.to_owned(),
        audience: audience.map(str::to_owned),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        overrides: Vec::new(),
    }
}

fn target<'a>(host: &'a str, port: u16, path: &'a str) -> RequestTarget<'a> {
    RequestTarget { host, port, path }
}

/// The error text of a failed get, checked to carry no token of any kind.
#[track_caller]
fn clean_error(result: Result<Secret, CredentialError>, env: &Env) -> String {
    let err = result.unwrap_err().to_string();
    assert!(!err.contains("eyJ"), "an SVID leaked into: {err}");
    for issued in env.oauth.issued() {
        let first_line = issued.token.lines().next().unwrap_or_default();
        assert!(!err.contains(first_line), "a token leaked into: {err}");
    }
    assert!(
        err.chars().all(|c| (' '..='~').contains(&c) || c == '…'),
        "unprintable characters in: {err:?}"
    );
    err
}

#[tokio::test]
async fn both_grant_types_exchange_and_the_second_call_hits_the_cache() {
    let env = env().await;
    for (n, kind) in [GrantType::ClientCredentials, GrantType::TokenExchange]
        .into_iter()
        .enumerate()
    {
        let src = TokenGrantSource::new(
            &grant(&env.oauth.url(), kind, Some("orders"), &["read", "write"]),
            env.client.clone(),
        );
        let first = src.get().await.unwrap();
        let second = src.get().await.unwrap();
        assert_eq!(first, second);
        let issued = env.oauth.issued();
        assert_eq!(issued.len(), n + 1, "{issued:?}");
        let last = issued.last().unwrap();
        assert_eq!(first.expose(), last.token);
        assert_eq!(last.audience.as_deref(), Some("orders"));
        assert_eq!(last.scope.as_deref(), Some("read write"));
        let label = match kind {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::TokenExchange => "token_exchange",
        };
        assert_eq!(last.grant, label);
        assert_eq!(env.client.metrics().exchanges(label, "ok"), 1);
    }
    assert_eq!(env.spire.svid_calls(), 2);
    assert_eq!(env.oauth.requests(), 2);
    assert_eq!(env.client.metrics().cache_count("hit"), 2);
    assert_eq!(env.client.metrics().cache_count("miss"), 2);
    assert!(
        env.oauth.rejected().is_empty(),
        "{:?}",
        env.oauth.rejected()
    );
}

#[tokio::test]
async fn per_endpoint_override_gets_its_own_audience_and_token() {
    let env = env().await;
    let mut g = grant(
        &env.oauth.url(),
        GrantType::TokenExchange,
        Some("orders"),
        &["read"],
    );
    g.overrides = vec![
        GrantOverride {
            host: "api.example.com".into(),
            port: None,
            path: Some("/admin".into()),
            audience: Some("admin-api".into()),
            scopes: None,
        },
        GrantOverride {
            host: "api.example.com".into(),
            port: Some(443),
            path: Some("/admin/billing".into()),
            audience: None,
            scopes: Some(vec!["billing".into()]),
        },
    ];
    let src = TokenGrantSource::new(&g, env.client.clone());
    let base = src
        .token_for(&target("api.example.com", 443, "/v1/orders"))
        .await
        .unwrap();
    let admin = src
        .token_for(&target("API.Example.com.", 443, "/admin/users"))
        .await
        .unwrap();
    let billing = src
        .token_for(&target("api.example.com", 443, "/admin/billing/2026"))
        .await
        .unwrap();
    // `/administrator` is not under `/admin`: base token (cached).
    let again = src
        .token_for(&target("api.example.com", 443, "/administrator"))
        .await
        .unwrap();
    assert_ne!(base, admin);
    assert_ne!(admin, billing);
    assert_eq!(base, again);
    let issued = env.oauth.issued();
    let seen: Vec<_> = issued
        .iter()
        .map(|i| (i.audience.as_deref(), i.scope.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("orders"), Some("read")),
            (Some("admin-api"), Some("read")),
            // Omitted fields come from the grant, not from the less specific override.
            (Some("orders"), Some("billing")),
        ]
    );
    // Without request context a grant with overrides refuses instead of guessing.
    let err = src.get().await.unwrap_err().to_string();
    assert!(err.contains("per-endpoint overrides"), "{err}");
}

#[tokio::test]
async fn fifty_concurrent_gets_share_one_exchange() {
    let env = env().await;
    let src = Arc::new(TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        env.client.clone(),
    ));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let src = src.clone();
        set.spawn(async move { src.get().await });
    }
    let mut tokens = Vec::new();
    while let Some(r) = set.join_next().await {
        tokens.push(r.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 50);
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(env.oauth.requests(), 1);
    assert_eq!(env.spire.svid_calls(), 1);
    let m = env.client.metrics();
    assert_eq!(m.cache_count("miss"), 1);
    assert_eq!(
        m.cache_count("hit") + m.cache_count("shared"),
        49,
        "every other caller joined the exchange or hit its result"
    );
}

#[tokio::test]
async fn a_hanging_endpoint_fails_after_the_timeout() {
    let env = env_with(true, |c| c.timeout = Duration::from_millis(500)).await;
    env.oauth.set_behaviour(Behaviour::Hang);
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        env.client.clone(),
    );
    let result = tokio::time::timeout(Duration::from_secs(30), src.get())
        .await
        .expect("the configured timeout must end the exchange");
    let err = clean_error(result, &env);
    assert!(err.contains("no answer within 500ms"), "{err}");
    assert_eq!(env.oauth.requests(), 1);
    assert_eq!(
        env.client
            .metrics()
            .exchanges("client_credentials", "timeout"),
        1
    );
    // Failures are not cached: the next call tries again.
    env.oauth.set_behaviour(Behaviour::Normal);
    assert!(src.get().await.is_ok());
}

#[tokio::test]
async fn misbehaving_endpoints_are_refused_without_echoing_tokens() {
    let env = env().await;
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::TokenExchange, Some("a"), &[]),
        env.client.clone(),
    );
    let cases = [
        (Behaviour::Redirect, "redirect", "never follows redirects"),
        (Behaviour::CrlfToken, "invalid_token", "not token68"),
        (Behaviour::NonToken68, "invalid_token", "not token68"),
        (
            Behaviour::OAuthError,
            "oauth_error",
            "error `invalid_grant?`",
        ),
    ];
    for (behaviour, outcome, needle) in cases {
        env.oauth.set_behaviour(behaviour);
        let err = clean_error(src.get().await, &env);
        assert!(err.contains(needle), "{behaviour:?}: {err}");
        assert!(!err.contains(['\r', '\n']), "{behaviour:?}: {err}");
        assert!(
            env.client.metrics().exchanges("token_exchange", outcome) >= 1,
            "{behaviour:?}"
        );
    }
    // The OAuth error echoed the SVID: it must have been redacted, not relayed.
    env.oauth.set_behaviour(Behaviour::OAuthError);
    let err = clean_error(src.get().await, &env);
    assert!(err.contains("[redacted]"), "{err}");
    // Every request reached the endpoint; none produced a cached token.
    assert_eq!(env.oauth.requests(), 5);
    env.oauth.set_behaviour(Behaviour::Normal);
    assert!(src.get().await.is_ok());
}

#[tokio::test]
async fn plain_http_only_for_loopback_and_cluster_names() {
    // Plain HTTP on loopback works …
    let env = env_with(false, |_| {}).await;
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        env.client.clone(),
    );
    assert!(env.oauth.url().starts_with("http://127.0.0.1:"));
    assert!(src.get().await.is_ok());
    // … elsewhere it is refused before any connection or SVID fetch.
    let svids = env.spire.svid_calls();
    let src = TokenGrantSource::new(
        &grant(
            "http://auth.example.com/token",
            GrantType::ClientCredentials,
            None,
            &[],
        ),
        env.client.clone(),
    );
    let err = clean_error(src.get().await, &env);
    assert!(err.contains("uses plain http"), "{err}");
    assert_eq!(env.spire.svid_calls(), svids);
    assert_eq!(
        env.client
            .metrics()
            .exchanges("client_credentials", "refused_endpoint"),
        1
    );
}

#[tokio::test]
async fn an_https_endpoint_with_an_untrusted_certificate_is_refused() {
    let env = env().await;
    let metrics = TokenGrantMetrics::new(&prometheus::Registry::new()).unwrap();
    let untrusting = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let client = TokenGrantClient::new(
        TokenGrantConfig::default().with_workload_api(env.spire.socket_path()),
        Arc::new(untrusting),
        metrics,
    );
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        client,
    );
    let err = clean_error(src.get().await, &env);
    assert!(err.contains("TLS with localhost failed"), "{err}");
    assert!(err.contains("--upstream-ca"), "{err}");
    assert_eq!(env.oauth.requests(), 0);
}

#[tokio::test]
async fn the_endpoint_verifies_the_svid_audience() {
    let env = env().await;
    let mut g = grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]);
    g.svid_audience = "someone-else".into();
    let src = TokenGrantSource::new(&g, env.client.clone());
    let err = clean_error(src.get().await, &env);
    assert!(err.contains("error `invalid_client`"), "{err}");
    let rejected = env.oauth.rejected();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].contains("InvalidAudience"), "{rejected:?}");
}

#[tokio::test]
async fn workload_api_failures_are_clear() {
    let env = env().await;
    env.spire.set_deny(true);
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        env.client.clone(),
    );
    let err = clean_error(src.get().await, &env);
    assert!(err.contains("SPIFFE Workload API"), "{err}");
    assert!(err.contains("registered"), "{err}");
    assert_eq!(env.oauth.requests(), 0);

    let metrics = TokenGrantMetrics::new(&prometheus::Registry::new()).unwrap();
    let config = TokenGrantConfig {
        workload_api: None,
        ..TokenGrantConfig::default()
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let client = TokenGrantClient::new(config, Arc::new(tls), metrics);
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        client,
    );
    let err = src.get().await.unwrap_err().to_string();
    assert!(err.contains("SPIFFE_ENDPOINT_SOCKET"), "{err}");
}

#[tokio::test]
async fn an_expired_token_is_fetched_again() {
    let env = env_with(true, |c| c.ttl_skew = Duration::ZERO).await;
    env.oauth.set_expires_in(1);
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        env.client.clone(),
    );
    let first = src.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = src.get().await.unwrap();
    assert_ne!(first, second);
    assert_eq!(env.oauth.issued().len(), 2);
    // A lifetime shorter than the skew is used once and never cached.
    let env = env_with(true, |c| c.ttl_skew = Duration::from_secs(30)).await;
    env.oauth.set_expires_in(20);
    let src = TokenGrantSource::new(
        &grant(&env.oauth.url(), GrantType::ClientCredentials, None, &[]),
        env.client.clone(),
    );
    src.get().await.unwrap();
    src.get().await.unwrap();
    assert_eq!(env.oauth.issued().len(), 2);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let env = env_with(true, |c| {
        c.cache_capacity = std::num::NonZeroUsize::new(2).unwrap();
    })
    .await;
    for aud in ["a", "b", "c"] {
        let src = TokenGrantSource::new(
            &grant(
                &env.oauth.url(),
                GrantType::ClientCredentials,
                Some(aud),
                &[],
            ),
            env.client.clone(),
        );
        src.get().await.unwrap();
    }
    assert_eq!(env.client.inner_cache_len(), 2);
    // `a` was evicted (least recently used): asking again exchanges again.
    let src = TokenGrantSource::new(
        &grant(
            &env.oauth.url(),
            GrantType::ClientCredentials,
            Some("a"),
            &[],
        ),
        env.client.clone(),
    );
    src.get().await.unwrap();
    assert_eq!(env.oauth.issued().len(), 4);
}

#[test]
fn endpoints() {
    for ok in [
        "https://auth.example.com/oauth/token?x=1",
        "http://127.0.0.1:8080/t",
        "http://[::1]:8080/t",
        "http://localhost/t",
        "http://sts.identity.svc/t",
        "http://sts.identity.svc.cluster.local:8080/t",
    ] {
        assert!(Endpoint::parse(ok).is_ok(), "{ok}");
    }
    for (bad, needle) in [
        ("http://auth.example.com/t", "plain http"),
        ("http://10.0.0.1/t", "plain http"),
        ("http://svc.example.com/t", "plain http"),
        ("ftp://auth.example.com/t", "must use https"),
        ("https://u:p@auth.example.com/t", "user credentials"),
        ("not a url", "not a valid absolute URL"),
    ] {
        let err = Endpoint::parse(bad).unwrap_err();
        assert_eq!(err.outcome, "refused_endpoint");
        assert!(err.message.contains(needle), "{bad}: {}", err.message);
        assert!(!err.message.contains("u:p"), "{}", err.message);
    }
}

#[test]
fn grant_forms() {
    let key = TokenKey {
        endpoint: Arc::from("https://a/t"),
        grant: GrantType::ClientCredentials,
        svid_audience: Arc::from("x"),
        audience: Some(Arc::from("api://orders")),
        scope: Some(Arc::from("read write")),
    };
    assert_eq!(
        form(&key, "h.p.s"),
        "grant_type=client_credentials\
         &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
         &client_assertion=h.p.s&audience=api%3A%2F%2Forders&scope=read%20write"
    );
    let key = TokenKey {
        grant: GrantType::TokenExchange,
        audience: None,
        scope: None,
        ..key
    };
    assert_eq!(
        form(&key, "h.p.s"),
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
         &subject_token=h.p.s&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
    );
}

#[test]
fn sanitising() {
    assert_eq!(
        sanitize("bad\r\nthing\u{1b}[31m", 100, None),
        "bad??thing?[31m"
    );
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmUifQ.c2lnbmF0dXJl";
    assert_eq!(
        sanitize(&format!("assertion {jwt} expired"), 100, None),
        "assertion [redacted] expired"
    );
    assert_eq!(
        sanitize("the secret-value here", 100, Some("secret-value")),
        "the [redacted] here"
    );
    let long = "x ".repeat(300);
    let s = sanitize(&long, 50, None);
    assert_eq!(s.len(), 53);
    assert!(s.ends_with("..."));
    assert!(is_token68("abc.DEF-1_~+/=="));
    for bad in ["", "a b", "a\r\nb", "a=b", "a\"b"] {
        assert!(!is_token68(bad), "{bad:?}");
    }
}
