//! THE route table: every route, its method and path, and who may call it.
//! Authorization ([`authorize`]) reads nothing but this table and the
//! principal; the router dispatches on the [`RouteId`] matched here.
//!
//! Must never: contain a route without an explicit access declaration.

use http::Method;

use std::sync::Arc;

use crate::http::{ApiError, Request};
use crate::principal::{Principal, Scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Jwks,
    OpenIdConfiguration,
    OpenApi,
    SandboxCreate,
    SandboxList,
    SandboxGet,
    SandboxDelete,
    SandboxPolicyGet,
    SandboxEvents,
    SandboxLogs,
    WorkloadTokens,
    PolicyPut,
    PolicyGet,
    TokenIssue,
    TokenRefresh,
    KeysList,
    KeysRotate,
    SandboxSession,
    SandboxExec,
    RelayDialBack,
    SecretPut,
    SecretList,
    SecretDelete,
}

impl RouteId {
    /// Metrics label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteId::Jwks => "jwks",
            RouteId::OpenIdConfiguration => "openid_configuration",
            RouteId::OpenApi => "openapi",
            RouteId::SandboxCreate => "sandbox_create",
            RouteId::SandboxList => "sandbox_list",
            RouteId::SandboxGet => "sandbox_get",
            RouteId::SandboxDelete => "sandbox_delete",
            RouteId::SandboxPolicyGet => "sandbox_policy_get",
            RouteId::SandboxEvents => "sandbox_events",
            RouteId::SandboxLogs => "sandbox_logs",
            RouteId::WorkloadTokens => "workload_tokens",
            RouteId::PolicyPut => "policy_put",
            RouteId::PolicyGet => "policy_get",
            RouteId::TokenIssue => "token_issue",
            RouteId::TokenRefresh => "token_refresh",
            RouteId::KeysList => "keys_list",
            RouteId::KeysRotate => "keys_rotate",
            RouteId::SandboxSession => "sandbox_session",
            RouteId::SandboxExec => "sandbox_exec",
            RouteId::RelayDialBack => "relay_dial_back",
            RouteId::SecretPut => "secret_put",
            RouteId::SecretList => "secret_list",
            RouteId::SecretDelete => "secret_delete",
        }
    }
}

/// One way to be allowed onto a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Anyone, with or without a credential (public documents).
    Public,
    /// An operator principal (user, platform, or anonymous under
    /// `--insecure-allow-anonymous`) holding this scope.
    Scope(Scope),
    /// A sandbox principal whose id equals the route's `{id}`.
    OwnSandbox,
    /// Any sandbox principal (routes with no `{id}`; the handler acts on the
    /// caller's own sandbox).
    SandboxSelf,
    /// A one-time bootstrap token.
    Bootstrap,
}

