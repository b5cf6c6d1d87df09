//! The answer cache: which addresses the policy DNS server handed out for which name, and
//! until when. The data plane reads it (`answered`, `names_for`) to check that an address
//! the agent connects to came from a name it resolved through us.
//!
//! Bounded: at most `capacity` names (least recently used dropped first) and at most
//! [`MAX_ADDRS_PER_NAME`] addresses per name, so memory is bounded whatever upstreams say.
//! This is never a DNS cache for answering queries — every query goes upstream.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

/// Answers are remembered at least this long, whatever their TTL (0 is common).
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(5);
/// …and at most this long.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Addresses kept per name; the ones expiring soonest are dropped beyond this.
pub const MAX_ADDRS_PER_NAME: usize = 32;

/// Bounded, thread-safe record of (name → addresses, expiry) the DNS server answered.
pub struct AnswerCache {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Normalised name → (address, expiry). Never holds an empty list.
    names: LruCache<Arc<str>, Vec<(IpAddr, Instant)>>,
    /// Reverse index. Invariant: `by_ip[ip]` holds `name` exactly when `names[name]` holds
    /// `ip` (expired or not); an `ip` with no names has no key.
    by_ip: HashMap<IpAddr, Vec<Arc<str>>>,
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("AnswerCache")
            .field("names", &inner.names.len())
            .field("capacity", &inner.names.cap())
            .field("addresses", &inner.by_ip.len())
            .finish()
    }
}

impl AnswerCache {
    /// A cache of at most `capacity` names (a capacity of 0 is taken as 1).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Inner {
                names: LruCache::new(cap),
                by_ip: HashMap::new(),
            }),
        }
    }

    /// Remember that `name` resolved to `addrs` for `ttl` (clamped to
    /// [`MIN_CACHE_TTL`]..=[`MAX_CACHE_TTL`]). Adds to what the name already has (A and
    /// AAAA answers arrive separately); a repeated address gets the later expiry.
    pub fn record(&self, name: &str, addrs: &[IpAddr], ttl: Duration) {
        self.record_at(name, addrs, ttl, Instant::now());
    }

    /// Whether `name` (any case, trailing dot ignored) has an unexpired answer `ip`.
    pub fn answered(&self, name: &str, ip: IpAddr) -> bool {
        self.answered_at(name, ip, Instant::now())
    }

    /// Every name with an unexpired answer `ip` (normalised: lower case, no trailing dot).
    pub fn names_for(&self, ip: IpAddr) -> Vec<Arc<str>> {
        self.names_for_at(ip, Instant::now())
    }

    pub(super) fn record_at(&self, name: &str, addrs: &[IpAddr], ttl: Duration, now: Instant) {
        let key = normalise(name);
        if key.is_empty() || addrs.is_empty() {
            return;
        }
        let expiry = now + ttl.clamp(MIN_CACHE_TTL, MAX_CACHE_TTL);
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if let Some((name, entry)) = inner.names.get_key_value_mut(key.as_ref()) {
            let name = name.clone();
            merge(&mut inner.by_ip, &name, entry, addrs, expiry, now);
            return;
        }
        let name: Arc<str> = Arc::from(key.as_ref());
        let mut entry = Vec::new();
        merge(&mut inner.by_ip, &name, &mut entry, addrs, expiry, now);
        if let Some((evicted, old)) = inner.names.push(name, entry) {
            for (ip, _) in old {
                unindex(&mut inner.by_ip, ip, &evicted);
            }
        }
    }

    pub(super) fn answered_at(&self, name: &str, ip: IpAddr, now: Instant) -> bool {
        let key = normalise(name);
        let mut inner = self.inner.lock();
        inner
            .names
            .get(key.as_ref())
            .is_some_and(|entry| entry.iter().any(|&(a, exp)| a == ip && exp > now))
    }

    pub(super) fn names_for_at(&self, ip: IpAddr, now: Instant) -> Vec<Arc<str>> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(candidates) = inner.by_ip.get(&ip).cloned() else {
            return Vec::new();
        };
        let mut live = Vec::with_capacity(candidates.len());
        for name in candidates {
            let Some(entry) = inner.names.peek_mut(&name) else {
                unindex(&mut inner.by_ip, ip, &name);
                continue;
            };
            let fresh = entry.iter().any(|&(a, exp)| a == ip && exp > now);
            if fresh {
                live.push(name);
                continue;
            }
            // Expired: drop the pair from both sides (and the name if nothing is left).
            entry.retain(|&(a, _)| a != ip);
            let now_empty = entry.is_empty();
            unindex(&mut inner.by_ip, ip, &name);
            if now_empty {
                inner.names.pop(&name);
            }
        }
        live
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().names.len()
    }
}

