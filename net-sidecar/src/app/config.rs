//! Command line and environment of `palisade-sidecar run`, parsed once into a typed [`Config`].
//!
//! Owns: every flag (each with a `PALISADE_*` environment variable), its default (named
//! constants here, or [`palisade_api::defaults`] for what every Palisade program must
//! agree on), and the checks that turn flags into a [`Config`].
//! Must never: read files or open sockets — that happens in the modules that use the values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use palisade_api::defaults;

use crate::dns::{DEFAULT_CACHE_CAPACITY, DEFAULT_RESOLV_CONF, DenyRcode};
use crate::proxy::Timeouts;

/// How long the sidecar waits for an upstream TCP connection to be established.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
/// A spliced or HTTP connection with no byte in either direction for this long is closed.
/// One hour, like Envoy's `tcp_proxy` default: long enough for quiet database or SSH
/// sessions, short enough that abandoned connections do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: &str = "1h";
/// How long a client gets to send a complete TLS ClientHello or HTTP request head.
pub const DEFAULT_PEEK_TIMEOUT: &str = "5s";
/// How long in-flight connections may finish after SIGTERM before the process exits.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "20s";
/// Per-attempt timeout of the policy DNS server towards its upstream nameservers.
pub const DEFAULT_DNS_UPSTREAM_TIMEOUT: &str = "2s";
/// Concurrent agent connections (transparent + explicit) before new ones are reset.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// Run the data plane: transparent egress, explicit proxy, policy DNS and admin listeners.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Set by the keeper on the data plane it starts: the roles of the inherited sockets
    /// (`LISTEN_FDS`). Not for operators.
    #[arg(long, hide = true, value_name = "ROLES")]
    pub data_plane_sockets: Option<String>,

    /// Set by the keeper: its pid (the data plane dies with it).
    #[arg(long, hide = true, value_name = "PID", requires = "data_plane_sockets")]
    pub data_plane_keeper: Option<u32>,

    /// Set by the keeper: how many data planes it restarted before this one.
    #[arg(
        long,
        hide = true,
        default_value_t = 0,
        requires = "data_plane_sockets"
    )]
    pub data_plane_restarts: u64,

    /// Policy file (YAML or JSON). Re-read every second; a broken new version is
    /// refused and the last good one stays in force. Exclusive with --gateway.
    #[arg(
        long,
        env = "PALISADE_POLICY",
        value_name = "FILE",
        conflicts_with = "gateway"
    )]
    pub policy: Option<PathBuf>,

    /// The Palisade gateway (https://host:port): the sidecar gets its identity, policy,
    /// credentials and relay requests from there. Exclusive with --policy.
    #[arg(long, env = "PALISADE_GATEWAY", value_name = "URL")]
    pub gateway: Option<String>,

    /// CA certificates (PEM) that verify the gateway's TLS certificate. Default: the webpki
    /// roots and the system bundle.
    #[arg(
        long,
        env = "PALISADE_GATEWAY_CA",
        value_name = "FILE",
        requires = "gateway"
    )]
    pub gateway_ca: Option<PathBuf>,

    /// LOCAL DRIVER / TESTS ONLY: allow a plaintext http:// gateway on a non-loopback
    /// address (a veth of a namespace on the same host). Never use it across a network.
    #[arg(
        long,
        env = "PALISADE_GATEWAY_INSECURE_PLAINTEXT",
        requires = "gateway"
    )]
    pub gateway_insecure_plaintext: bool,

    /// This sandbox's id (`sbx-…`), as the gateway registered it.
    #[arg(
        long,
        env = "PALISADE_SANDBOX_ID",
        value_name = "ID",
        requires = "gateway"
    )]
    pub sandbox_id: Option<String>,

    /// One-time bootstrap token file (`pbt_…`, written by the local driver). Read once at
    /// start; the token cannot be reused.
    #[arg(
        long,
        env = "PALISADE_TOKEN_FILE",
        value_name = "PATH",
        requires = "gateway",
        conflicts_with = "k8s_sa_token_file"
    )]
    pub token_file: Option<PathBuf>,

    /// Projected Kubernetes ServiceAccount token (sidecar-only mount), re-read on every
    /// bootstrap.
    #[arg(
        long,
        env = "PALISADE_K8S_SA_TOKEN_FILE",
        value_name = "PATH",
        requires = "gateway"
    )]
    pub k8s_sa_token_file: Option<PathBuf>,

    /// The agent shim's session socket; relay streams from the gateway are spliced to it.
    #[arg(long, env = "PALISADE_SHIM_SOCKET", value_name = "PATH", default_value = DEFAULT_SHIM_SOCKET)]
    pub shim_socket: PathBuf,

    /// Transparent egress port (the capture rules redirect agent TCP here); bound on
    /// 0.0.0.0 and [::].
    #[arg(long, env = "PALISADE_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// Explicit proxy port (CONNECT and absolute-form HTTP); bound on 127.0.0.1 and [::1].
    #[arg(long, env = "PALISADE_EXPLICIT_PROXY_PORT", default_value_t = defaults::EXPLICIT_PROXY_PORT)]
    pub explicit_proxy_port: u16,

    /// Policy DNS port (udp + tcp; the capture rules redirect agent port-53 traffic here);
    /// bound on 127.0.0.1 and [::1].
    #[arg(long, env = "PALISADE_DNS_PORT", default_value_t = defaults::DNS_PORT)]
    pub dns_port: u16,

    /// Admin listener addresses (/live, /ready, /metrics), comma-separated. Reachable by
    /// the kubelet and Prometheus on the pod IP; the fence keeps the agent off it.
    #[arg(
        long,
        env = "PALISADE_ADMIN_ADDR",
        value_delimiter = ',',
        default_values_t = default_admin_addrs()
    )]
    pub admin_addr: Vec<SocketAddr>,

    /// Upstream nameservers (ip:port, comma-separated) for the policy DNS server and the
    /// anti-spoofing resolver. Default: the `nameserver` lines of --resolv-conf.
    #[arg(long, env = "PALISADE_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,

    /// The sidecar's own resolv.conf (not the agent's), read when --dns-upstream is not given.
    #[arg(long, env = "PALISADE_RESOLV_CONF", default_value = DEFAULT_RESOLV_CONF)]
    pub resolv_conf: PathBuf,

    /// DNS response code for names the policy does not allow.
    #[arg(long, env = "PALISADE_DNS_DENY_RCODE", value_enum, default_value_t = DenyRcodeArg::Refused)]
    pub dns_deny_rcode: DenyRcodeArg,

    /// Per-attempt timeout towards an upstream nameserver (e.g. 2s, 500ms).
    #[arg(long, env = "PALISADE_DNS_UPSTREAM_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_DNS_UPSTREAM_TIMEOUT)]
    pub dns_upstream_timeout: Duration,

    /// Timeout for establishing an upstream TCP connection.
    #[arg(long, env = "PALISADE_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_CONNECT_TIMEOUT)]
    pub connect_timeout: Duration,

    /// Close a connection after this long without a byte in either direction.
    #[arg(long, env = "PALISADE_IDLE_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_IDLE_TIMEOUT)]
    pub idle_timeout: Duration,

    /// Time a client gets to send its TLS ClientHello or HTTP request head (slowloris guard).
    #[arg(long, env = "PALISADE_PEEK_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_PEEK_TIMEOUT)]
    pub peek_timeout: Duration,

    /// Concurrent agent connections; over the limit new connections are reset and counted.
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// After SIGTERM/SIGINT: stop accepting, report not-ready, and let in-flight
    /// connections finish for at most this long.
    #[arg(long, env = "PALISADE_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_DRAIN_TIMEOUT)]
    pub drain_timeout: Duration,

    /// Log format on stderr.
    #[arg(long, env = "PALISADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// File written (atomically) once every listener is bound and a policy is loaded, and
    /// removed when draining starts. The agent shim waits for it.
    #[arg(long, env = "PALISADE_READY_FILE", value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Directory shared with the agent container (a memory emptyDir): the sandbox CA is
    /// published here as `ca.pem` and `ca-bundle.pem` (system roots + sandbox CA).
    #[arg(long, env = "PALISADE_SHARED_DIR", default_value = DEFAULT_SHARED_DIR)]
    pub shared_dir: PathBuf,

    /// Lifetime of each sandbox CA generation; it is replaced at 2/3 of it.
    #[arg(long, env = "PALISADE_CA_VALIDITY", value_parser = parse_duration, default_value = crate::tls::DEFAULT_CA_VALIDITY)]
    pub ca_validity: Duration,

    /// Extra CA certificates (PEM) trusted when verifying upstream servers of inspected
    /// connections, in addition to the webpki roots and the system bundle.
    #[arg(long, env = "PALISADE_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// The SPIFFE Workload API socket (a path or `unix:` URI) that `tokenGrant` credentials
    /// fetch JWT-SVIDs from; mount it into the sidecar only. Default: `SPIFFE_ENDPOINT_SOCKET`.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    pub spiffe_endpoint_socket: Option<String>,

    /// Largest request head (HTTP/1) / header list (HTTP/2) accepted on inspected
    /// connections; larger ones get 431.
    #[arg(long, env = "PALISADE_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES,
          value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub max_header_bytes: u32,
}