/// Which namespace check a route's handler makes once it has loaded the
/// object the route acts on ([`authorize_namespace`]). The route table says
/// it, so the table test covers every route × principal × namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaced {
    /// No namespaced object: public documents, tokens, keys, and secrets
    /// (cluster objects that only admins reach).
    None,
    /// The `{id}` sandbox: its namespace must be one the principal sees
    /// (a foreign one answers exactly like a missing sandbox).
    Sandbox,
    /// Each listed sandbox, filtered by the same rule as [`Namespaced::Sandbox`].
    SandboxList,
    /// The namespace a new sandbox is created in (from the body).
    NewSandbox,
    /// Reading the `{name}` policy: cluster-wide policies for every reader,
    /// namespaced ones for principals who see the namespace (else 404).
    PolicyRead,
    /// Writing the `{name}` policy: the principal must manage the namespace
    /// written AND that of the version it replaces (cluster-wide: admin only).
    PolicyWrite,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub id: RouteId,
    pub method: Method,
    /// Path template; `{id}` is a sandbox id, `{name}` a policy or secret
    /// name, `{relay_id}` a relay id.
    pub path: &'static str,
    pub grants: &'static [Grant],
    pub namespaced: Namespaced,
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::Jwks,
        method: Method::GET,
        path: "/.well-known/jwks.json",
        grants: &[Grant::Public],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::OpenIdConfiguration,
        method: Method::GET,
        path: "/.well-known/openid-configuration",
        grants: &[Grant::Public],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::OpenApi,
        method: Method::GET,
        path: "/openapi.json",
        grants: &[Grant::Public],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::SandboxCreate,
        method: Method::POST,
        path: "/v1/sandboxes",
        grants: &[Grant::Scope(Scope::SandboxWrite)],
        namespaced: Namespaced::NewSandbox,
    },
    Route {
        id: RouteId::SandboxList,
        method: Method::GET,
        path: "/v1/sandboxes",
        grants: &[Grant::Scope(Scope::SandboxRead)],
        namespaced: Namespaced::SandboxList,
    },
    Route {
        id: RouteId::SandboxGet,
        method: Method::GET,
        path: "/v1/sandboxes/{id}",
        grants: &[Grant::Scope(Scope::SandboxRead), Grant::OwnSandbox],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::SandboxDelete,
        method: Method::DELETE,
        path: "/v1/sandboxes/{id}",
        grants: &[Grant::Scope(Scope::SandboxWrite)],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::SandboxPolicyGet,
        method: Method::GET,
        path: "/v1/sandboxes/{id}/policy",
        grants: &[Grant::Scope(Scope::SandboxRead), Grant::OwnSandbox],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::SandboxEvents,
        method: Method::POST,
        path: "/v1/sandboxes/{id}/events",
        grants: &[Grant::OwnSandbox],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::SandboxLogs,
        method: Method::GET,
        path: "/v1/sandboxes/{id}/logs",
        grants: &[Grant::Scope(Scope::SandboxRead)],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::WorkloadTokens,
        method: Method::POST,
        path: "/v1/sandboxes/{id}/workload-tokens",
        grants: &[Grant::OwnSandbox],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::PolicyPut,
        method: Method::PUT,
        path: "/v1/policies/{name}",
        grants: &[Grant::Scope(Scope::PolicyWrite)],
        namespaced: Namespaced::PolicyWrite,
    },
    Route {
        id: RouteId::PolicyGet,
        method: Method::GET,
        path: "/v1/policies/{name}",
        grants: &[Grant::Scope(Scope::SandboxRead)],
        namespaced: Namespaced::PolicyRead,
    },
    Route {
        id: RouteId::TokenIssue,
        method: Method::POST,
        path: "/v1/token:issue",
        grants: &[Grant::Bootstrap],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::TokenRefresh,
        method: Method::POST,
        path: "/v1/token:refresh",
        grants: &[Grant::SandboxSelf],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::KeysList,
        method: Method::GET,
        path: "/v1/keys",
        grants: &[Grant::Scope(Scope::Admin)],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::KeysRotate,
        method: Method::POST,
        path: "/v1/keys:rotate",
        grants: &[Grant::Scope(Scope::Admin)],
        namespaced: Namespaced::None,
    },
    // The sidecar's session stream: never-ending NDJSON (not cut by the
    // request timeout: see server::stack).
    Route {
        id: RouteId::SandboxSession,
        method: Method::GET,
        path: "/v1/sandboxes/{id}/session",
        grants: &[Grant::OwnSandbox],
        namespaced: Namespaced::Sandbox,
    },
    // Exec: an operator who may write the sandbox; never a sandbox (an agent
    // must not open sessions, even in itself). HTTP/1.1 upgrade.
    Route {
        id: RouteId::SandboxExec,
        method: Method::POST,
        path: "/v1/sandboxes/{id}/exec",
        grants: &[Grant::Scope(Scope::SandboxWrite)],
        namespaced: Namespaced::Sandbox,
    },
    // The sidecar's dial-back for a relay its session was asked for.
    Route {
        id: RouteId::RelayDialBack,
        method: Method::POST,
        path: "/v1/sandboxes/{id}/relays/{relay_id}",
        grants: &[Grant::OwnSandbox],
        namespaced: Namespaced::Sandbox,
    },
    Route {
        id: RouteId::SecretPut,
        method: Method::PUT,
        path: "/v1/secrets/{name}",
        grants: &[Grant::Scope(Scope::Admin)],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::SecretList,
        method: Method::GET,
        path: "/v1/secrets",
        grants: &[Grant::Scope(Scope::Admin)],
        namespaced: Namespaced::None,
    },
    Route {
        id: RouteId::SecretDelete,
        method: Method::DELETE,
        path: "/v1/secrets/{name}",
        grants: &[Grant::Scope(Scope::Admin)],
        namespaced: Namespaced::None,
    },
];