/// Fold `addrs` (all expiring at `expiry`) into `entry`, pruning expired addresses and
/// keeping at most [`MAX_ADDRS_PER_NAME`], with the reverse index kept in step.
fn merge(
    by_ip: &mut HashMap<IpAddr, Vec<Arc<str>>>,
    name: &Arc<str>,
    entry: &mut Vec<(IpAddr, Instant)>,
    addrs: &[IpAddr],
    expiry: Instant,
    now: Instant,
) {
    entry.retain(|&(ip, exp)| {
        let keep = exp > now;
        if !keep {
            unindex(by_ip, ip, name);
        }
        keep
    });
    for &ip in addrs {
        match entry.iter_mut().find(|(a, _)| *a == ip) {
            Some((_, exp)) => *exp = (*exp).max(expiry),
            None => {
                entry.push((ip, expiry));
                by_ip.entry(ip).or_default().push(name.clone());
            }
        }
    }
    if entry.len() > MAX_ADDRS_PER_NAME {
        entry.sort_by_key(|&(_, exp)| std::cmp::Reverse(exp));
        for (ip, _) in entry.drain(MAX_ADDRS_PER_NAME..) {
            unindex(by_ip, ip, name);
        }
    }
}

fn unindex(by_ip: &mut HashMap<IpAddr, Vec<Arc<str>>>, ip: IpAddr, name: &str) {
    if let Some(names) = by_ip.get_mut(&ip) {
        names.retain(|n| n.as_ref() != name);
        if names.is_empty() {
            by_ip.remove(&ip);
        }
    }
}

