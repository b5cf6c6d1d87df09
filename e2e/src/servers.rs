//! Real servers in the internet namespace (and small scripted ones anywhere): nginx with a
//! test CA, dnsmasq, a TCP echo server, a UDP sink, an `SO_ORIGINAL_DST` reporter — plus
//! [`probe`], a scripted client that reports errno names.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::netns::make_world_readable;
use crate::process::{Proc, as_uid, run_in, wait_for_tcp_listen, wait_for_udp_listen};
use crate::{Netns, PYTHON, Topology};

/// How long servers get to start listening (generous; only to avoid hangs).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

const ECHO_PY: &str = include_str!("scripts/echo.py");
const UDP_SINK_PY: &str = include_str!("scripts/udp_sink.py");
const ORIGDST_PY: &str = include_str!("scripts/origdst.py");
const PROBE_PY: &str = include_str!("scripts/probe.py");
const HTTP_SINK_PY: &str = include_str!("scripts/http_sink.py");
const RAW_HTTP_PY: &str = include_str!("scripts/raw_http.py");

/// Write one of the bundled python scripts into `ns`'s work dir (0644) and return its path.
pub fn script(ns: &Netns, name: &str) -> anyhow::Result<PathBuf> {
    let body = match name {
        "echo.py" => ECHO_PY,
        "udp_sink.py" => UDP_SINK_PY,
        "origdst.py" => ORIGDST_PY,
        "probe.py" => PROBE_PY,
        "http_sink.py" => HTTP_SINK_PY,
        "raw_http.py" => RAW_HTTP_PY,
        other => bail!("no bundled script {other}"),
    };
    let path = ns.workdir().join(name);
    if !path.exists() {
        std::fs::write(&path, body).with_context(|| format!("write {}", path.display()))?;
        make_world_readable(&path)?;
    }
    Ok(path)
}

fn spawn_python(
    ns: &Netns,
    uid: Option<u32>,
    script_name: &str,
    args: &[String],
) -> anyhow::Result<Proc> {
    let path = script(ns, script_name)?;
    let mut argv = vec![PYTHON.to_string(), path.display().to_string()];
    argv.extend(args.iter().cloned());
    match uid {
        Some(uid) => ns.spawn(as_uid(uid, uid, &argv)),
        None => ns.spawn(argv),
    }
}

/// A TCP echo server on `0.0.0.0:port` and `[::]:port`.
#[derive(Debug)]
pub struct TcpEcho {
    /// The server process (killed on drop).
    pub proc: Proc,
    /// The port.
    pub port: u16,
}

impl TcpEcho {
    /// Start in `ns` as root and wait until it listens.
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<TcpEcho> {
        let proc = spawn_python(ns, None, "echo.py", &[port.to_string()])?;
        wait_for_tcp_listen(ns, port, START_TIMEOUT)
            .with_context(|| format!("echo server: {}", proc.describe()))?;
        Ok(TcpEcho { proc, port })
    }
}

/// A UDP server on `0.0.0.0:port` and `[::]:port` that records and echoes every datagram.
#[derive(Debug)]
pub struct UdpSink {
    /// The server process (killed on drop).
    pub proc: Proc,
    /// The port.
    pub port: u16,
}

impl UdpSink {
    /// Start in `ns` as root and wait until it is bound.
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<UdpSink> {
        let proc = spawn_python(ns, None, "udp_sink.py", &[port.to_string()])?;
        wait_for_udp_listen(ns, port, START_TIMEOUT)
            .with_context(|| format!("udp sink: {}", proc.describe()))?;
        Ok(UdpSink { proc, port })
    }

    /// Every datagram received so far: `{"from": ip, "data": text}`.
    pub fn received(&self) -> Vec<serde_json::Value> {
        json_lines(&self.proc.stdout())
            .into_iter()
            .filter(|v| v.get("from").is_some())
            .collect()
    }
}

/// An HTTP/1 upstream (plain on one port, TLS with a [`TestPki`] certificate on another,
/// every address) that reports exactly what reached it — request lines, headers, whether
/// each body was complete — and WOULD switch protocols on any `Upgrade` (101, then the
/// HTTP/2 preface for h2c). See `scripts/http_sink.py`.
#[derive(Debug)]
pub struct HttpSink {
    /// The server process (killed on drop).
    pub proc: Proc,
}