/// Default of `--shim-socket`.
pub const DEFAULT_SHIM_SOCKET: &str = defaults::SHIM_SOCKET;
/// Default of `--shared-dir`.
pub const DEFAULT_SHARED_DIR: &str = defaults::STATE_DIR;
/// Default of `--max-header-bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 32 * 1024;

/// `--dns-deny-rcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DenyRcodeArg {
    Refused,
    Nxdomain,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn default_admin_addrs() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), defaults::ADMIN_PORT),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), defaults::ADMIN_PORT),
    ]
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the policy (and, with a gateway, identity and credentials) come from.
    pub origin: Origin,
    pub outbound: Vec<SocketAddr>,
    pub explicit: Vec<SocketAddr>,
    pub dns_listen: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
    /// Empty: read them from `resolv_conf`.
    pub dns_upstreams: Vec<SocketAddr>,
    pub resolv_conf: PathBuf,
    pub dns_deny_rcode: DenyRcode,
    pub dns_upstream_timeout: Duration,
    pub dns_cache_capacity: usize,
    pub timeouts: Timeouts,
    pub max_connections: u32,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub ready_file: Option<PathBuf>,
    pub tls: crate::tls::TlsSettings,
    /// The SPIFFE Workload API for token grants (`None`: grants fail closed, saying so).
    pub spiffe_endpoint_socket: Option<String>,
    pub max_header_bytes: u32,
}