/// Lower-case ASCII, one trailing dot removed; borrows when already normal.
fn normalise(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_until_ttl_then_not() {
        let cache = AnswerCache::new(8);
        let t0 = Instant::now();
        cache.record_at(
            "api.example.test",
            &[ip("198.18.0.10")],
            Duration::from_secs(60),
            t0,
        );
        assert!(cache.answered_at("api.example.test", ip("198.18.0.10"), t0));
        assert!(cache.answered_at(
            "api.example.test",
            ip("198.18.0.10"),
            t0 + Duration::from_secs(59)
        ));
        assert!(!cache.answered_at(
            "api.example.test",
            ip("198.18.0.10"),
            t0 + Duration::from_secs(60)
        ));
        assert!(!cache.answered_at("api.example.test", ip("198.18.0.11"), t0));
        assert!(!cache.answered_at("other.example.test", ip("198.18.0.10"), t0));
        // The real clock agrees: recorded just now, still live.
        cache.record(
            "now.example.test",
            &[ip("2001:db8::1")],
            Duration::from_secs(60),
        );
        assert!(cache.answered("now.example.test", ip("2001:db8::1")));
    }

    #[test]
    fn ttl_is_clamped_to_floor_and_cap() {
        let cache = AnswerCache::new(8);
        let t0 = Instant::now();
        cache.record_at("zero.test", &[ip("198.18.0.1")], Duration::ZERO, t0);
        assert!(cache.answered_at(
            "zero.test",
            ip("198.18.0.1"),
            t0 + MIN_CACHE_TTL - Duration::from_millis(1)
        ));
        assert!(!cache.answered_at("zero.test", ip("198.18.0.1"), t0 + MIN_CACHE_TTL));
        cache.record_at(
            "week.test",
            &[ip("198.18.0.2")],
            Duration::from_secs(7 * 86400),
            t0,
        );
        assert!(cache.answered_at(
            "week.test",
            ip("198.18.0.2"),
            t0 + MAX_CACHE_TTL - Duration::from_millis(1)
        ));
        assert!(!cache.answered_at("week.test", ip("198.18.0.2"), t0 + MAX_CACHE_TTL));
    }

    #[test]
    fn names_are_case_insensitive_and_ignore_a_trailing_dot() {
        let cache = AnswerCache::new(8);
        cache.record(
            "API.Example.TEST.",
            &[ip("198.18.0.10")],
            Duration::from_secs(60),
        );
        assert!(cache.answered("api.example.test", ip("198.18.0.10")));
        assert!(cache.answered("api.EXAMPLE.test.", ip("198.18.0.10")));
        assert!(!cache.answered("api.example.test..", ip("198.18.0.10")));
        assert_eq!(
            cache.names_for(ip("198.18.0.10")),
            vec![Arc::<str>::from("api.example.test")]
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn capacity_evicts_the_least_recently_used_name() {
        let cache = AnswerCache::new(2);
        let ttl = Duration::from_secs(60);
        cache.record("a.test", &[ip("198.18.0.1")], ttl);
        cache.record("b.test", &[ip("198.18.0.2")], ttl);
        // Touch a, so b is the least recently used.
        assert!(cache.answered("a.test", ip("198.18.0.1")));
        cache.record("c.test", &[ip("198.18.0.3")], ttl);
        assert_eq!(cache.len(), 2);
        assert!(cache.answered("a.test", ip("198.18.0.1")));
        assert!(!cache.answered("b.test", ip("198.18.0.2")));
        assert!(cache.answered("c.test", ip("198.18.0.3")));
        // The reverse index forgot b as well.
        assert!(cache.names_for(ip("198.18.0.2")).is_empty());
        assert_eq!(cache.inner.lock().by_ip.len(), 2);
    }

    #[test]
    fn addresses_per_name_are_bounded() {
        let cache = AnswerCache::new(2);
        let t0 = Instant::now();
        let many: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([198, 18, 1, i])).collect();
        cache.record_at("many.test", &many[..50], Duration::from_secs(10), t0);
        cache.record_at("many.test", &many[50..], Duration::from_secs(20), t0);
        let inner = cache.inner.lock();
        assert_eq!(
            inner.names.peek("many.test").unwrap().len(),
            MAX_ADDRS_PER_NAME
        );
        assert_eq!(inner.by_ip.len(), MAX_ADDRS_PER_NAME);
        drop(inner);
        // The later-expiring batch won (its first 32; ties keep recording order).
        assert!(cache.answered_at("many.test", many[50], t0));
        assert!(cache.answered_at("many.test", many[81], t0));
        assert!(!cache.answered_at("many.test", many[82], t0));
        assert!(!cache.answered_at("many.test", many[0], t0));
    }

    #[test]
    fn a_and_aaaa_answers_accumulate() {
        let cache = AnswerCache::new(4);
        let ttl = Duration::from_secs(60);
        cache.record("dual.test", &[ip("198.18.0.1")], ttl);
        cache.record("dual.test", &[ip("2001:db8::1")], ttl);
        assert!(cache.answered("dual.test", ip("198.18.0.1")));
        assert!(cache.answered("dual.test", ip("2001:db8::1")));
    }

    #[test]
    fn names_for_lists_every_live_name_and_forgets_expired_ones() {
        let cache = AnswerCache::new(8);
        let t0 = Instant::now();
        let shared = ip("198.18.0.80");
        cache.record_at("one.test", &[shared], Duration::from_secs(10), t0);
        cache.record_at(
            "two.test",
            &[shared, ip("198.18.0.81")],
            Duration::from_secs(100),
            t0,
        );
        let mut names = cache.names_for_at(shared, t0);
        names.sort();
        assert_eq!(
            names,
            vec![Arc::<str>::from("one.test"), Arc::from("two.test")]
        );
        assert_eq!(
            cache.names_for_at(shared, t0 + Duration::from_secs(50)),
            vec![Arc::<str>::from("two.test")]
        );
        // one.test had nothing else: gone entirely, from both sides.
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.inner.lock().by_ip[&shared].len(), 1);
        assert!(
            cache
                .names_for_at(shared, t0 + Duration::from_secs(100))
                .is_empty()
        );
        assert!(cache.names_for(ip("198.18.0.99")).is_empty());
    }

    #[test]
    fn re_recording_extends_and_prunes() {
        let cache = AnswerCache::new(8);
        let t0 = Instant::now();
        cache.record_at(
            "r.test",
            &[ip("198.18.0.1"), ip("198.18.0.2")],
            Duration::from_secs(10),
            t0,
        );
        let t1 = t0 + Duration::from_secs(20);
        cache.record_at("r.test", &[ip("198.18.0.2")], Duration::from_secs(10), t1);
        assert!(cache.answered_at("r.test", ip("198.18.0.2"), t1));
        assert!(!cache.answered_at("r.test", ip("198.18.0.1"), t1));
        // The expired address was pruned from the reverse index on the re-record.
        assert!(!cache.inner.lock().by_ip.contains_key(&ip("198.18.0.1")));
    }

    #[test]
    fn empty_inputs_record_nothing() {
        let cache = AnswerCache::new(0);
        cache.record(".", &[ip("198.18.0.1")], Duration::from_secs(60));
        cache.record("x.test", &[], Duration::from_secs(60));
        assert_eq!(cache.len(), 0);
        assert!(format!("{cache:?}").contains("capacity: 1"));
    }
}