impl HttpSink {
    /// Start in `ns` as root; `tls_port` 0 = plain only.
    pub fn start(
        ns: &Netns,
        plain_port: u16,
        tls_port: u16,
        pki: &TestPki,
    ) -> anyhow::Result<HttpSink> {
        let args = [
            plain_port.to_string(),
            tls_port.to_string(),
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
        ];
        let proc = spawn_python(ns, None, "http_sink.py", &args)?;
        wait_for_tcp_listen(ns, plain_port, START_TIMEOUT)
            .and_then(|()| {
                if tls_port == 0 {
                    Ok(())
                } else {
                    wait_for_tcp_listen(ns, tls_port, START_TIMEOUT)
                }
            })
            .with_context(|| format!("http sink: {}", proc.describe()))?;
        Ok(HttpSink { proc })
    }

    /// Every event so far (`request`, `body`, `switched`, `closed`; see the script).
    pub fn events(&self) -> Vec<serde_json::Value> {
        json_lines(&self.proc.stdout())
            .into_iter()
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    /// The `request` events: `{"conn", "port", "line", "headers": {lower-case name: value}}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|v| v["event"] == "request")
            .collect()
    }
}

/// Run the bundled raw HTTP client (`scripts/raw_http.py`) in `ns` as `uid` with `spec` (see
/// the script: host, port, via, tls, payload, chunks, shutdown); returns its JSON result
/// (`status`, `data`, `how`, `error`). Panics if it printed no JSON.
pub fn raw_http(ns: &Netns, uid: u32, spec: &serde_json::Value) -> serde_json::Value {
    let path = script(ns, "raw_http.py").unwrap_or_else(|e| panic!("raw_http script: {e:#}"));
    let argv = [
        PYTHON.to_string(),
        path.display().to_string(),
        spec.to_string(),
    ];
    let out = run_in(ns, as_uid(uid, uid, &argv));
    let line = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("raw_http printed no JSON ({e}): {out}"))
}

/// A TCP listener (0.0.0.0 and [::], run as `uid`) that reports each connection's
/// `SO_ORIGINAL_DST` — stands in for the sidecar's 15001 listener.
#[derive(Debug)]
pub struct OrigDstListener {
    /// The listener process (killed on drop).
    pub proc: Proc,
    /// The port.
    pub port: u16,
}

impl OrigDstListener {
    /// Start in `ns` as `uid`/`uid` (no capabilities) and wait until it listens.
    pub fn start(ns: &Netns, port: u16, uid: u32) -> anyhow::Result<OrigDstListener> {
        let proc = spawn_python(ns, Some(uid), "origdst.py", &[port.to_string()])?;
        wait_for_tcp_listen(ns, port, START_TIMEOUT)
            .with_context(|| format!("origdst listener: {}", proc.describe()))?;
        Ok(OrigDstListener { proc, port })
    }

    /// One record per accepted connection:
    /// `{"family": 4|6, "peer": ip, "orig_dst": "ip:port"|"[ip]:port"|null, "error"?: text}`.
    pub fn connections(&self) -> Vec<serde_json::Value> {
        json_lines(&self.proc.stdout())
            .into_iter()
            .filter(|v| v.get("family").is_some())
            .collect()
    }
}

/// The JSON result of [`probe`].
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The connection/exchange completed.
    pub ok: bool,
    /// Where it stopped: `socket`, `connect`, `send`, `recv` or `done`.
    pub stage: String,
    /// errno name (`ECONNREFUSED`, `EPERM`, `TIMEOUT`, …) when it failed.
    pub errno: Option<String>,
    /// What was received (text).
    pub recv: String,
    /// The raw JSON line and stderr, for messages.
    pub raw: String,
}

/// Run the bundled python probe in `ns` as `uid` (`None` = root):
/// `args` = `["tcp", host, port, timeout?, send?]`, `["udp", host, port, timeout?]` or
/// `["icmp", host, timeout?]`. Panics if the probe itself cannot run.
pub fn probe(ns: &Netns, uid: Option<u32>, args: &[&str]) -> ProbeResult {
    let path = script(ns, "probe.py").unwrap_or_else(|e| panic!("probe script: {e:#}"));
    let mut argv = vec![PYTHON.to_string(), path.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = match uid {
        Some(uid) => run_in(ns, as_uid(uid, uid, &argv)),
        None => run_in(ns, &argv),
    };
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("probe printed no JSON ({e}): {out}"));
    ProbeResult {
        ok: v["ok"].as_bool().unwrap_or(false),
        stage: v["stage"].as_str().unwrap_or_default().to_string(),
        errno: v["errno"].as_str().map(str::to_string),
        recv: v["recv"].as_str().unwrap_or_default().to_string(),
        raw: format!("{line} {}", out.stderr.trim()),
    }
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Test PKI made with `openssl`: a CA and one server certificate whose SANs are `names`.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// CA certificate (PEM) — give it to clients (`curl --cacert`).
    pub ca_cert: PathBuf,
    /// CA private key (PEM).
    pub ca_key: PathBuf,
    /// Server certificate (PEM), signed by the CA.
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
}

