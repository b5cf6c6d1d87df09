//! The token cache: bounded LRU of access tokens with their deadline, plus the exchanges in
//! flight (one per key; every concurrent caller waits for the same result).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::TokenKey;
use crate::credentials::{CredentialError, Secret};

/// The published result of one exchange.
pub(super) type Outcome = Option<Result<Secret, CredentialError>>;

#[derive(Debug)]
struct Cached {
    secret: Secret,
    until: Instant,
}

/// Where a caller stands for a key.
pub(super) enum Lookup {
    Hit(Secret),
    /// An exchange for the key is running: wait on this.
    Shared(watch::Receiver<Outcome>),
    /// The caller must start the exchange and publish through this sender.
    Lead(watch::Sender<Outcome>, watch::Receiver<Outcome>),
}

#[derive(Debug)]
pub(super) struct TokenCache {
    entries: Mutex<LruCache<TokenKey, Cached>>,
    inflight: Mutex<HashMap<TokenKey, watch::Receiver<Outcome>>>,
}

impl TokenCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh cached token, a running exchange to join, or the lead on a new one.
    pub fn lookup(&self, key: &TokenKey) -> Lookup {
        {
            let mut entries = self.entries.lock();
            match entries.get(key) {
                Some(c) if c.until > Instant::now() => return Lookup::Hit(c.secret.clone()),
                Some(_) => {
                    entries.pop(key);
                }
                None => {}
            }
        }
        let mut inflight = self.inflight.lock();
        if let Some(rx) = inflight.get(key) {
            // A closed sender means the exchange task ended without `finish` (cancelled or
            // panicked): joining it would fail forever, so this caller takes the lead.
            if rx.has_changed().is_ok() {
                return Lookup::Shared(rx.clone());
            }
        }
        // Re-check under the in-flight lock: an exchange may have finished in between.
        if let Some(c) = self.entries.lock().get(key)
            && c.until > Instant::now()
        {
            return Lookup::Hit(c.secret.clone());
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.clone(), rx.clone());
        Lookup::Lead(tx, rx)
    }

    /// Record an exchange's result: store a token that is good until `until` (if any), then
    /// retire the in-flight entry. The caller publishes on its sender afterwards.
    pub fn finish(&self, key: &TokenKey, stored: Option<(Secret, Instant)>) {
        if let Some((secret, until)) = stored {
            self.entries
                .lock()
                .put(key.clone(), Cached { secret, until });
        }
        self.inflight.lock().remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn key(audience: &str) -> super::super::TokenKey {
        super::super::TokenKey {
            endpoint: "https://sts.test/token".into(),
            grant: palisade_policy::model::GrantType::ClientCredentials,
            svid_audience: "sts.test".into(),
            audience: Some(audience.into()),
            scope: None,
        }
    }

    #[test]
    fn single_flight_and_recovery_from_an_abandoned_exchange() {
        let cache = TokenCache::new(NonZeroUsize::new(4).unwrap());
        let k = key("a");
        let Lookup::Lead(tx, _rx) = cache.lookup(&k) else {
            panic!("the first caller leads")
        };
        assert!(matches!(cache.lookup(&k), Lookup::Shared(_)));
        assert!(matches!(cache.lookup(&key("b")), Lookup::Lead(..)));
        // The leader goes away without finishing: the next caller must not wait on it.
        drop(tx);
        let Lookup::Lead(tx, _rx) = cache.lookup(&k) else {
            panic!("an abandoned exchange is replaced, not joined")
        };
        let secret = Secret::new("tok").unwrap();
        cache.finish(
            &k,
            Some((
                secret.clone(),
                Instant::now() + std::time::Duration::from_secs(60),
            )),
        );
        tx.send_replace(Some(Ok(secret)));
        assert!(matches!(cache.lookup(&k), Lookup::Hit(s) if s.expose() == "tok"));
    }
}
