//! Connection and request decisions: policy match, protocol requirements, anti-spoofing and
//! address checks combined into one value — a [`Plan`] (dial these addresses, counted under
//! this rule, carried with this [`Handling`]) or a [`Refusal`] — from which metrics, the
//! audit event and the 403 body derive.
//!
//! Owns: what each listener asks ([`Decider::decide_name`] / [`Decider::decide_opaque`] on
//! the first bytes, [`decide_tunnel`] on a CONNECT tunnel's first bytes,
//! [`Decider::decide_request`] per HTTP request on a [`Target`]); how a connection is
//! carried ([`Handling`], decided here once: the listeners and the HTTP path dispatch on
//! it); the order of checks and how `mode: audit` applies to them: every policy denial
//! (no rule, port, protocol, destination mismatch, private address outside `allowedCidrs`)
//! becomes `audit_deny` and the connection proceeds, but addresses that are never dialable
//! ([`super::resolve::never_dialable`]: loopback, link-local/metadata, unspecified,
//! multicast) stay refused in audit mode too.
//! Must never: dial anything but the verified original destination (transparent) or the
//! sidecar's own resolution of the name (explicit proxy).

use std::net::SocketAddr;
use std::sync::Arc;

use palisade_policy::model::Mode;
use palisade_policy::{CompiledPolicy, Decision, DenyReason, RuleId};

pub use super::refusal::Refusal;
use super::resolve::{Resolve, canonical, destination_verified, never_dialable};
use crate::dns::AnswerCache;

/// What the first bytes said; a bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tls,
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Where the connection goes if allowed.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// Transparent capture: the agent's original destination, dialled only if verified.
    Original(SocketAddr),
    /// Explicit proxy: the sidecar resolves the name and dials that, on this port.
    ByName(u16),
}

/// How an allowed connection (or request) is carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    /// The bytes are relayed as they are (opaque TCP, passthrough TLS).
    Splice,
    /// The agent's TLS for `sni` is terminated with the sandbox CA (the rule needs L7:
    /// HTTP rules, a credential, or `tls: inspect`); every request inside is decided, and
    /// goes upstream over a verified TLS connection for `sni`.
    Inspect { sni: String },
    /// Plain HTTP: every request is decided, and goes upstream in clear text.
    Http,
}

/// A connection (or request) that may proceed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `None` when allowed only because of audit mode.
    pub rule: Option<RuleId>,
    /// Rule name for metrics/audit, `none` without a rule.
    pub rule_label: String,
    /// In audit mode: the first denial enforcement would have made.
    pub audit_deny: Option<DenyReason>,
    /// Addresses to try, in order (never empty).
    pub dial: Vec<SocketAddr>,
    /// How it is carried.
    pub handling: Handling,
}

/// What an inspected connection was decided on.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub sni: String,
    pub route: Route,
    pub port: u16,
}

/// Where the requests of one HTTP connection may go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Transparent capture: every request goes to the original destination, and its Host
    /// must be allowed and resolve there.
    Original(SocketAddr),
    /// Plain HTTP inside a CONNECT tunnel: every request must be for the tunnel's host.
    Tunnel { host: String, port: u16 },
    /// Explicit proxy, absolute-form (`GET http://host/path`): each request names its target.
    Absolute,
    /// Inside TLS the sidecar terminated: every request must be for the SNI (else 421), is
    /// decided on it, gets the rule's credential, and goes upstream over verified TLS.
    Inspected(Inspected),
}

impl Plan {
    /// Whether the deciding rule needs TLS termination (HTTP rules, a credential, or
    /// `tls: inspect`).
    pub fn inspect(&self, policy: &CompiledPolicy) -> bool {
        self.rule.is_some_and(|id| policy.rule(id).needs_l7())
    }

