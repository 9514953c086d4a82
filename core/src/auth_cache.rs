//! The short negative cache of B2: after the broker refuses a (user, password, vhost), new
//! clients with the same credentials are refused from memory for a while, so a burst of bad
//! logins does not become a burst of broker dials.

use crate::credentials::Credentials;
use crate::reply::Reply;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Refusals remembered for `ttl`, at most `capacity` of them (oldest dropped first).
#[derive(Debug)]
pub struct AuthCache {
    ttl: Duration,
    capacity: usize,
    entries: BTreeMap<Credentials, (Instant, Reply)>,
    /// Insertion order, for eviction; stale pairs are skipped.
    order: VecDeque<(Instant, Credentials)>,
}

impl AuthCache {
    /// A cache keeping refusals for `ttl`; a zero `ttl` disables it.
    #[must_use]
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        AuthCache {
            ttl,
            capacity,
            entries: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The broker's refusal of these credentials, if it is recent.
    #[must_use]
    pub fn check(&self, now: Instant, key: &Credentials) -> Option<&Reply> {
        self.entries
            .get(key)
            .filter(|(expires, _)| now < *expires)
            .map(|(_, r)| r)
    }

    /// Remembers a refusal.
    pub fn insert(&mut self, now: Instant, key: Credentials, reply: Reply) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        self.expire(now);
        while self.entries.len() >= self.capacity {
            let Some((at, k)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&k).is_some_and(|(e, _)| *e == at) {
                self.entries.remove(&k);
            }
        }
        let expires = now + self.ttl;
        self.order.push_back((expires, key.clone()));
        self.entries.insert(key, (expires, reply));
    }

    /// Entries currently held (expired ones included until the next insert).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let Some((at, k)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&k).is_some_and(|(e, _)| *e == at) {
                self.entries.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;
    use crate::reply::{self, Reply};

    fn key(user: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: Secret::new("bad"),
            vhost: "/".into(),
        }
    }

    #[test]
    fn remembers_until_expiry() {
        let t0 = crate::test_epoch();
        let mut c = AuthCache::new(Duration::from_secs(5), 10);
        let r = Reply::new(reply::ACCESS_REFUSED, "login refused");
        c.insert(t0, key("a"), r.clone());
        assert_eq!(c.check(t0 + Duration::from_secs(4), &key("a")), Some(&r));
        assert_eq!(c.check(t0 + Duration::from_secs(5), &key("a")), None);
        assert_eq!(c.check(t0, &key("b")), None);
        c.insert(t0 + Duration::from_secs(6), key("b"), r);
        assert_eq!(c.len(), 1, "the expired entry was dropped");
    }

    #[test]
    fn bounded() {
        let t0 = crate::test_epoch();
        let mut c = AuthCache::new(Duration::from_secs(5), 2);
        let r = Reply::new(reply::ACCESS_REFUSED, "x");
        for u in ["a", "b", "c"] {
            c.insert(t0, key(u), r.clone());
        }
        assert_eq!(c.len(), 2);
        assert!(c.check(t0, &key("a")).is_none());
        assert!(c.check(t0, &key("c")).is_some());
    }
}
