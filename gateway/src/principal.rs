//! Who is calling: the [`Principal`] the authentication chain produces, the
//! [`SandboxId`] newtype (defined in `palisade_api`, re-exported here), the
//! [`Scope`]s a principal holds, and what a namespace (or any other
//! DNS-label name) may look like ([`valid_label`]).
//!
//! Must never: grant a scope implicitly — every scope comes from a role, a
//! kind of principal, or an explicit operator flag.

use serde::{Deserialize, Serialize};

pub use palisade_api::SandboxId;

/// A DNS-label-like name: lowercase alphanumerics and `-`, 1..=63, no edge `-`.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What a route needs beyond the principal's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    SandboxRead,
    SandboxWrite,
    PolicyWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::SandboxRead,
        Scope::SandboxWrite,
        Scope::PolicyWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SandboxRead => "sandbox:read",
            Scope::SandboxWrite => "sandbox:write",
            Scope::PolicyWrite => "policy:write",
            Scope::Admin => "admin",
        }
    }
}

/// A role of a human or platform user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every scope.
    Admin,
    /// Read and write sandboxes and policies.
    Editor,
    /// Read sandboxes.
    Viewer,
}

impl Role {
    pub fn grants(self, scope: Scope) -> bool {
        match self {
            Role::Admin => true,
            Role::Editor => scope != Scope::Admin,
            Role::Viewer => scope == Scope::SandboxRead,
        }
    }
}

/// The authenticated caller, placed in request extensions by the
/// authentication layer. Handlers see this and nothing of headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A sandbox's sidecar holding a sandbox JWT.
    Sandbox { id: SandboxId, jti: String },
    /// An operator (static admin token today; OIDC later).
    User { subject: String, roles: Vec<Role> },
    /// A platform controller limited to some namespaces (Kubernetes later).
    Platform {
        subject: String,
        namespaces: Vec<String>,
    },
    /// A bootstrap credential, good only for `POST /v1/token:issue`: a
    /// one-time token, or a reviewed Kubernetes ServiceAccount token of a
    /// live pod annotated with this sandbox.
    Bootstrap {
        sandbox_id: SandboxId,
        credential: BootstrapCredential,
    },
    /// No credential. Holds scopes only with `--insecure-allow-anonymous`.
    Anonymous { insecure_allowed: bool },
}

/// What a [`Principal::Bootstrap`] presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapCredential {
    /// A one-time `pbt_…` token; SHA-256 (hex) of the token, its key in the store.
    OneTime { token_hash: String },
    /// A Kubernetes ServiceAccount token, reviewed and bound to this pod.
    ServiceAccount(PodIdentity),
}

/// The pod a reviewed ServiceAccount token was bound to (its UID checked
/// against the live pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The kind of a principal, without its data (route declarations, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    Sandbox,
    User,
    Platform,
    Bootstrap,
    Anonymous,
}

impl PrincipalKind {
    pub const ALL: [PrincipalKind; 5] = [
        PrincipalKind::Sandbox,
        PrincipalKind::User,
        PrincipalKind::Platform,
        PrincipalKind::Bootstrap,
        PrincipalKind::Anonymous,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Sandbox => "sandbox",
            PrincipalKind::User => "user",
            PrincipalKind::Platform => "platform",
            PrincipalKind::Bootstrap => "bootstrap",
            PrincipalKind::Anonymous => "anonymous",
        }
    }
}

impl Principal {
    pub fn kind(&self) -> PrincipalKind {
        match self {
            Principal::Sandbox { .. } => PrincipalKind::Sandbox,
            Principal::User { .. } => PrincipalKind::User,
            Principal::Platform { .. } => PrincipalKind::Platform,
            Principal::Bootstrap { .. } => PrincipalKind::Bootstrap,
            Principal::Anonymous { .. } => PrincipalKind::Anonymous,
        }
    }

    /// Whether this principal holds `scope`. Sandbox and bootstrap principals
    /// hold no operator scopes: their routes declare no scope and are pinned
    /// to their own sandbox instead.
    pub fn has_scope(&self, scope: Scope) -> bool {
        match self {
            Principal::User { roles, .. } => roles.iter().any(|r| r.grants(scope)),
            // A platform controller manages sandboxes and policies in its
            // namespaces; it never administers the gateway.
            Principal::Platform { .. } => scope != Scope::Admin,
            // Explicitly opted into by the operator; never `admin`.
            Principal::Anonymous { insecure_allowed } => *insecure_allowed && scope != Scope::Admin,
            Principal::Sandbox { .. } | Principal::Bootstrap { .. } => false,
        }
    }