    /// Carried as `protocol` to `name` says: HTTP request by request; TLS terminated when
    /// the rule needs L7, spliced otherwise; anything else (opaque TCP, or not known yet:
    /// CONNECT before the tunnel's first bytes) spliced.
    fn carried_as(self, policy: &CompiledPolicy, protocol: Option<Protocol>, name: &str) -> Self {
        let handling = match protocol {
            Some(Protocol::Http) => Handling::Http,
            Some(Protocol::Tls) if self.inspect(policy) => Handling::Inspect {
                sni: name.to_owned(),
            },
            Some(Protocol::Tls | Protocol::Tcp) | None => Handling::Splice,
        };
        Self { handling, ..self }
    }

    /// `allow` or `audit_deny`.
    pub fn decision_label(&self) -> &'static str {
        if self.audit_deny.is_some() {
            "audit_deny"
        } else {
            "allow"
        }
    }

    /// A denial found after the plan was made (a tunnel's SNI, an HTTP rule): in audit mode
    /// it is remembered and the plan stands; in enforce mode it refuses.
    pub fn deny_late(
        &mut self,
        policy: &CompiledPolicy,
        reason: DenyReason,
    ) -> Result<(), Refusal> {
        if policy.mode() == Mode::Audit {
            self.audit_deny.get_or_insert(reason);
            Ok(())
        } else {
            Err(Refusal::Denied {
                reason,
                rule_label: self.rule_label.clone(),
            })
        }
    }
}

/// The per-connection decision maker: policy-independent state (the policy generation is
/// passed per call, so each connection sees the newest one).
#[derive(Debug, Clone)]
pub struct Decider {
    resolver: Arc<dyn Resolve>,
    cache: Arc<AnswerCache>,
    /// Loopback test harness only: lets rules dial 127.0.0.1 so the proxy can be tested
    /// without network namespaces. Does not exist outside `cargo test` builds.
    #[cfg(test)]
    pub loopback_upstreams: bool,
}

/// Collects denials: enforce mode returns the first, audit mode remembers it and goes on.
struct Judge {
    audit: bool,
    first: Option<DenyReason>,
}

impl Judge {
    fn new(policy: &CompiledPolicy) -> Self {
        Self {
            audit: policy.mode() == Mode::Audit,
            first: None,
        }
    }

    fn deny(&mut self, reason: DenyReason, rule_label: &str) -> Result<(), Refusal> {
        if self.audit {
            self.first.get_or_insert(reason);
            Ok(())
        } else {
            Err(Refusal::Denied {
                reason,
                rule_label: rule_label.to_owned(),
            })
        }
    }
}

/// Protocol requirements of a matched rule. TLS with an SNI to a rule that needs L7 is fine
/// here: it is terminated ([`Handling::Inspect`]). Plain HTTP to a rule with a credential
/// is refused: a credential is never sent in clear text.
fn protocol_requirement(
    policy: &CompiledPolicy,
    rule: RuleId,
    protocol: Protocol,
    has_name: bool,
) -> Option<DenyReason> {
    let rule = policy.rule(rule);
    match protocol {
        Protocol::Tls if !has_name => {
            (!rule.opaque_tcp()).then_some(DenyReason::OpaqueTcpNotAllowed)
        }
        Protocol::Tls => None,
        // Plain HTTP: HTTP rules are checked per request; credentials need TLS upstream.
        Protocol::Http => rule
            .credential()
            .is_some()
            .then_some(DenyReason::NoMatchingHttpRule),
        Protocol::Tcp => (!rule.opaque_tcp()).then_some(DenyReason::OpaqueTcpNotAllowed),
    }
}

