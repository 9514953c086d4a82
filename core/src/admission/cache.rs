//! What warren knows of the broker's verdicts on credentials (B2): accounts it accepted
//! recently (so a client with them gets `Tune` at once), and logins and vhosts it refused
//! (so a burst of bad logins is not a burst of broker dials). Revocations from the broker's
//! event exchange remove what they make untrue.

use crate::credentials::{Account, Credentials};
use crate::reply::Reply;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A bounded map whose entries expire: the oldest insertion goes first when it is full.
#[derive(Debug)]
struct Expiring<K, V> {
    capacity: usize,
    /// Value and expiry (`None`: until removed).
    entries: BTreeMap<K, (Option<Instant>, V, u64)>,
    /// Insertion order with a sequence number; pairs whose entry was replaced are skipped.
    order: VecDeque<(u64, K)>,
    seq: u64,
}

impl<K: Ord + Clone, V> Expiring<K, V> {
    fn new(capacity: usize) -> Self {
        Expiring {
            capacity,
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    fn get(&self, now: Instant, key: &K) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(expires, _, _)| expires.is_none_or(|at| now < at))
            .map(|(_, v, _)| v)
    }

    fn insert(&mut self, key: K, value: V, expires: Option<Instant>) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let Some((seq, k)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&k).is_some_and(|e| e.2 == seq) {
                self.entries.remove(&k);
            }
        }
        self.seq += 1;
        self.order.push_back((self.seq, key.clone()));
        self.entries.insert(key, (expires, value, self.seq));
        // Keep the order list from growing past the live entries by much.
        if self.order.len() > 2 * self.capacity.max(8) {
            let entries = &self.entries;
            self.order
                .retain(|(seq, k)| entries.get(k).is_some_and(|e| e.2 == *seq));
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Most accounts and vhost refusals remembered at once.
const CAPACITY: usize = 10_000;

/// The broker's recent verdicts.
#[derive(Debug)]
pub(crate) struct CredentialCache {
    /// How long an accepted account is trusted (`None`: until an event revokes it).
    proven_ttl: Option<Duration>,
    /// How long a refusal is remembered (zero: not at all).
    refusal_ttl: Duration,
    proven: Expiring<Account, ()>,
    refused_logins: Expiring<Account, Reply>,
    refused_vhosts: Expiring<Credentials, Reply>,
}

impl CredentialCache {
    pub(crate) fn new(proven_ttl: Option<Duration>, refusal_ttl: Duration) -> Self {
        CredentialCache {
            proven_ttl,
            refusal_ttl,
            proven: Expiring::new(CAPACITY),
            refused_logins: Expiring::new(if refusal_ttl.is_zero() { 0 } else { CAPACITY }),
            refused_vhosts: Expiring::new(if refusal_ttl.is_zero() { 0 } else { CAPACITY }),
        }
    }

    /// Changes how long refusals are remembered (zero: not at all); what is cached now keeps
    /// its expiry.
    pub(crate) fn set_refusal_ttl(&mut self, ttl: Duration) {
        if ttl.is_zero() != self.refusal_ttl.is_zero() {
            let capacity = if ttl.is_zero() { 0 } else { CAPACITY };
            self.refused_logins = Expiring::new(capacity);
            self.refused_vhosts = Expiring::new(capacity);
        }
        self.refusal_ttl = ttl;
    }

    /// Changes how long accepted accounts are trusted; what is cached now keeps its expiry.
    pub(crate) fn set_proven_ttl(&mut self, ttl: Option<Duration>) {
        self.proven_ttl = ttl;
    }

    pub(crate) fn is_proven(&self, now: Instant, account: &Account) -> bool {
        self.proven.get(now, account).is_some()
    }

    pub(crate) fn refused_login(&self, now: Instant, account: &Account) -> Option<&Reply> {
        self.refused_logins.get(now, account)
    }

    pub(crate) fn refused_vhost(&self, now: Instant, key: &Credentials) -> Option<&Reply> {
        self.refused_vhosts.get(now, key)
    }

    /// The broker accepted this account.
    pub(crate) fn prove(&mut self, now: Instant, account: Account) {
        self.refused_logins.retain(|a| *a != account);
        let expires = self.proven_ttl.map(|ttl| now + ttl);
        self.proven.insert(account, (), expires);
    }

    /// The broker refused this account's login.
    pub(crate) fn refuse_login(&mut self, now: Instant, account: Account, reply: Reply) {
        self.proven.retain(|a| *a != account);
        self.refused_logins
            .insert(account, reply, Some(now + self.refusal_ttl));
    }

    /// The broker refused this account this vhost.
    pub(crate) fn refuse_vhost(&mut self, now: Instant, key: Credentials, reply: Reply) {
        self.refused_vhosts
            .insert(key, reply, Some(now + self.refusal_ttl));
    }

    /// Forgets every verdict on `user`'s logins (its password changed, it was created or
    /// deleted).
    pub(crate) fn forget_user(&mut self, user: &str) {
        self.proven.retain(|a| a.user != user);
        self.refused_logins.retain(|a| a.user != user);
        self.refused_vhosts.retain(|c| c.user != user);
    }

    /// Forgets refusals of `vhost` (to `user`, or to anyone): it was created, or permissions
    /// on it were granted.
    pub(crate) fn forget_vhost_refusals(&mut self, user: Option<&str>, vhost: &str) {
        self.refused_vhosts
            .retain(|c| !(c.vhost == vhost && user.is_none_or(|u| c.user == u)));
    }

    /// Forgets every accepted account (the events that would revoke them may have been
    /// missed).
    pub(crate) fn forget_proven(&mut self) {
        self.proven.clear();
    }

    /// Accounts and refusals held (expired ones included until they are pushed out); the
    /// tests check the cache stays bounded with it.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.proven.len() + self.refused_logins.len() + self.refused_vhosts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;
    use crate::reply;

    fn account(user: &str, password: &str) -> Account {
        Account {
            user: user.into(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn proven_accounts_expire_after_their_ttl_or_never() {
        let t0 = crate::test_epoch();
        let s = Duration::from_secs;
        let mut c = CredentialCache::new(Some(s(30)), s(5));
        c.prove(t0, account("a", "p"));
        assert!(c.is_proven(t0 + s(29), &account("a", "p")));
        assert!(!c.is_proven(t0 + s(30), &account("a", "p")));
        assert!(!c.is_proven(t0, &account("a", "other")));
        c.set_proven_ttl(None);
        c.prove(t0, account("b", "p"));
        assert!(c.is_proven(t0 + s(1_000_000), &account("b", "p")));
    }

    #[test]
    fn a_refusal_replaces_a_proof_and_the_other_way_round() {
        let t0 = crate::test_epoch();
        let s = Duration::from_secs;
        let mut c = CredentialCache::new(None, s(5));
        let a = account("a", "p");
        let r = Reply::new(reply::ACCESS_REFUSED, "no");
        c.prove(t0, a.clone());
        c.refuse_login(t0, a.clone(), r.clone());
        assert!(!c.is_proven(t0, &a));
        assert_eq!(c.refused_login(t0 + s(4), &a), Some(&r));
        assert_eq!(c.refused_login(t0 + s(5), &a), None);
        c.prove(t0, a.clone());
        assert_eq!(c.refused_login(t0, &a), None);
    }

    #[test]
    fn revocations_forget_what_they_make_untrue() {
        let t0 = crate::test_epoch();
        let mut c = CredentialCache::new(None, Duration::from_secs(5));
        let r = Reply::new(reply::NOT_ALLOWED, "no");
        let key = |u: &str, v: &str| Credentials {
            user: u.into(),
            password: Secret::new("p"),
            vhost: v.into(),
        };
        c.prove(t0, account("a", "p"));
        c.prove(t0, account("b", "p"));
        c.refuse_vhost(t0, key("a", "v1"), r.clone());
        c.refuse_vhost(t0, key("b", "v1"), r.clone());
        c.refuse_vhost(t0, key("b", "v2"), r.clone());
        c.forget_user("a");
        assert!(!c.is_proven(t0, &account("a", "p")));
        assert!(c.refused_vhost(t0, &key("a", "v1")).is_none());
        assert!(c.is_proven(t0, &account("b", "p")));
        c.forget_vhost_refusals(Some("b"), "v1");
        assert!(c.refused_vhost(t0, &key("b", "v1")).is_none());
        assert!(c.refused_vhost(t0, &key("b", "v2")).is_some());
        c.forget_vhost_refusals(None, "v2");
        assert!(c.refused_vhost(t0, &key("b", "v2")).is_none());
        c.forget_proven();
        assert!(!c.is_proven(t0, &account("b", "p")));
    }

    #[test]
    fn bounded_and_a_zero_refusal_ttl_remembers_nothing() {
        let t0 = crate::test_epoch();
        let mut e = Expiring::new(2);
        for k in ["a", "b", "c", "c", "d"] {
            e.insert(k.to_owned(), (), None);
        }
        assert_eq!(e.len(), 2);
        assert!(e.get(t0, &"d".to_owned()).is_some());
        assert!(e.get(t0, &"c".to_owned()).is_some());
        assert!(e.get(t0, &"a".to_owned()).is_none());
        let mut c = CredentialCache::new(None, Duration::ZERO);
        c.refuse_login(
            t0,
            account("a", "p"),
            Reply::new(reply::ACCESS_REFUSED, "no"),
        );
        assert_eq!(c.len(), 0);
    }
}
