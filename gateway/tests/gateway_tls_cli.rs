//! TLS on the API port, and the `palisade` binary's gateway-facing commands.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use bytes::Bytes;
use http::Method;
use palisade_gateway::client::GatewayClient;
use support::*;

fn palisade(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env_remove("PALISADE_LISTEN");
    cmd.output().unwrap()
}

#[tokio::test]
async fn tls_listener_serves_h1_with_a_trusted_ca_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let gw = Gw::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ])
    .await;
    assert!(gw.running.state.config.issuer.starts_with("https://"));
    let port = gw.running.api_addr.port();
    let tls =
        GatewayClient::new(&format!("https://localhost:{port}"), None, Some(&cert_path)).unwrap();
    let a = tls
        .send(Method::GET, "/.well-known/jwks.json", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let plain = gw.client(None);
    assert!(
        plain
            .send(Method::GET, "/.well-known/jwks.json", None, Bytes::new())
            .await
            .is_err()
    );
    gw.running.shutdown().await;
}

#[test]
fn serve_refuses_to_start_fail_open() {
    let out = palisade(&["gateway", "serve", "--insecure-plaintext"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin-token-file") && err.contains("--insecure-allow-anonymous"),
        "{err}"
    );
    let out = palisade(&["gateway", "serve", "--insecure-allow-anonymous"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
}

#[test]
fn print_config_merges_file_env_flags_and_redacts_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_admin_token(dir.path());
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:1111\nadmin-listen: 127.0.0.1:2222\ninsecure-plaintext: true\nadmin-token-file: {}\ntoken-ttl: 5m\n",
            token.display()
        ),
    )
    .unwrap();
    let out = palisade(
        &[
            "gateway",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--token-ttl",
            "7m",
        ],
        &[
            ("PALISADE_ADMIN_LISTEN", "127.0.0.1:3333"),
            ("PALISADE_TOKEN_TTL", "6m"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("listen: 127.0.0.1:1111"), "file: {text}");
    assert!(
        text.contains("admin-listen: 127.0.0.1:3333"),
        "env beats file: {text}"
    );
    assert!(text.contains("token-ttl: 420s"), "flag beats env: {text}");
    assert!(text.contains("admin-token: <redacted, sha256:"), "{text}");
    assert!(!text.contains(ADMIN_TOKEN), "secret printed: {text}");
}

#[tokio::test]
async fn keys_sandbox_and_token_cli_against_a_live_gateway() {
    let gw = Gw::start(&[]).await;
    let url = format!("http://{}", gw.running.api_addr);
    let token_file = dir_token(&gw);
    let env = [
        ("PALISADE_GATEWAY", url.as_str()),
        ("PALISADE_TOKEN_FILE", token_file.as_str()),
    ];
    let run = |args: Vec<&str>| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            palisade(&args, &env)
        })
    };
    let out = run(vec!["keys", "rotate"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);

    let out = run(vec!["sandbox", "create", "cli-demo", "--label", "team=a"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["sandbox"]["id"].as_str().unwrap().to_owned();
    let out = run(vec!["sandbox", "list"]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    // token inspect shows claims and a fingerprint, never the token.
    let bootstrap = created["bootstrapToken"].as_str().unwrap();
    let jwt = post(&gw.client(Some(bootstrap)), "/v1/token:issue")
        .await
        .json()
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let jwt_file = gw.dir.path().join("jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let out = run(vec!["token", "inspect", jwt_file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&jwt), "raw token printed");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["claims"]["sandbox_id"], id.as_str());
    assert!(
        report["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(report["kid"], report["header"]["kid"]);

    let out = run(vec!["sandbox", "delete", &id]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = run(vec!["sandbox", "get", &id]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );
    gw.running.shutdown().await;
}

fn dir_token(gw: &Gw) -> String {
    gw.dir.path().join("admin-token").display().to_string()
}

#[tokio::test]
async fn policy_set_and_get_cli() {
    let gw = Gw::start(&[]).await;
    let url = format!("http://{}", gw.running.api_addr);
    let token_file = dir_token(&gw);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/examples/deny-all.yaml"
    );
    let bad = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/testdata/invalid/host-tld-wildcard.yaml"
    );
    let run = move |args: Vec<String>| {
        let (url, token_file) = (url.clone(), token_file.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            palisade(
                &args,
                &[
                    ("PALISADE_GATEWAY", &url),
                    ("PALISADE_TOKEN_FILE", &token_file),
                ],
            )
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let out = run(s(&["policy", "set", example])).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["name"], "deny-all");
    let out = run(s(&["policy", "get", "deny-all"])).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["revision"], stored["revision"]);
    let out = run(s(&["policy", "set", bad])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.egress[0].hosts[1]"),
        "{out:?}"
    );
    let out = run(s(&["policy", "get", "missing"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    gw.running.shutdown().await;
}

#[tokio::test]
async fn secret_allowances_and_policy_namespaces_from_the_cli() {
    const VALUE: &str = "ghp_cli-allowance-value-5e2b9c";
    let gw = Gw::start(&[]).await;
    let url = format!("http://{}", gw.running.api_addr);
    let token_file = dir_token(&gw);
    let files = tempfile::tempdir().unwrap();
    let value_file = files.path().join("token");
    std::fs::write(&value_file, format!("{VALUE}\n")).unwrap();
    let value_arg = format!("token={}", value_file.display());
    let policy_file = files.path().join("web.yaml");
    std::fs::write(
        &policy_file,
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: web}\nspec:\n  \
         credentials:\n    gh:\n      from: {secret: {name: github, key: token}}\n  egress:\n    \
         - name: api\n      hosts: [api.github.com]\n      ports: [443]\n      credential: gh\n",
    )
    .unwrap();
    let env_policy = files.path().join("env.yaml");
    std::fs::write(
        &env_policy,
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata: {name: envy}\nspec:\n  \
         credentials:\n    gh:\n      from: {env: HOME}\n  egress:\n    - name: api\n      \
         hosts: [api.github.com]\n      ports: [443]\n      credential: gh\n",
    )
    .unwrap();
    let run = move |args: Vec<String>| {
        let (url, token_file) = (url.clone(), token_file.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = palisade(
                &args,
                &[
                    ("PALISADE_GATEWAY", &url),
                    ("PALISADE_TOKEN_FILE", &token_file),
                ],
            );
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!all.contains(VALUE), "the CLI printed the value: {all}");
            (out.status.code(), all)
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let policy_arg = policy_file.display().to_string();

    // No allowance: stored, with a note that no policy can use it.
    let (code, out) = run(s(&["secret", "set", "github", "--from-file", &value_arg]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: no policy can use secret github"),
        "{out}"
    );
    let (code, out) = run(s(&["policy", "set", &policy_arg, "--namespace", "team"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("secret_not_allowed") && out.contains("`github`"),
        "{out}"
    );
    // A bad allowance is refused before anything is sent, naming the flag.
    let (code, out) = run(s(&[
        "secret",
        "set",
        "github",
        "--from-file",
        &value_arg,
        "--allow-host",
        "*.com",
    ]))
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--allow-host") && out.contains("top-level"),
        "{out}"
    );
    // Allowed for namespace `team` on api.github.com:443.
    let (code, out) = run(s(&[
        "secret",
        "set",
        "github",
        "--from-file",
        &value_arg,
        "--allow-namespace",
        "team",
        "--allow-host",
        "api.github.com:443",
    ]))
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("allowed namespaces: team"), "{out}");
    assert!(
        out.contains("allowed hosts:      api.github.com:443"),
        "{out}"
    );
    let (code, out) = run(s(&["secret", "list"])).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(out.contains("allowed namespaces: team"), "{out}");
    let (code, out) = run(s(&["policy", "set", &policy_arg, "--namespace", "team"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let stored: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stored["namespace"], "team");
    // Cluster-wide is another policy: not allowed by the secret.
    let (code, out) = run(s(&["policy", "set", &policy_arg])).await.unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("policy_namespace_conflict"), "{out}");
    let (code, out) = run(s(&["policy", "set", &policy_arg, "--namespace", "Team!"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--namespace `Team!`"), "{out}");
    // file/env sources: refused by the CLI before they reach the gateway.
    let (code, out) = run(s(&["policy", "set", &env_policy.display().to_string()]))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("spec.credentials.gh.from.env") && out.contains("--policy"),
        "{out}"
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_configured() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = write("tls.crt", server.cert.pem());
    let key_path = write("tls.key", server.signing_key.serialize_pem());
    // A client CA and one client certificate it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = write("client-ca.crt", ca_cert.pem());
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let gw = Gw::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--tls-client-ca",
        ca_path.to_str().unwrap(),
    ])
    .await;

    let connect = |with_cert: bool| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            let key =
                rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).unwrap();
            builder
                .with_client_auth_cert(vec![client_cert.der().clone()], key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        let addr = gw.running.api_addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let req = http::Request::get("/openapi.json")
                .header("host", "localhost")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            sender
                .send_request(req)
                .await
                .map(|r| r.status())
                .map_err(std::io::Error::other)
        }
    };
    assert_eq!(connect(true).await.unwrap(), 200);
    assert!(
        connect(false).await.is_err(),
        "no client certificate must be refused"
    );
    gw.running.shutdown().await;
}

#[test]
fn token_inspect_refuses_non_jwts_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t");
    std::fs::write(&f, "pbt_this-is-a-secret-bootstrap-token").unwrap();
    let out = palisade(&["token", "inspect", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("not a JWT"), "{all}");
    assert!(!all.contains("secret-bootstrap"), "{all}");
}