/// `--policy FILE` or `--gateway URL …`.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Gateway(crate::identity::GatewaySettings),
}

impl Config {
    /// Check the flags and derive listener addresses.
    pub fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        for (flag, d) in [
            ("--connect-timeout", args.connect_timeout),
            ("--idle-timeout", args.idle_timeout),
            ("--peek-timeout", args.peek_timeout),
            ("--dns-upstream-timeout", args.dns_upstream_timeout),
            ("--ca-validity", args.ca_validity),
        ] {
            anyhow::ensure!(!d.is_zero(), "{flag} must be greater than zero (e.g. 5s)");
        }
        anyhow::ensure!(
            args.ca_validity >= std::time::Duration::from_secs(600),
            "--ca-validity must be at least 10m (the CA is replaced at 2/3 of it and checked every minute); e.g. 24h"
        );
        anyhow::ensure!(
            !args.admin_addr.is_empty(),
            "--admin-addr needs at least one address (the kubelet probes /ready there)"
        );
        let any = |port| {
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ]
        };
        let loopback = |port| {
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            ]
        };
        let origin = match (args.policy, args.gateway) {
            (Some(path), None) => Origin::File(path),
            (None, Some(url)) => Origin::Gateway(crate::identity::GatewaySettings::from_flags(
                crate::identity::GatewayFlags {
                    url,
                    ca: args.gateway_ca,
                    insecure_plaintext: args.gateway_insecure_plaintext,
                    sandbox_id: args.sandbox_id,
                    token_file: args.token_file,
                    k8s_sa_token_file: args.k8s_sa_token_file,
                    shim_socket: args.shim_socket,
                },
            )?),
            (Some(_), Some(_)) => anyhow::bail!(
                "--policy and --gateway are mutually exclusive; pass --policy FILE for a \
                 standalone sidecar or --gateway URL to get the policy from the gateway"
            ),
            (None, None) => anyhow::bail!(
                "no policy: pass --policy FILE (standalone) or --gateway URL --sandbox-id ID \
                 --token-file PATH (managed by a gateway)"
            ),
        };
        Ok(Self {
            origin,
            outbound: any(args.outbound_port),
            explicit: loopback(args.explicit_proxy_port),
            dns_listen: loopback(args.dns_port),
            admin: args.admin_addr,
            dns_upstreams: args.dns_upstream,
            resolv_conf: args.resolv_conf,
            dns_deny_rcode: match args.dns_deny_rcode {
                DenyRcodeArg::Refused => DenyRcode::Refused,
                DenyRcodeArg::Nxdomain => DenyRcode::NxDomain,
            },
            dns_upstream_timeout: args.dns_upstream_timeout,
            dns_cache_capacity: DEFAULT_CACHE_CAPACITY,
            timeouts: Timeouts {
                connect: args.connect_timeout,
                idle: args.idle_timeout,
                peek: args.peek_timeout,
            },
            max_connections: args.max_connections,
            drain_timeout: args.drain_timeout,
            log_format: args.log_format,
            ready_file: args.ready_file,
            tls: crate::tls::TlsSettings {
                shared_dir: args.shared_dir,
                ca_validity: args.ca_validity,
                upstream_ca: args.upstream_ca,
            },
            spiffe_endpoint_socket: args.spiffe_endpoint_socket.filter(|s| !s.is_empty()),
            max_header_bytes: args.max_header_bytes,
        })
    }
}

