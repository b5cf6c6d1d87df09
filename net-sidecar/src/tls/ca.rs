//! The sandbox CA: one generation = one key pair + certificate; [`CaStore`] holds the current
//! generation, the leaf cache, and publishes the PEM files.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use prometheus::IntCounterVec;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::{LEAF_CACHE_CAPACITY, LEAF_VALIDITY};

/// Clock skew allowance: certificates are valid from a little before "now".
const BACKDATE: Duration = Duration::from_secs(300);
/// A subtree nothing real lives under (RFC 6761): the CA of a policy that inspects nothing.
const NOTHING: &str = "palisade.invalid";

/// The name-constraint subtrees for the inspected host patterns. A dNSName constraint
/// `example.com` permits `example.com` and every name below it (RFC 5280 §4.2.1.10 as
/// implemented by OpenSSL, webpki, Go and NSS), so an exact host `api.x.y` becomes `api.x.y`
/// and a wildcard `*.x.y` becomes `x.y`. IP literals become a /32 or /128 iPAddress subtree.
pub fn subtrees_for<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Vec<GeneralSubtree> {
    let mut out: Vec<GeneralSubtree> = Vec::new();
    for h in hosts {
        let subtree = if let Ok(ip) = h.parse::<std::net::IpAddr>() {
            GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                ip,
                if ip.is_ipv4() { 32 } else { 128 },
            ))
        } else {
            GeneralSubtree::DnsName(h.strip_prefix("*.").unwrap_or(h).to_owned())
        };
        if !out.contains(&subtree) {
            out.push(subtree);
        }
    }
    if out.is_empty() {
        out.push(GeneralSubtree::DnsName(NOTHING.to_owned()));
    }
    out
}

/// One generation of the sandbox CA.
pub struct SandboxCa {
    pub generation: u64,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The sorted inspected host patterns this CA was constrained to.
    pub hosts: Vec<String>,
    pub created: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa")
            .field("generation", &self.generation)
            .field("hosts", &self.hosts)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl SandboxCa {
    /// A fresh CA for `hosts` (inspected host patterns), valid for `validity`.
    pub fn generate(
        generation: u64,
        hosts: Vec<String>,
        validity: Duration,
    ) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("cannot generate the sandbox CA key")?;
        let now = SystemTime::now();
        let not_after = now + validity;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        dn.push(
            DnType::CommonName,
            format!("Palisade sandbox CA (generation {generation})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: subtrees_for(hosts.iter().map(String::as_str)),
            excluded_subtrees: Vec::new(),
        });
        let issuer = CertifiedIssuer::self_signed(params, key)
            .context("cannot self-sign the sandbox CA certificate")?;
        Ok(Self {
            generation,
            issuer,
            hosts,
            created: now,
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    /// Mint a leaf for `name` (a DNS name or IP literal), chain = [leaf, CA].
    pub fn issue(&self, name: &str) -> anyhow::Result<(CertificateDer<'static>, KeyPair)> {
        let key = KeyPair::generate().context("cannot generate a leaf key")?;
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .with_context(|| format!("`{name}` cannot be a certificate name"))?;
        let now = SystemTime::now();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset((now + LEAF_VALIDITY).min(self.not_after));
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign a leaf certificate")?;
        Ok((cert.der().clone(), key))
    }

    /// Whether `name` (an SNI) lies inside this CA's name constraints, i.e. matches one of
    /// the inspected host patterns it was generated for.
    pub fn covers(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(parent) => name
                .strip_suffix(parent)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            None => h == name,
        })
    }

    /// Whether it is time to replace this CA: 2/3 of its life is over.
    pub fn due_for_rotation(&self, now: SystemTime) -> bool {
        let life = self
            .not_after
            .duration_since(self.created)
            .unwrap_or_default();
        now >= self.created + life * 2 / 3
    }
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&bytes)
}