/// Path parameters of a matched route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub id: Option<String>,
    pub name: Option<String>,
    pub relay_id: Option<String>,
}

/// A request matched against the table (placed in request extensions).
#[derive(Debug, Clone)]
pub struct Matched {
    pub route: &'static Route,
    pub params: Params,
}

/// Longest path we try to match; longer is a 404 without work.
const MAX_PATH_LEN: usize = 512;

/// Match a method and path. `Err` is the answer to give (404 or 405).
pub fn match_route(method: &Method, path: &str) -> Result<Matched, ApiError> {
    if path.len() > MAX_PATH_LEN {
        return Err(ApiError::not_found("no such route"));
    }
    // Methods the path does support: the `Allow` header of a 405 (RFC 9110 §15.5.6).
    let mut allow: Vec<&str> = Vec::new();
    for route in ROUTES {
        if let Some(params) = match_path(route.path, path) {
            if route.method == *method {
                return Ok(Matched { route, params });
            }
            if !allow.contains(&route.method.as_str()) {
                allow.push(route.method.as_str());
            }
        }
    }
    if allow.is_empty() {
        Err(ApiError::not_found("no such route"))
    } else {
        let allow = allow.join(", ");
        Err(ApiError::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not supported on this path; use {allow}"),
        )
        .with_allow(allow))
    }
}

/// A request's match, kept in its extensions by the first layer that asks, so the route
/// table is walked once per request however many layers need the route.
#[derive(Debug, Clone)]
struct RouteMatch(Arc<Result<Matched, ApiError>>);

/// [`match_route`] on `req`'s method and path, computed once per request.
pub fn route_of(req: &mut Request) -> Arc<Result<Matched, ApiError>> {
    if let Some(RouteMatch(m)) = req.extensions().get::<RouteMatch>() {
        return m.clone();
    }
    let m = Arc::new(match_route(req.method(), req.uri().path()));
    req.extensions_mut().insert(RouteMatch(m.clone()));
    m
}