    /// A name for logs and the `owner` field: never a credential.
    pub fn subject(&self) -> String {
        match self {
            Principal::Sandbox { id, .. } => format!("sandbox:{id}"),
            Principal::User { subject, .. } => format!("user:{subject}"),
            Principal::Platform { subject, .. } => format!("platform:{subject}"),
            Principal::Bootstrap { sandbox_id, .. } => format!("bootstrap:{sandbox_id}"),
            Principal::Anonymous { .. } => "anonymous".to_owned(),
        }
    }

    /// Whether this principal may see a sandbox in `namespace` (platform
    /// principals are limited to theirs; sandbox principals to their own id,
    /// checked by the route table).
    pub fn sees_namespace(&self, namespace: Option<&str>) -> bool {
        match self {
            Principal::Platform { namespaces, .. } => {
                namespace.is_some_and(|ns| namespaces.iter().any(|n| n == ns))
            }
            _ => true,
        }
    }

    /// Whether this principal may create or change an object (a policy) of
    /// `namespace`: `None` is cluster-wide and needs `admin`; a namespace
    /// needs [`Self::sees_namespace`] (platform principals: one of theirs).
    pub fn manages_namespace(&self, namespace: Option<&str>) -> bool {
        match namespace {
            None => self.has_scope(Scope::Admin),
            Some(_) => self.sees_namespace(namespace),
        }
    }

    /// Whether this principal may read a policy of `namespace`: cluster-wide
    /// policies are readable by every reader (sandboxes of any namespace may
    /// run them), namespaced ones as [`Self::sees_namespace`] says.
    pub fn reads_namespace(&self, namespace: Option<&str>) -> bool {
        namespace.is_none() || self.sees_namespace(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_id_round_trip_and_rejects_garbage() {
        let id = SandboxId::generate();
        assert_eq!(SandboxId::parse(id.as_str()), Some(id.clone()));
        for bad in [
            "",
            "sbx-",
            "sbx-XYZ",
            "abc",
            "sbx-../../etc/passwd",
            &format!("{id}0"),
        ] {
            assert_eq!(SandboxId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_grant_what_they_say() {
        assert!(Role::Admin.grants(Scope::Admin));
        assert!(!Role::Editor.grants(Scope::Admin));
        assert!(Role::Editor.grants(Scope::PolicyWrite));
        assert!(Role::Viewer.grants(Scope::SandboxRead));
        assert!(!Role::Viewer.grants(Scope::SandboxWrite));
    }

    #[test]
    fn namespaces_limit_platform_principals_and_cluster_wide_needs_admin() {
        let platform = Principal::Platform {
            subject: "ctl".into(),
            namespaces: vec!["ns-a".into()],
        };
        let user = |roles| Principal::User {
            subject: "u".into(),
            roles,
        };
        let (admin, editor) = (user(vec![Role::Admin]), user(vec![Role::Editor]));
        assert!(platform.manages_namespace(Some("ns-a")));
        assert!(!platform.manages_namespace(Some("ns-b")));
        assert!(
            !platform.manages_namespace(None),
            "cluster-wide is admin only"
        );
        assert!(platform.reads_namespace(None) && platform.reads_namespace(Some("ns-a")));
        assert!(!platform.reads_namespace(Some("ns-b")));
        assert!(editor.manages_namespace(Some("ns-b")));
        assert!(!editor.manages_namespace(None));
        assert!(admin.manages_namespace(None) && admin.manages_namespace(Some("x")));
    }

    #[test]
    fn anonymous_holds_nothing_unless_allowed_and_never_admin() {
        let closed = Principal::Anonymous {
            insecure_allowed: false,
        };
        let open = Principal::Anonymous {
            insecure_allowed: true,
        };
        for s in Scope::ALL {
            assert!(!closed.has_scope(s));
        }
        assert!(open.has_scope(Scope::SandboxWrite));
        assert!(!open.has_scope(Scope::Admin));
    }
}