/// The current CA, the leaf cache, and where the PEM files go.
pub struct CaStore {
    current: RwLock<Arc<SandboxCa>>,
    leaves: Mutex<LruCache<(u64, String), Arc<CertifiedKey>>>,
    validity: Duration,
    shared_dir: PathBuf,
    leaf_cache_total: IntCounterVec,
}

impl std::fmt::Debug for CaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaStore")
            .field("shared_dir", &self.shared_dir)
            .finish_non_exhaustive()
    }
}

impl CaStore {
    /// Generate the first CA for `hosts` and publish it.
    pub fn new(
        hosts: Vec<String>,
        validity: Duration,
        shared_dir: PathBuf,
        leaf_cache_total: IntCounterVec,
    ) -> anyhow::Result<Self> {
        let ca = SandboxCa::generate(1, normalise(hosts), validity)?;
        let store = Self {
            current: RwLock::new(Arc::new(ca)),
            leaves: Mutex::new(LruCache::new(
                NonZeroUsize::new(LEAF_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
            validity,
            shared_dir,
            leaf_cache_total,
        };
        store.publish();
        Ok(store)
    }

    /// The CA in force.
    pub fn current(&self) -> Arc<SandboxCa> {
        self.current.read().clone()
    }

    /// Replace the CA if the inspected host set changed or it is due for rotation. Existing
    /// TLS sessions keep their leaves; new handshakes get leaves of the new CA.
    pub fn refresh(&self, hosts: Vec<String>) -> anyhow::Result<bool> {
        let hosts = normalise(hosts);
        let cur = self.current();
        if cur.hosts == hosts && !cur.due_for_rotation(SystemTime::now()) {
            return Ok(false);
        }
        let next = SandboxCa::generate(cur.generation + 1, hosts, self.validity)?;
        tracing::info!(
            generation = next.generation,
            hosts = ?next.hosts,
            "sandbox CA replaced (inspected hosts changed or rotation due)"
        );
        *self.current.write() = Arc::new(next);
        self.publish();
        Ok(true)
    }

    /// The leaf for `name` from the current CA, minted on a cache miss.
    pub fn leaf(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let ca = self.current();
        let key = (ca.generation, name.to_owned());
        if let Some(hit) = self.leaves.lock().get(&key) {
            self.leaf_cache_total.with_label_values(&["hit"]).inc();
            return Ok(hit.clone());
        }
        self.leaf_cache_total.with_label_values(&["miss"]).inc();
        let (cert, leaf_key) = ca.issue(name)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)
            .context("rustls cannot use the leaf key")?;
        let certified = Arc::new(CertifiedKey::new(vec![cert, ca.der().clone()], signer));
        self.leaves.lock().put(key, certified.clone());
        Ok(certified)
    }

    /// Write `ca.pem` and `ca-bundle.pem` (system roots + our CA) into the shared dir.
    /// Failure is logged, not fatal: inspection works, but clients in the agent container
    /// will not trust it until the files can be written.
    fn publish(&self) {
        let ca = self.current();
        if let Err(err) = publish_files(&self.shared_dir, &ca.pem()) {
            tracing::error!(
                dir = %self.shared_dir.display(),
                error = %format!("{err:#}"),
                "cannot publish the sandbox CA; make --shared-dir an existing directory \
                 writable by the sidecar UID (an emptyDir shared with the agent container)"
            );
        }
    }
}

fn normalise(mut hosts: Vec<String>) -> Vec<String> {
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Atomically (write temp + rename) write `ca.pem` and `ca-bundle.pem`, mode 0644.
pub fn publish_files(dir: &Path, ca_pem: &str) -> anyhow::Result<()> {
    let system = std::fs::read_to_string(super::SYSTEM_BUNDLE).unwrap_or_default();
    let mut bundle = system;
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    write_atomic(&dir.join("ca.pem"), ca_pem.as_bytes())?;
    write_atomic(&dir.join("ca-bundle.pem"), bundle.as_bytes())?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t_total", "t"), &["result"]).unwrap()
    }

    /// `openssl verify` of a leaf against the CA: Ok(()) or the error text.
    fn openssl_verify(dir: &Path, ca: &SandboxCa, name: &str) -> Result<(), String> {
        let (leaf, _) = ca.issue(name).unwrap();
        let leaf_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64_lines(leaf.as_ref())
        );
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
        let out = std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.join("ca.pem"))
            .arg(dir.join("leaf.pem"))
            .output()
            .expect("openssl must be installed (apt-get install -y openssl)");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn base64_lines(der: &[u8]) -> String {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        b.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn name_constraints_are_enforced_by_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::generate(
            1,
            vec!["allowed.test".into(), "*.wild.test".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
        // Inside the constraints.
        openssl_verify(dir.path(), &ca, "allowed.test").unwrap();
        openssl_verify(dir.path(), &ca, "a.wild.test").unwrap();
        // Outside: OpenSSL refuses the chain because of the CA's name constraints.
        for outside in ["evil.test", "allowed.test.evil.test", "github.com"] {
            let err = openssl_verify(dir.path(), &ca, outside).unwrap_err();
            assert!(
                err.contains("name constraint") || err.contains("permitted subtree"),
                "{outside}: {err}"
            );
        }
    }

    #[test]
    fn a_ca_for_nothing_signs_nothing_useful() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SandboxCa::generate(1, Vec::new(), Duration::from_secs(3600)).unwrap();
        assert!(openssl_verify(dir.path(), &ca, "allowed.test").is_err());
    }

    #[test]
    fn subtrees() {
        let s = subtrees_for(["api.x.test", "*.x.test", "*.x.test", "198.18.0.1"]);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], GeneralSubtree::DnsName("api.x.test".into()));
        assert_eq!(s[1], GeneralSubtree::DnsName("x.test".into()));
    }