fn match_path(template: &str, path: &str) -> Option<Params> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut params = Params::default();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => params.id = Some(seg.to_owned()),
            (Some("{name}"), Some(seg)) if !seg.is_empty() => params.name = Some(seg.to_owned()),
            (Some("{relay_id}"), Some(seg)) if !seg.is_empty() => {
                params.relay_id = Some(seg.to_owned())
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Whether `principal` may call the matched route. The refusal is chosen so
/// that a sandbox cannot tell a foreign sandbox from a missing one (both 404),
/// and a caller without a credential is told to authenticate (401).
pub fn authorize(matched: &Matched, principal: &Principal) -> Result<(), ApiError> {
    let allowed = matched
        .route
        .grants
        .iter()
        .any(|grant| match (grant, principal) {
            (Grant::Public, _) => true,
            (
                Grant::Scope(scope),
                Principal::User { .. } | Principal::Platform { .. } | Principal::Anonymous { .. },
            ) => principal.has_scope(*scope),
            (Grant::OwnSandbox, Principal::Sandbox { id, .. }) => {
                matched.params.id.as_deref() == Some(id.as_str())
            }
            (Grant::SandboxSelf, Principal::Sandbox { .. }) => true,
            (Grant::Bootstrap, Principal::Bootstrap { .. }) => true,
            _ => false,
        });
    if allowed {
        return Ok(());
    }
    match principal {
        Principal::Anonymous { .. } => Err(ApiError::unauthenticated(
            "this route needs a credential: send `Authorization: Bearer <token>`",
        )),
        Principal::Sandbox { .. } if matched.route.grants.contains(&Grant::OwnSandbox) => {
            Err(ApiError::sandbox_not_found())
        }
        Principal::Bootstrap { .. } => Err(ApiError::forbidden(
            "a bootstrap token is good only for POST /v1/token:issue",
        )),
        _ => Err(ApiError::forbidden(format!(
            "{} may not call {} {}",
            principal.kind().as_str(),
            matched.route.method,
            matched.route.path
        ))),
    }
}

/// Whether `principal` (already past [`authorize`]) may act on an object
/// of `namespace` (`None`: no namespace / cluster-wide) on this route.
pub fn authorize_namespace(route: &Route, principal: &Principal, namespace: Option<&str>) -> bool {
    match route.namespaced {
        Namespaced::None => true,
        Namespaced::Sandbox | Namespaced::SandboxList | Namespaced::NewSandbox => {
            principal.sees_namespace(namespace)
        }
        Namespaced::PolicyRead => principal.reads_namespace(namespace),
        Namespaced::PolicyWrite => principal.manages_namespace(namespace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{PrincipalKind, Role, SandboxId};

    /// Independent statement of who may call what; a new RouteId does not
    /// compile until it is listed here.
    fn expected(id: RouteId, p: &Principal, own: bool) -> bool {
        use PrincipalKind as K;
        let kind = p.kind();
        let op = |scope: Scope| {
            matches!(kind, K::User | K::Platform | K::Anonymous) && p.has_scope(scope)
        };
        match id {
            RouteId::Jwks | RouteId::OpenIdConfiguration | RouteId::OpenApi => true,
            RouteId::SandboxCreate | RouteId::SandboxDelete => op(Scope::SandboxWrite),
            RouteId::SandboxList | RouteId::PolicyGet | RouteId::SandboxLogs => {
                op(Scope::SandboxRead)
            }
            RouteId::SandboxGet | RouteId::SandboxPolicyGet => {
                op(Scope::SandboxRead) || (kind == K::Sandbox && own)
            }
            RouteId::PolicyPut => op(Scope::PolicyWrite),
            RouteId::SandboxEvents | RouteId::WorkloadTokens => kind == K::Sandbox && own,
            RouteId::TokenIssue => kind == K::Bootstrap,
            RouteId::TokenRefresh => kind == K::Sandbox,
            RouteId::KeysList | RouteId::KeysRotate => op(Scope::Admin),
            RouteId::SandboxSession | RouteId::RelayDialBack => kind == K::Sandbox && own,
            RouteId::SandboxExec => op(Scope::SandboxWrite),
            RouteId::SecretPut | RouteId::SecretList | RouteId::SecretDelete => op(Scope::Admin),
        }
    }

    /// Independent statement of the namespace rule of every route, for an
    /// object of namespace `ns` (`None`: none / cluster-wide).
    fn expected_ns(id: RouteId, p: &Principal, ns: Option<&str>) -> bool {
        let sees = match p {
            Principal::Platform { namespaces, .. } => {
                ns.is_some_and(|n| namespaces.iter().any(|x| x == n))
            }
            _ => true,
        };
        let admin = matches!(p, Principal::User { roles, .. } if roles.contains(&Role::Admin));
        match id {
            RouteId::Jwks
            | RouteId::OpenIdConfiguration
            | RouteId::OpenApi
            | RouteId::TokenIssue
            | RouteId::TokenRefresh
            | RouteId::KeysList
            | RouteId::KeysRotate
            | RouteId::SecretPut
            | RouteId::SecretList
            | RouteId::SecretDelete => true,
            RouteId::SandboxCreate
            | RouteId::SandboxList
            | RouteId::SandboxGet
            | RouteId::SandboxDelete
            | RouteId::SandboxPolicyGet
            | RouteId::SandboxEvents
            | RouteId::SandboxLogs
            | RouteId::WorkloadTokens
            | RouteId::SandboxSession
            | RouteId::SandboxExec
            | RouteId::RelayDialBack => sees,
            RouteId::PolicyGet => ns.is_none() || sees,
            RouteId::PolicyPut => match ns {
                None => admin,
                Some(_) => sees,
            },
        }
    }

    fn principals(own: &SandboxId) -> Vec<Principal> {
        let mut v = vec![
            Principal::Sandbox {
                id: own.clone(),
                jti: "j".into(),
            },
            Principal::Platform {
                subject: "ctl".into(),
                namespaces: vec!["ns".into()],
            },
            Principal::Platform {
                subject: "none".into(),
                namespaces: vec![],
            },
            Principal::Bootstrap {
                sandbox_id: own.clone(),
                credential: crate::principal::BootstrapCredential::OneTime {
                    token_hash: "h".into(),
                },
            },
            Principal::Bootstrap {
                sandbox_id: own.clone(),
                credential: crate::principal::BootstrapCredential::ServiceAccount(
                    crate::principal::PodIdentity {
                        namespace: "ns".into(),
                        name: "pod".into(),
                        uid: "uid".into(),
                    },
                ),
            },
            Principal::Anonymous {
                insecure_allowed: false,
            },
            Principal::Anonymous {
                insecure_allowed: true,
            },
        ];
        for roles in [
            vec![],
            vec![Role::Viewer],
            vec![Role::Editor],
            vec![Role::Admin],
        ] {
            v.push(Principal::User {
                subject: "u".into(),
                roles,
            });
        }
        // Every kind is represented.
        for k in PrincipalKind::ALL {
            assert!(v.iter().any(|p| p.kind() == k), "{k:?} missing");
        }
        v
    }

    fn concrete(path: &str, id: &str) -> String {
        path.replace("{id}", id)
            .replace("{name}", "web")
            .replace("{relay_id}", "0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_request_is_matched_once_and_the_match_is_shared() {
        let body = || {
            use http_body_util::BodyExt as _;
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        let mut req = http::Request::get("/v1/sandboxes/sbx-1")
            .body(body())
            .unwrap();
        let first = route_of(&mut req);
        let again = route_of(&mut req);
        assert!(Arc::ptr_eq(&first, &again), "matched twice");
        let m = first.as_ref().as_ref().unwrap();
        assert_eq!(m.params.id.as_deref(), Some("sbx-1"));
        let mut bad = http::Request::patch("/v1/sandboxes").body(body()).unwrap();
        assert_eq!(
            route_of(&mut bad).as_ref().as_ref().unwrap_err().status,
            405
        );
    }

    #[test]
    fn every_route_is_declared_once_and_matches_itself() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(!r.grants.is_empty(), "{:?} has no grants", r.id);
            assert!(seen.insert(r.id), "{:?} declared twice", r.id);
            let m = match_route(&r.method, &concrete(r.path, "sbx-x")).unwrap();
            assert_eq!(m.route.id, r.id);
        }
        assert_eq!(seen.len(), 23, "a RouteId is missing from ROUTES");
    }

    #[test]
    fn table_times_every_principal_matches_expectation() {
        let own = SandboxId::generate();
        let other = SandboxId::generate();
        for r in ROUTES {
            for target in [&own, &other] {
                let m = match_route(&r.method, &concrete(r.path, target.as_str())).unwrap();
                for p in principals(&own) {
                    let is_own = r.path.contains("{id}") && target == &own;
                    let want = expected(r.id, &p, is_own);
                    let got = authorize(&m, &p);
                    assert_eq!(
                        got.is_ok(),
                        want,
                        "{:?} {:?} on {}: {got:?}",
                        r.id,
                        p,
                        target
                    );
                    // Route × principal × namespace of the object acted on.
                    for ns in [None, Some("ns"), Some("other")] {
                        let allowed = got.is_ok() && authorize_namespace(r, &p, ns);
                        let want = want && expected_ns(r.id, &p, ns);
                        assert_eq!(allowed, want, "{:?} {p:?} on namespace {ns:?}", r.id);
                    }
                }
            }
        }
    }

    #[test]
    fn foreign_and_missing_sandbox_answer_identically() {
        let own = SandboxId::generate();
        let p = Principal::Sandbox {
            id: own,
            jti: "j".into(),
        };
        let foreign = match_route(
            &Method::GET,
            &format!("/v1/sandboxes/{}", SandboxId::generate()),
        )
        .unwrap();
        let missing = match_route(
            &Method::GET,
            "/v1/sandboxes/sbx-00000000000000000000000000000000",
        )
        .unwrap();
        let garbage = match_route(&Method::GET, "/v1/sandboxes/nope").unwrap();
        let a = authorize(&foreign, &p).unwrap_err();
        assert_eq!(a, authorize(&missing, &p).unwrap_err());
        assert_eq!(a, authorize(&garbage, &p).unwrap_err());
        assert_eq!(a, ApiError::sandbox_not_found());
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(match_route(&Method::GET, "/v2/x").unwrap_err().status, 404);
        assert_eq!(
            match_route(&Method::GET, "/v1/sandboxes/")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            match_route(&Method::PATCH, "/v1/sandboxes")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/sandboxes/a/b/c")
                .unwrap_err()
                .status,
            404
        );
    }
}