impl TestPki {
    /// Generate into `dir` (P-256 keys, SANs `DNS:<name>` for each of `names`).
    pub fn generate(dir: &Path, names: &[&str]) -> anyhow::Result<TestPki> {
        let pki = TestPki {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        let san = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        let p = |p: &Path| p.display().to_string();
        let steps: Vec<Vec<String>> = vec![
            vec![
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Palisade e2e test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &p(&pki.ca_key),
                "-out",
                &p(&pki.ca_cert),
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={}", names.first().copied().unwrap_or("localhost")),
                "-keyout",
                &p(&pki.server_key),
                "-out",
                &p(&csr),
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "x509",
                "-req",
                "-in",
                &p(&csr),
                "-CA",
                &p(&pki.ca_cert),
                "-CAkey",
                &p(&pki.ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &p(&ext),
                "-out",
                &p(&pki.server_cert),
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ];
        for args in steps {
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .context("run openssl (apt-get install -y openssl)")?;
            if !out.status.success() {
                bail!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for f in [&pki.ca_cert, &pki.ca_key, &pki.server_cert, &pki.server_key] {
            make_world_readable(f)?;
        }
        Ok(pki)
    }
}

/// Codes `/status/<code>` answers with.
pub const STATUS_CODES: &[u16] = &[200, 201, 204, 400, 401, 403, 404, 429, 500, 502, 503];

/// Default certificate names for [`Nginx::start`].
pub const DEFAULT_TLS_NAMES: &[&str] = &["allowed.test", "other.test", "denied.test"];

/// nginx in the internet namespace: HTTP on 80 and HTTPS (+h2) on 443, v4 and v6, every
/// address. Every request answers `200 "nginx host=<host> uri=<uri>\n"`, except
/// `/status/<code>` which answers that code. Requests are logged as JSON lines.
#[derive(Debug)]
pub struct Nginx {
    /// The master process (killed on drop; the namespace drop reaps the workers).
    pub proc: Proc,
    /// The test PKI (use `pki.ca_cert` with clients).
    pub pki: TestPki,
    /// Access log: one JSON object per request (see [`Nginx::requests`]).
    pub access_log: PathBuf,
    /// Error log.
    pub error_log: PathBuf,
}

impl Nginx {
    /// Start in `topo.internet` with a certificate for `names` (e.g. [`DEFAULT_TLS_NAMES`]).
    pub fn start(topo: &Topology, names: &[&str]) -> anyhow::Result<Nginx> {
        let ns = &topo.internet;
        let dir = ns.workdir().join("nginx");
        std::fs::create_dir_all(dir.join("tmp"))?;
        make_world_readable(&dir)?;
        let pki = TestPki::generate(&dir, names)?;
        let access_log = dir.join("access.log");
        let error_log = dir.join("error.log");
        let d = dir.display();
        let conf = format!(
            r#"user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format palisade escape=json '{{"remote_addr":"$remote_addr","server_addr":"$server_addr",'
        '"host":"$host","sni":"$ssl_server_name","scheme":"$scheme","protocol":"$server_protocol",'
        '"method":"$request_method","uri":"$request_uri","status":$status,'
        '"authorization":"$http_authorization","proxy_authorization":"$http_proxy_authorization",'
        '"user_agent":"$http_user_agent","x_palisade_test":"$http_x_palisade_test"}}';
    access_log {d}/access.log palisade;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 80 default_server;
        listen [::]:80 default_server;
        listen 443 ssl http2 default_server;
        listen [::]:443 ssl http2 default_server;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        default_type text/plain;
{status_locations}
        location / {{ return 200 "nginx host=$host uri=$request_uri\n"; }}
    }}
}}
"#,
            status_locations = STATUS_CODES
                .iter()
                .map(|c| format!(
                    "        location = /status/{c} {{ return {c} \"status {c}\\n\"; }}"
                ))
                .collect::<Vec<_>>()
                .join("\n"),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let proc = ns.spawn([
            "nginx".to_string(),
            "-e".into(),
            error_log.display().to_string(),
            "-c".into(),
            conf_path.display().to_string(),
        ])?;
        wait_for_tcp_listen(ns, 80, START_TIMEOUT)
            .and_then(|()| wait_for_tcp_listen(ns, 443, START_TIMEOUT))
            .with_context(|| {
                format!(
                    "nginx did not start: {}\n{}",
                    proc.describe(),
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                )
            })?;
        Ok(Nginx {
            proc,
            pki,
            access_log,
            error_log,
        })
    }

    /// Every request logged so far (JSON objects with remote_addr, server_addr, host, sni,
    /// scheme, protocol, method, uri, status, authorization, proxy_authorization, user_agent,
    /// x_palisade_test).
    ///
    /// nginx writes the access-log line only after the response has gone out, so a client
    /// can finish before its line exists. This first waits (at most 3 s) until the log has
    /// stopped growing for a moment; it never asserts anything about time.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let size = || std::fs::metadata(&self.access_log).map_or(0, |m| m.len());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut last = size();
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(150));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        json_lines(&std::fs::read_to_string(&self.access_log).unwrap_or_default())
    }