    #[test]
    fn store_caches_leaves_and_rotates_on_host_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = counter();
        let store = CaStore::new(
            vec!["allowed.test".into()],
            Duration::from_secs(3600),
            dir.path().to_path_buf(),
            c.clone(),
        )
        .unwrap();
        let a = store.leaf("allowed.test").unwrap();
        let b = store.leaf("allowed.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(c.with_label_values(&["hit"]).get(), 1);
        assert_eq!(c.with_label_values(&["miss"]).get(), 1);
        let pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let bundle = std::fs::read_to_string(dir.path().join("ca-bundle.pem")).unwrap();
        assert!(bundle.ends_with(&pem));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca-bundle.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);

        assert!(!store.refresh(vec!["allowed.test".into()]).unwrap());
        assert!(store.refresh(vec!["other.test".into()]).unwrap());
        assert_eq!(store.current().generation, 2);
        let c2 = store.leaf("allowed.test").unwrap();
        assert!(
            !Arc::ptr_eq(&a, &c2),
            "a new CA generation mints new leaves"
        );
        assert_ne!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            pem
        );
    }

    #[test]
    fn covers_matches_the_policy_patterns() {
        let ca = SandboxCa::generate(
            1,
            vec!["api.test".into(), "*.wild.test".into()],
            Duration::from_secs(300),
        )
        .unwrap();
        assert!(ca.covers("api.test"));
        assert!(ca.covers("a.wild.test"));
        assert!(!ca.covers("wild.test"));
        assert!(!ca.covers("a.b.wild.test"));
        assert!(!ca.covers("xapi.test"));
        assert!(!ca.covers("evilwild.test"));
    }

    #[test]
    fn rotation_at_two_thirds() {
        let ca = SandboxCa::generate(1, Vec::new(), Duration::from_secs(300)).unwrap();
        assert!(!ca.due_for_rotation(ca.created));
        assert!(ca.due_for_rotation(ca.created + Duration::from_secs(201)));
    }
}