/// Parse `500ms`, `5s`, `2m`, `1h` (one unit; a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 5s, 2m or 1h"))?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "`{s}` has unknown unit `{unit}`; use ms, s, m or h"
            ));
        }
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    fn parse(argv: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::from_args(cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn defaults_match_the_documented_ports_and_timeouts() {
        let c = parse(&["--policy", "/p.yaml"]).unwrap();
        assert!(matches!(&c.origin, Origin::File(p) if p == &PathBuf::from("/p.yaml")));
        assert_eq!(
            c.outbound,
            vec![
                "0.0.0.0:15001".parse().unwrap(),
                "[::]:15001".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(
            c.explicit,
            vec![
                "127.0.0.1:15080".parse().unwrap(),
                "[::1]:15080".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(
            c.dns_listen,
            vec![
                "127.0.0.1:15053".parse().unwrap(),
                "[::1]:15053".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(
            c.admin,
            vec![
                "0.0.0.0:15020".parse().unwrap(),
                "[::]:15020".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(c.timeouts.connect, Duration::from_secs(5));
        assert_eq!(c.timeouts.idle, Duration::from_secs(3600));
        assert_eq!(c.timeouts.peek, Duration::from_secs(5));
        assert_eq!(c.drain_timeout, Duration::from_secs(20));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(matches!(c.dns_deny_rcode, DenyRcode::Refused));
        assert!(c.dns_upstreams.is_empty());
        assert_eq!(c.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(c.ready_file, None);
    }

    #[test]
    fn flags_override_defaults() {
        let c = parse(&[
            "--policy=/p",
            "--outbound-port=1",
            "--explicit-proxy-port=2",
            "--dns-port=3",
            "--admin-addr=127.0.0.1:4,[::1]:5",
            "--dns-upstream=198.18.0.53:53",
            "--dns-deny-rcode=nxdomain",
            "--connect-timeout=250ms",
            "--idle-timeout=2m",
            "--peek-timeout=1s",
            "--max-connections=3",
            "--drain-timeout=0s",
            "--log-format=json",
            "--ready-file=/run/ready",
        ])
        .unwrap();
        assert_eq!(c.outbound[0].port(), 1);
        assert_eq!(c.explicit[1].port(), 2);
        assert_eq!(c.dns_listen[0].port(), 3);
        assert_eq!(c.admin.len(), 2);
        assert_eq!(
            c.dns_upstreams,
            vec!["198.18.0.53:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(matches!(c.dns_deny_rcode, DenyRcode::NxDomain));
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.idle, Duration::from_secs(120));
        assert_eq!(c.max_connections, 3);
        assert_eq!(c.drain_timeout, Duration::ZERO);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.ready_file, Some(PathBuf::from("/run/ready")));
    }

    #[test]
    fn bad_values_are_refused_with_a_hint() {
        assert!(parse(&[]).unwrap_err().contains("--policy FILE"));
        assert!(
            parse(&["--policy=/p", "--connect-timeout=0s"])
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(
            parse(&["--policy=/p", "--idle-timeout=soon"])
                .unwrap_err()
                .contains("500ms")
        );
        assert!(parse(&["--policy=/p", "--max-connections=0"]).is_err());
        assert!(parse(&["--policy=/p", "--log-format=xml"]).is_err());
    }
}
