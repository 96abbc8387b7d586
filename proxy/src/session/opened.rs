//! Cookie values already opened, so a browser's every request does not pay for base64,
//! AES-GCM, lz4 and deserializing again.
//!
//! A value is self-contained (sealed with the one cookie secret), so the same text always
//! opens to the same session; only values that authenticated get here, and expiry is still
//! checked on every request. One shard per server worker ([`crate::worker::current`]): a
//! worker's lock is only ever taken on its own thread, so no cache line moves between CPUs
//! on the request path.
//!
//! Entries are found by a keyed hash of the value's last [`TAIL`] bytes, which end in the
//! AES-GCM tag (random for every sealed value), and confirmed by comparing the whole text:
//! hashing a 1-4 KiB cookie with SipHash on every request cost more than the lookup. A
//! forged value with a cached value's tail finds that entry, fails the comparison and is
//! opened (and refused) like any other.
//!
//! Bounded by bytes, each shard emptied when full: memory stays small and an attacker's flood
//! of distinct valid cookies costs no more than opening them.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use super::Session;
use crate::worker::PerWorker;

/// Key text plus an estimate of the session, counted against this budget (all shards).
pub(super) const BUDGET: usize = 1024 * 1024;
/// How much of a value's end is hashed: more than the 22 base64 characters of a GCM tag.
const TAIL: usize = 32;

pub(super) struct Opened {
    shards: PerWorker<Shard>,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u64, (Box<str>, Arc<Session>)>,
    bytes: usize,
}

impl Opened {
    pub(super) fn new(workers: usize) -> Self {
        Opened {
            shards: PerWorker::new(workers),
            hasher: RandomState::new(),
        }
    }

    fn key(&self, value: &str) -> u64 {
        let bytes = value.as_bytes();
        self.hasher.hash_one(&bytes[bytes.len().saturating_sub(TAIL)..])
    }

    pub(super) fn get(&self, value: &str) -> Option<Arc<Session>> {
        let key = self.key(value);
        self.shards
            .current()
            .entries
            .get(&key)
            .filter(|(text, _)| **text == *value)
            .map(|(_, session)| session.clone())
    }

    pub(super) fn insert(&self, value: &str, session: Arc<Session>) {
        let budget = BUDGET / self.shards.len();
        let size = value.len() * 2 + std::mem::size_of::<Session>() + session.groups.iter().map(|g| g.len() + 24).sum::<usize>();
        if size > budget / 4 {
            return;
        }
        let key = self.key(value);
        let mut shard = self.shards.current();
        if shard.bytes + size > budget {
            shard.entries.clear();
            shard.entries.shrink_to(64);
            shard.bytes = 0;
        }
        // Another value with the same tail hash is replaced; its bytes stay counted until
        // the shard is next emptied, which only makes that come sooner.
        shard.entries.insert(key, (value.into(), session));
        shard.bytes += size;
    }

    /// Bytes counted against the budget, all shards.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.shards.each().map(|s| s.bytes).sum()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.each().map(|s| s.entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(email: &str) -> Arc<Session> {
        Arc::new(Session {
            email: email.into(),
            ..Session::default()
        })
    }

    #[test]
    fn a_value_with_a_cached_values_tail_is_not_that_value() {
        let opened = Opened::new(2);
        let tail = "T".repeat(TAIL);
        let real = format!("AAAA{tail}");
        opened.insert(&real, session("alice@example.com"));
        assert_eq!(opened.get(&real).unwrap().email, "alice@example.com");
        assert!(opened.get(&format!("BBBB{tail}")).is_none(), "same tail, other text");
        assert!(opened.get(&tail).is_none(), "the tail alone");
        // Short values hash whole.
        opened.insert("short", session("bob@example.com"));
        assert_eq!(opened.get("short").unwrap().email, "bob@example.com");
        assert!(opened.get("shor").is_none());
    }

    #[test]
    fn each_worker_has_its_own_shard() {
        let opened = Arc::new(Opened::new(2));
        crate::worker::set_current(0);
        opened.insert("value-0", session("zero@example.com"));
        let other = opened.clone();
        let seen_by_worker_1 = std::thread::spawn(move || {
            crate::worker::set_current(1);
            let seen = other.get("value-0").is_some();
            other.insert("value-1", session("one@example.com"));
            seen
        })
        .join()
        .unwrap();
        assert!(!seen_by_worker_1, "worker 1 opens for itself");
        assert!(opened.get("value-0").is_some());
        assert!(opened.get("value-1").is_none(), "worker 0 does not see worker 1's entries");
        assert_eq!(opened.len(), 2);
    }
}