    /// The `Authorization` header of the most recent request for exactly `uri` (None if
    /// there was no such request or it had none).
    pub fn authorization_for(&self, uri: &str) -> Option<String> {
        self.requests()
            .iter()
            .rev()
            .find(|r| r["uri"] == uri)
            .and_then(|r| r["authorization"].as_str().map(str::to_owned))
    }
}

/// One DNS name → addresses mapping for [`Dnsmasq`].
#[derive(Debug, Clone)]
pub struct DnsRecord {
    /// The name (exact match), e.g. `allowed.test`.
    pub name: String,
    /// A/AAAA answers.
    pub addrs: Vec<IpAddr>,
}

impl DnsRecord {
    /// `name` → `addrs`.
    pub fn new(name: &str, addrs: &[IpAddr]) -> DnsRecord {
        DnsRecord {
            name: name.to_string(),
            addrs: addrs.to_vec(),
        }
    }
}

/// The default mapping: `allowed.test` → upstream 0, `other.test` → upstream 1,
/// `denied.test` → upstream 2 (each v4 + v6).
pub fn default_records(topo: &Topology) -> Vec<DnsRecord> {
    ["allowed.test", "other.test", "denied.test"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            DnsRecord::new(
                name,
                &[
                    IpAddr::V4(topo.upstream_v4(i)),
                    IpAddr::V6(topo.upstream_v6(i)),
                ],
            )
        })
        .collect()
}

/// dnsmasq in the internet namespace on upstream address 0 (v4 and v6) port 53, answering
/// exactly `records` (no upstream resolvers, no /etc/hosts); other names get REFUSED.
/// Also points the pod's resolver (`/etc/netns/<pod>/resolv.conf`) at it.
#[derive(Debug)]
pub struct Dnsmasq {
    /// The server process (killed on drop).
    pub proc: Proc,
    /// Query log (dnsmasq `--log-queries` format).
    pub log: PathBuf,
    /// The server's IPv4 address (what the pod's resolv.conf names).
    pub addr_v4: IpAddr,
    /// The server's IPv6 address.
    pub addr_v6: IpAddr,
}

impl Dnsmasq {
    /// Start and write the pod resolv.conf (`nameserver <upstream v4 0>`).
    pub fn start(topo: &Topology, records: &[DnsRecord]) -> anyhow::Result<Dnsmasq> {
        let ns = &topo.internet;
        let log = ns.workdir().join("dnsmasq.log");
        let addr_v4 = IpAddr::V4(topo.upstream_v4(0));
        let addr_v6 = IpAddr::V6(topo.upstream_v6(0));
        let mut argv: Vec<String> = vec![
            "dnsmasq".into(),
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            "--except-interface=lo".into(),
            format!("--listen-address={addr_v4}"),
            format!("--listen-address={addr_v6}"),
            "--port=53".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--pid-file=".into(),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
        ];
        for r in records {
            for a in &r.addrs {
                argv.push(format!("--host-record={},{a}", r.name));
            }
        }
        let proc = ns.spawn(&argv)?;
        wait_for_udp_listen(ns, 53, START_TIMEOUT)
            .and_then(|()| wait_for_tcp_listen(ns, 53, START_TIMEOUT))
            .with_context(|| format!("dnsmasq did not start: {}", proc.describe()))?;
        topo.pod
            .set_resolv_conf(&format!("nameserver {addr_v4}\n"))?;
        Ok(Dnsmasq {
            proc,
            log,
            addr_v4,
            addr_v6,
        })
    }

    /// The query log so far.
    pub fn queries(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