/// A CONNECT tunnel's first bytes, after [`Decider::decide_name`] allowed its authority
/// (`host`): plain HTTP is decided request by request ([`Target::Tunnel`]); TLS must carry
/// `host` as its SNI (else `destination_mismatch`) and, like opaque bytes, suit the rule's
/// protocol requirements — denials found here are late ([`Plan::deny_late`]: remembered in
/// audit mode). The handling follows from what the bytes are.
pub fn decide_tunnel(
    policy: &CompiledPolicy,
    mut plan: Plan,
    host: &str,
    protocol: Protocol,
    sni: Option<&str>,
) -> Result<Plan, Refusal> {
    if protocol == Protocol::Http {
        plan.handling = Handling::Http;
        return Ok(plan);
    }
    let late = match (sni, plan.rule) {
        (Some(sni), _) if sni != host => Some(DenyReason::DestinationMismatch),
        (_, Some(rule)) => protocol_requirement(policy, rule, protocol, sni.is_some()),
        (_, None) => None,
    };
    if let Some(reason) = late {
        plan.deny_late(policy, reason)?;
    }
    Ok(match sni {
        Some(sni) => plan.carried_as(policy, Some(protocol), sni),
        None => Plan {
            handling: Handling::Splice,
            ..plan
        },
    })
}

impl Decider {
    pub fn new(resolver: Arc<dyn Resolve>, cache: Arc<AnswerCache>) -> Self {
        Self {
            resolver,
            cache,
            #[cfg(test)]
            loopback_upstreams: false,
        }
    }

    /// Whether the rule may dial `ip` (see [`palisade_policy::compiled::CompiledRule::allows_address`]).
    fn rule_allows(&self, policy: &CompiledPolicy, rule: RuleId, ip: std::net::IpAddr) -> bool {
        #[cfg(test)]
        if self.loopback_upstreams && ip.is_loopback() {
            return true;
        }
        policy.rule(rule).allows_address(ip)
    }

    /// Audit mode without a rule (or with a rule that forbids the address): everything but
    /// the never-dialable ranges.
    fn fallback_allows(&self, ip: std::net::IpAddr) -> bool {
        #[cfg(test)]
        if self.loopback_upstreams && ip.is_loopback() {
            return true;
        }
        !never_dialable(ip)
    }

