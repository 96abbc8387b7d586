//! The identity headers of a cached session, made once per worker instead of on every
//! request: for an Entra session with 120 groups, joining them into `X-Forwarded-Groups`
//! and checking 4 KiB of header bytes was a sixth of the request's instructions
//! (BENCHMARKS.md).
//!
//! Keyed by the session's `Arc` (the opened-cookie cache hands every request with the same
//! cookie the same one) and holding it, so an address is never reused while its entry
//! lives. A refreshed session is a new `Arc` and gets its own entry. Bounded by bytes per
//! worker, emptied when full, like the opened-cookie cache.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use crate::config::HeaderConfig;
use crate::headers::set_upstream_headers;
use crate::session::Session;
use crate::worker::PerWorker;

/// Header bytes held per worker.
const BUDGET: usize = 256 * 1024;

pub(super) struct IdentityMemo {
    shards: PerWorker<Shard>,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<usize, (Arc<Session>, HeaderMap)>,
    bytes: usize,
}

impl IdentityMemo {
    pub(super) fn new(workers: usize) -> Self {
        IdentityMemo {
            shards: PerWorker::new(workers),
        }
    }

    /// Sets `session`'s identity headers on `headers`, exactly as [`set_upstream_headers`]
    /// would (it only ever inserts, so inserting its result again is the same).
    pub(super) fn set(&self, headers: &mut HeaderMap, cfg: &HeaderConfig, session: &Arc<Session>) {
        let mut shard = self.shards.current();
        let key = Arc::as_ptr(session) as usize;
        if !shard.entries.contains_key(&key) {
            let mut values = HeaderMap::new();
            set_upstream_headers(&mut values, cfg, session);
            let size: usize = values.iter().map(|(n, v)| n.as_str().len() + v.len() + 64).sum();
            if shard.bytes + size > BUDGET {
                shard.entries.clear();
                shard.entries.shrink_to(16);
                shard.bytes = 0;
            }
            shard.bytes += size;
            shard.entries.insert(key, (session.clone(), values));
        }
        let (_, values) = &shard.entries[&key];
        for (name, value) in values {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(groups: usize) -> Arc<Session> {
        Arc::new(Session {
            user: "erin".into(),
            email: "erin@example.com".into(),
            groups: (0..groups).map(|i| format!("group-{i}")).collect(),
            ..Session::default()
        })
    }

    fn computed(cfg: &HeaderConfig, s: &Session) -> HeaderMap {
        let mut h = HeaderMap::new();
        set_upstream_headers(&mut h, cfg, s);
        h
    }

    #[test]
    fn the_memo_sets_what_the_session_would_and_a_new_session_gets_its_own() {
        let cfg = HeaderConfig {
            pass_user_headers: true,
            pass_basic_auth: true,
            ..HeaderConfig::default()
        };
        let memo = IdentityMemo::new(1);
        let first = session(3);
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            h.insert("x-kept", "yes".parse().unwrap());
            memo.set(&mut h, &cfg, &first);
            let mut expected = computed(&cfg, &first);
            expected.insert("x-kept", "yes".parse().unwrap());
            assert_eq!(h, expected);
        }
        // A refreshed session (a new Arc) with other groups: never the old values.
        let refreshed = session(5);
        let mut h = HeaderMap::new();
        memo.set(&mut h, &cfg, &refreshed);
        assert_eq!(h, computed(&cfg, &refreshed));
        assert_eq!(h["x-forwarded-groups"], "group-0,group-1,group-2,group-3,group-4");
    }

    #[test]
    fn the_memo_stays_within_its_budget() {
        let cfg = HeaderConfig {
            pass_user_headers: true,
            ..HeaderConfig::default()
        };
        let memo = IdentityMemo::new(1);
        let mut held = Vec::new();
        for _ in 0..400 {
            let s = session(120);
            let mut h = HeaderMap::new();
            memo.set(&mut h, &cfg, &s);
            assert_eq!(h, computed(&cfg, &s));
            held.push(s);
            assert!(memo.shards.current().bytes <= BUDGET);
        }
        assert!(memo.shards.current().entries.len() < 400);
    }
}