    /// Decide a connection to a named host (TLS SNI, HTTP Host, CONNECT authority).
    /// `protocol` is `None` when not known yet (CONNECT, before the tunnel's first bytes).
    pub async fn decide_name(
        &self,
        policy: &CompiledPolicy,
        host: &str,
        route: Route,
        protocol: Option<Protocol>,
    ) -> Result<Plan, Refusal> {
        let name = host;
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let host = host.as_str();
        let port = match route {
            Route::Original(dst) => dst.port(),
            Route::ByName(port) => port,
        };
        let mut judge = Judge::new(policy);
        let (decision, id) = policy.match_connection(host, port);
        let rule_label = decision.rule_label().to_owned();
        let rule = match (decision, id) {
            (Decision::Allow { .. }, Some(id)) => Some(id),
            (Decision::Deny { reason, .. }, _) => {
                judge.deny(reason, &rule_label)?;
                None
            }
            (Decision::Allow { .. }, None) => {
                judge.deny(DenyReason::NoMatchingRule, &rule_label)?;
                None
            }
        };
        if let (Some(id), Some(protocol)) = (rule, protocol)
            && let Some(reason) = protocol_requirement(policy, id, protocol, true)
        {
            judge.deny(reason, &rule_label)?;
        }

        let candidates: Vec<SocketAddr> = match route {
            Route::Original(dst) => {
                if !destination_verified(&*self.resolver, &self.cache, host, dst.ip()).await {
                    judge.deny(DenyReason::DestinationMismatch, &rule_label)?;
                }
                vec![SocketAddr::new(canonical(dst.ip()), dst.port())]
            }
            Route::ByName(port) => {
                let addrs = match self.resolver.lookup(host).await {
                    Ok(addrs) => addrs,
                    Err(err) => {
                        tracing::debug!(host, error = %err, "cannot resolve allowed host");
                        Vec::new()
                    }
                };
                if addrs.is_empty() {
                    return Err(Refusal::Unresolvable);
                }
                addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(canonical(ip), port))
                    .collect()
            }
        };
        let dial = self.dialable(policy, rule, &rule_label, candidates, &mut judge)?;
        Ok(Plan {
            rule,
            rule_label,
            audit_deny: judge.first,
            dial,
            handling: Handling::Splice,
        }
        .carried_as(policy, protocol, name))
    }

    /// Decide a connection that carries no name (opaque TCP, TLS without SNI) from its
    /// original destination: allowed only if a name the policy DNS server answered for this
    /// address (or the address itself) matches a rule with `opaqueTcp: true`.
    pub fn decide_opaque(&self, policy: &CompiledPolicy, dst: SocketAddr) -> Result<Plan, Refusal> {
        let ip = canonical(dst.ip());
        let mut judge = Judge::new(policy);
        let names = self.cache.names_for(ip);
        let literal = ip.to_string();
        let mut named_rule: Option<String> = None;
        let candidates = names
            .iter()
            .map(|n| &**n)
            .chain(std::iter::once(literal.as_str()));
        for name in candidates {
            let (decision, id) = policy.match_connection(name, dst.port());
            let Some(id) = id.filter(|_| decision.is_allow()) else {
                continue;
            };
            let rule = policy.rule(id);
            if rule.opaque_tcp() && self.rule_allows(policy, id, ip) {
                return Ok(Plan {
                    rule: Some(id),
                    rule_label: rule.name().to_owned(),
                    audit_deny: None,
                    dial: vec![SocketAddr::new(ip, dst.port())],
                    handling: Handling::Splice,
                });
            }
            named_rule.get_or_insert_with(|| rule.name().to_owned());
        }
        let rule_label = named_rule.unwrap_or_else(|| "none".to_owned());
        judge.deny(DenyReason::OpaqueTcpNotAllowed, &rule_label)?;
        let dial = self.dialable(
            policy,
            None,
            &rule_label,
            vec![SocketAddr::new(ip, dst.port())],
            &mut judge,
        )?;
        Ok(Plan {
            rule: None,
            rule_label,
            audit_deny: judge.first,
            dial,
            handling: Handling::Splice,
        })
    }

    /// Decide one HTTP request for `host:port` on a connection whose requests may go to
    /// `target`. A request inside TLS the sidecar terminated is decided on the SNI and is
    /// always carried inspected (the agent's TLS ended here, also when a reload made the rule
    /// passthrough since); one inside a CONNECT tunnel must stay on the tunnel's host.
    pub async fn decide_request(
        &self,
        policy: &CompiledPolicy,
        target: &Target,
        host: &str,
        port: u16,
    ) -> Result<Plan, Refusal> {
        match target {
            Target::Original(dst) => {
                self.decide_name(policy, host, Route::Original(*dst), Some(Protocol::Http))
                    .await
            }
            Target::Absolute => {
                self.decide_name(policy, host, Route::ByName(port), Some(Protocol::Http))
                    .await
            }
            Target::Inspected(conn) => {
                let mut plan = self
                    .decide_name(policy, &conn.sni, conn.route, Some(Protocol::Tls))
                    .await?;
                plan.handling = Handling::Inspect {
                    sni: conn.sni.clone(),
                };
                Ok(plan)
            }
            Target::Tunnel {
                host: tunnel_host,
                port: tunnel_port,
            } => {
                let mut plan = self
                    .decide_name(
                        policy,
                        tunnel_host,
                        Route::ByName(*tunnel_port),
                        Some(Protocol::Http),
                    )
                    .await?;
                if host != tunnel_host || port != *tunnel_port {
                    plan.deny_late(policy, DenyReason::DestinationMismatch)?;
                }
                Ok(plan)
            }
        }
    }

    /// Keep the addresses the rule may dial. In audit mode, addresses only the rule forbids
    /// (private ranges) pass as `audit_deny`; never-dialable ones are always refused.
    fn dialable(
        &self,
        policy: &CompiledPolicy,
        rule: Option<RuleId>,
        rule_label: &str,
        candidates: Vec<SocketAddr>,
        judge: &mut Judge,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let allowed: Vec<SocketAddr> = match rule {
            Some(id) => candidates
                .iter()
                .copied()
                .filter(|a| self.rule_allows(policy, id, a.ip()))
                .collect(),
            None => Vec::new(),
        };
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        let forbidden = || Refusal::Denied {
            reason: DenyReason::ForbiddenAddress,
            rule_label: rule_label.to_owned(),
        };
        if rule.is_some() {
            judge
                .deny(DenyReason::ForbiddenAddress, rule_label)
                .map_err(|_| forbidden())?;
        } else if !judge.audit {
            // Enforce mode without a rule has already returned a denial.
            return Err(forbidden());
        }
        let fallback: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|a| self.fallback_allows(a.ip()))
            .collect();
        if fallback.is_empty() {
            Err(forbidden())
        } else {
            Ok(fallback)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::resolve::StaticResolver;

    pub(crate) fn policy(yaml: &str) -> CompiledPolicy {
        let parsed =
            palisade_policy::parse_policy(yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        CompiledPolicy::compile(&parsed)
    }

    pub(crate) const POLICY: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: test}
spec:
  egress:
    - name: allowed
      hosts: [allowed.test]
      ports: [443, 80]
    - name: private
      hosts: [internal.test]
      ports: [443]
      allowedCidrs: [10.0.0.0/8]
    - name: db
      hosts: [db.test]
      ports: [5432]
      opaqueTcp: true
    - name: api
      hosts: [api.test]
      ports: [443]
      http: {access: read-only}
"#;

    fn decider(cache: AnswerCache) -> Decider {
        let resolver = StaticResolver::with(&[
            ("allowed.test", &["198.18.1.10", "2001:db8::10"]),
            ("internal.test", &["10.1.2.3", "192.168.9.9"]),
            ("db.test", &["198.18.1.20"]),
            ("api.test", &["198.18.1.30"]),
            ("meta.test", &["169.254.169.254"]),
            ("loop.test", &["127.0.0.1"]),
        ]);
        Decider::new(Arc::new(resolver), Arc::new(cache))
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn denied(reason: DenyReason, rule: &str) -> Refusal {
        Refusal::Denied {
            reason,
            rule_label: rule.into(),
        }
    }

    #[tokio::test]
    async fn transparent_tls_by_name() {
        let p = policy(POLICY);
        let d = decider(AnswerCache::new(16));
        let plan = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("198.18.1.10:443")),
                Some(Protocol::Tls),
            )
            .await
            .unwrap();
        assert_eq!(plan.rule_label, "allowed");
        assert_eq!(plan.dial, vec![sa("198.18.1.10:443")]);
        assert_eq!(plan.decision_label(), "allow");
        // Upper case and trailing dot are the same name.
        assert!(
            d.decide_name(
                &p,
                "ALLOWED.test.",
                Route::Original(sa("[2001:db8::10]:443")),
                None
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn policy_denials() {
        let p = policy(POLICY);
        let d = decider(AnswerCache::new(16));
        let r = d
            .decide_name(
                &p,
                "other.test",
                Route::Original(sa("198.18.1.10:443")),
                None,
            )
            .await;
        assert_eq!(r.unwrap_err(), denied(DenyReason::NoMatchingRule, "none"));
        let r = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("198.18.1.10:8443")),
                None,
            )
            .await;
        assert_eq!(
            r.unwrap_err(),
            denied(DenyReason::PortNotAllowed, "allowed")
        );
        let r = d
            .decide_name(
                &p,
                "db.test",
                Route::Original(sa("198.18.1.20:5432")),
                Some(Protocol::Tls),
            )
            .await;
        assert!(r.is_ok(), "TLS to an opaque-TCP rule is fine: {r:?}");
        let r = d
            .decide_name(&p, "allowed.test", Route::ByName(443), Some(Protocol::Tcp))
            .await;
        assert_eq!(
            r.unwrap_err(),
            denied(DenyReason::OpaqueTcpNotAllowed, "allowed")
        );
        // A rule with HTTP rules is allowed at the connection level, to be inspected.
        let plan = d
            .decide_name(
                &p,
                "api.test",
                Route::Original(sa("198.18.1.30:443")),
                Some(Protocol::Tls),
            )
            .await
            .unwrap();
        assert!(plan.inspect(&p));
        let plan = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("198.18.1.10:443")),
                Some(Protocol::Tls),
            )
            .await
            .unwrap();
        assert!(!plan.inspect(&p), "passthrough rules are spliced");
    }

    #[tokio::test]
    async fn sni_spoofing_to_another_address_is_a_destination_mismatch() {
        let p = policy(POLICY);
        let d = decider(AnswerCache::new(16));
        let r = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("198.18.1.66:443")),
                Some(Protocol::Tls),
            )
            .await;
        assert_eq!(
            r.unwrap_err(),
            denied(DenyReason::DestinationMismatch, "allowed")
        );
        // Metadata address behind an allowed name: not where the name lives.
        let r = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("169.254.169.254:80")),
                None,
            )
            .await;
        assert_eq!(
            r.unwrap_err(),
            denied(DenyReason::DestinationMismatch, "allowed")
        );
    }

    #[tokio::test]
    async fn dns_answers_verify_destinations() {
        let p = policy(POLICY);
        let cache = AnswerCache::new(16);
        cache.record(
            "allowed.test",
            &["198.18.1.11".parse().unwrap()],
            Duration::from_secs(60),
        );
        let d = decider(cache);
        let plan = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("198.18.1.11:443")),
                None,
            )
            .await
            .unwrap();
        assert_eq!(plan.dial, vec![sa("198.18.1.11:443")]);
    }

    #[tokio::test]
    async fn forbidden_and_private_addresses() {
        let p = policy(
            r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: t}
spec:
  egress:
    - {name: meta, hosts: [meta.test], ports: [80]}
    - {name: private, hosts: [internal.test], ports: [443], allowedCidrs: [10.0.0.0/8]}
    - {name: loop, hosts: [loop.test], ports: [80]}
"#,
        );
        let d = decider(AnswerCache::new(16));
        let r = d
            .decide_name(
                &p,
                "meta.test",
                Route::Original(sa("169.254.169.254:80")),
                None,
            )
            .await;
        assert_eq!(r.unwrap_err(), denied(DenyReason::ForbiddenAddress, "meta"));
        let r = d
            .decide_name(&p, "loop.test", Route::ByName(80), None)
            .await;
        assert_eq!(r.unwrap_err(), denied(DenyReason::ForbiddenAddress, "loop"));
        // Explicit proxy: only the resolved addresses inside allowedCidrs are dialled.
        let plan = d
            .decide_name(&p, "internal.test", Route::ByName(443), None)
            .await
            .unwrap();
        assert_eq!(plan.dial, vec![sa("10.1.2.3:443")]);
        let r = d
            .decide_name(
                &p,
                "internal.test",
                Route::Original(sa("192.168.9.9:443")),
                None,
            )
            .await;
        assert_eq!(
            r.unwrap_err(),
            denied(DenyReason::ForbiddenAddress, "private")
        );
        let r = d
            .decide_name(&p, "nowhere.test", Route::ByName(443), None)
            .await;
        assert_eq!(r.unwrap_err(), denied(DenyReason::NoMatchingRule, "none"));
    }

    #[tokio::test]
    async fn unresolvable_allowed_name() {
        let p = policy(
            r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: t}
spec:
  egress: [{name: gone, hosts: [gone.test], ports: [443]}]
"#,
        );
        let d = decider(AnswerCache::new(16));
        assert_eq!(
            d.decide_name(&p, "gone.test", Route::ByName(443), None)
                .await
                .unwrap_err(),
            Refusal::Unresolvable
        );
        // Transparent: nothing to verify against → mismatch.
        let r = d
            .decide_name(&p, "gone.test", Route::Original(sa("198.18.5.5:443")), None)
            .await;
        assert_eq!(
            r.unwrap_err(),
            denied(DenyReason::DestinationMismatch, "gone")
        );
    }

    #[tokio::test]
    async fn opaque_tcp_needs_a_dns_answer_and_an_opaque_rule() {
        let p = policy(POLICY);
        let cache = AnswerCache::new(16);
        cache.record(
            "db.test",
            &["198.18.1.20".parse().unwrap()],
            Duration::from_secs(60),
        );
        cache.record(
            "allowed.test",
            &["198.18.1.10".parse().unwrap()],
            Duration::from_secs(60),
        );
        let d = decider(cache);
        let plan = d.decide_opaque(&p, sa("198.18.1.20:5432")).unwrap();
        assert_eq!(
            (plan.rule_label.as_str(), plan.dial.clone()),
            ("db", vec![sa("198.18.1.20:5432")])
        );
        // Right address, wrong port.
        assert_eq!(
            d.decide_opaque(&p, sa("198.18.1.20:22")).unwrap_err(),
            denied(DenyReason::OpaqueTcpNotAllowed, "none")
        );
        // A name with a rule, but not opaque.
        assert_eq!(
            d.decide_opaque(&p, sa("198.18.1.10:443")).unwrap_err(),
            denied(DenyReason::OpaqueTcpNotAllowed, "allowed")
        );
        // Nobody asked DNS for this address (direct-IP connect).
        assert_eq!(
            d.decide_opaque(&p, sa("198.18.9.9:5432")).unwrap_err(),
            denied(DenyReason::OpaqueTcpNotAllowed, "none")
        );
    }

    #[tokio::test]
    async fn opaque_tcp_to_an_ip_literal_rule() {
        let p = policy(
            r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: t}
spec:
  egress: [{name: ip, hosts: ["198.18.7.7"], ports: [22], opaqueTcp: true}]
"#,
        );
        let d = decider(AnswerCache::new(16));
        assert_eq!(
            d.decide_opaque(&p, sa("198.18.7.7:22")).unwrap().rule_label,
            "ip"
        );
        assert!(d.decide_opaque(&p, sa("198.18.7.8:22")).is_err());
    }

    #[tokio::test]
    async fn audit_mode_lets_policy_denials_through_but_not_unsafe_addresses() {
        let p = policy(&POLICY.replace("spec:\n", "spec:\n  mode: audit\n"));
        assert_eq!(p.mode(), Mode::Audit);
        let d = decider(AnswerCache::new(16));
        let plan = d
            .decide_name(
                &p,
                "other.test",
                Route::Original(sa("198.18.1.99:443")),
                Some(Protocol::Tls),
            )
            .await
            .unwrap();
        assert_eq!(plan.decision_label(), "audit_deny");
        assert_eq!(plan.audit_deny, Some(DenyReason::NoMatchingRule));
        assert_eq!(plan.dial, vec![sa("198.18.1.99:443")]);
        let plan = d
            .decide_name(
                &p,
                "allowed.test",
                Route::Original(sa("198.18.1.66:443")),
                None,
            )
            .await
            .unwrap();
        assert_eq!(plan.audit_deny, Some(DenyReason::DestinationMismatch));
        let plan = d
            .decide_name(
                &p,
                "internal.test",
                Route::Original(sa("192.168.9.9:443")),
                None,
            )
            .await
            .unwrap();
        assert_eq!(plan.audit_deny, Some(DenyReason::ForbiddenAddress));
        let plan = d.decide_opaque(&p, sa("198.18.9.9:5432")).unwrap();
        assert_eq!(plan.audit_deny, Some(DenyReason::OpaqueTcpNotAllowed));
        // Never-dialable addresses stay refused.
        let r = d
            .decide_name(
                &p,
                "other.test",
                Route::Original(sa("169.254.169.254:80")),
                None,
            )
            .await;
        assert_eq!(r.unwrap_err(), denied(DenyReason::ForbiddenAddress, "none"));
        let r = d.decide_opaque(&p, sa("127.0.0.1:15020"));
        assert_eq!(r.unwrap_err(), denied(DenyReason::ForbiddenAddress, "none"));
        // …in every spelling: NAT64 (64:ff9b::/96) and IPv4-compatible (::/96) forms of
        // metadata, link-local and loopback are the addresses they carry.
        for dst in [
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b::a9fe:1]:443",
            "[64:ff9b::7f00:1]:15020",
            "[::a9fe:a9fe]:80",
            "[::7f00:1]:443",
        ] {
            let r = d
                .decide_name(&p, "other.test", Route::Original(sa(dst)), None)
                .await;
            assert_eq!(
                r.unwrap_err(),
                denied(DenyReason::ForbiddenAddress, "none"),
                "{dst}"
            );
            let r = d.decide_opaque(&p, sa(dst));
            assert_eq!(
                r.unwrap_err(),
                denied(DenyReason::ForbiddenAddress, "none"),
                "opaque {dst}"
            );
        }
        // Allowed stays allowed.
        let plan = d
            .decide_name(&p, "allowed.test", Route::ByName(443), Some(Protocol::Tls))
            .await
            .unwrap();
        assert_eq!(plan.decision_label(), "allow");
    }

    /// The handling is decided here, once: what the listeners and the HTTP path dispatch on.
    #[tokio::test]
    async fn the_plan_says_how_the_connection_is_carried() {
        let p = policy(POLICY);
        let d = decider(AnswerCache::new(16));
        let by_name = |host: &'static str, protocol| {
            let d = d.clone();
            let p = &p;
            async move {
                d.decide_name(p, host, Route::ByName(443), protocol)
                    .await
                    .unwrap()
                    .handling
            }
        };
        let inspect = Handling::Inspect {
            sni: "api.test".into(),
        };
        assert_eq!(by_name("api.test", Some(Protocol::Tls)).await, inspect);
        assert_eq!(
            by_name("allowed.test", Some(Protocol::Tls)).await,
            Handling::Splice
        );
        assert_eq!(
            by_name("allowed.test", Some(Protocol::Http)).await,
            Handling::Http
        );
        // CONNECT before its tunnel's first bytes: provisional, refined by decide_tunnel.
        let connect = d
            .decide_name(&p, "api.test", Route::ByName(443), None)
            .await
            .unwrap();
        assert_eq!(connect.handling, Handling::Splice);
        let tls = decide_tunnel(
            &p,
            connect.clone(),
            "api.test",
            Protocol::Tls,
            Some("api.test"),
        );
        assert_eq!(tls.unwrap().handling, inspect);
        let http = decide_tunnel(&p, connect.clone(), "api.test", Protocol::Http, None);
        assert_eq!(http.unwrap().handling, Handling::Http);
        let foreign = decide_tunnel(&p, connect, "api.test", Protocol::Tls, Some("evil.test"));
        assert_eq!(
            foreign.unwrap_err(),
            denied(DenyReason::DestinationMismatch, "api")
        );
        // Requests inside inspected TLS are carried inspected, whatever the rule says now.
        let target = Target::Inspected(Inspected {
            sni: "allowed.test".into(),
            route: Route::ByName(443),
            port: 443,
        });
        let plan = d
            .decide_request(&p, &target, "allowed.test", 443)
            .await
            .unwrap();
        assert_eq!(
            plan.handling,
            Handling::Inspect {
                sni: "allowed.test".into()
            }
        );
        let plan = d
            .decide_request(&p, &Target::Absolute, "allowed.test", 80)
            .await
            .unwrap();
        assert_eq!(plan.handling, Handling::Http);
    }

    #[tokio::test]
    async fn deny_all() {
        let p = policy(
            r#"
apiVersion: palisade.dev/v1alpha1
kind: Policy
metadata: {name: t}
spec: {denyAll: true}
"#,
        );
        let d = decider(AnswerCache::new(16));
        let r = d
            .decide_name(&p, "allowed.test", Route::ByName(443), None)
            .await;
        assert_eq!(r.unwrap_err(), denied(DenyReason::DenyAll, "none"));
    }
}
