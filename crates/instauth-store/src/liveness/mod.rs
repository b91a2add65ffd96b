//! The liveness cache: which agents may use a session right now, without a database read.
//!
//! An entry says "agent A is live (not deleted, in the latest build of a live workspace W) at
//! session generation G". Every change that can revoke (a new build, a deleted workspace, a
//! revoked session, a reset agent key) invalidates workspace W:
//! - in this process at once, by the store method that made the change;
//! - in every other process through the database: on PostgreSQL a trigger NOTIFYs channel
//!   `instauth_liveness` and each process LISTENs ([`watch::listen_postgres`]); on SQLite a trigger
//!   appends to `liveness_changes`, which each process polls four times a second
//!   ([`watch::poll_sqlite`]).
//!
//! While that watch is not running (not started yet, or its connection was lost) the cache is
//! off: every check reads the database. When the watch (re)connects the whole cache is dropped,
//! since notifications sent while it was away are lost.
//!
//! Invalidation races with reads: a reader notes the sequence number before it reads the
//! database, and its entry only counts if no invalidation of its workspace (and no reset) came
//! after that number. So an entry read before a revocation and stored after it is never used.
//!
//! Memory is bounded: at most `capacity` agents (16 shards; a full shard is emptied and refills
//! from the database). An entry is 48 bytes plus the hash table's control byte and slack.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

mod watch;

pub(crate) use watch::start_watch;
pub use watch::LIVENESS_CHANNEL;

/// Default bound on cached agents (≈ 100 MB at the worst load factor).
pub const DEFAULT_CAPACITY: usize = 1 << 20;
const SHARDS: usize = 16;

/// What the cache knows of a live agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// The agent's workspace.
    pub workspace_id: Uuid,
    /// Its current session generation.
    pub session_generation: i32,
}

#[derive(Clone, Copy)]
struct Entry {
    live: Live,
    /// Sequence number noted before the database read that produced the entry.
    read_at: u64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Checks answered from the cache.
    pub hits: u64,
    /// Checks that read the database.
    pub misses: u64,
    /// Workspaces invalidated (local changes and other processes' notifications).
    pub invalidations: u64,
    /// Times the whole cache was dropped (watch lost or re-established, bound reached).
    pub resets: u64,
    /// Agents cached now.
    pub entries: u64,
    /// Bytes the cache's tables hold now.
    pub bytes: u64,
    /// True while the watch runs and the cache is in use.
    pub active: bool,
}

type Shard<K, V> = Mutex<HashMap<K, V>>;

/// The cache of one store (shared by its clones).
pub(crate) struct Liveness {
    agents: Vec<Shard<Uuid, Entry>>,
    /// Static agent token hash → agent (immutable while the agent lives).
    tokens: Vec<Shard<[u8; 32], Uuid>>,
    /// Workspace → sequence number of its last invalidation.
    invalidated: Vec<Shard<Uuid, u64>>,
    /// Agents a read found not live (deleted, in a deleted workspace or a superseded build),
    /// with the read's sequence number. None of these is ever undone, so no invalidation
    /// touches them: a revoked agent that keeps calling is answered without a database read.
    /// Only ids from signed session tokens get here (real agents, so the set is bounded by the
    /// fleet), never a static token's guess.
    gone: Vec<Shard<Uuid, u64>>,
    seq: AtomicU64,
    /// Entries read before this are void (the last reset).
    floor: AtomicU64,
    active: AtomicBool,
    watching: AtomicBool,
    capacity_per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    resets: AtomicU64,
}

fn lock<K, V>(m: &Shard<K, V>) -> MutexGuard<'_, HashMap<K, V>> {
    // A panic while holding a shard cannot leave it half-updated (one insert or remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shards<K, V>() -> Vec<Shard<K, V>> {
    (0..SHARDS).map(|_| Mutex::default()).collect()
}

fn shard_of<K: Hash>(key: &K) -> usize {
    // Fixed keys: the input is a UUID or a SHA-256, already uniform.
    let h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(key);
    (h as usize) % SHARDS
}

impl Liveness {
    pub(crate) fn new(capacity: usize) -> Liveness {
        Liveness {
            agents: shards(),
            tokens: shards(),
            invalidated: shards(),
            gone: shards(),
            seq: AtomicU64::new(1),
            floor: AtomicU64::new(1),
            active: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        }
    }

    /// True the first time it is called: the caller starts the watch.
    pub(crate) fn claim_watch(&self) -> bool {
        !self.watching.swap(true, Ordering::AcqRel)
    }

    /// The sequence number a reader notes before it reads the database.
    pub(crate) fn begin_read(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn valid(&self, e: &Entry) -> bool {
        if e.read_at < self.floor.load(Ordering::Acquire) {
            return false;
        }
        let ws = e.live.workspace_id;
        lock(&self.invalidated[shard_of(&ws)])
            .get(&ws)
            .is_none_or(|&s| s <= e.read_at)
    }

    /// The cached liveness of `agent`, if the cache is on and holds a valid entry.
    pub(crate) fn agent(&self, agent: Uuid) -> Option<Live> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let shard = &self.agents[shard_of(&agent)];
        let entry = lock(shard).get(&agent).copied()?;
        if self.valid(&entry) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            Some(entry.live)
        } else {
            lock(shard).remove(&agent);
            None
        }
    }

    /// The agent a static token hash belongs to, if cached and still valid.
    pub(crate) fn token(&self, hash: &[u8; 32]) -> Option<(Uuid, Live)> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let agent = *lock(&self.tokens[shard_of(hash)]).get(hash)?;
        self.agent(agent).map(|l| (agent, l))
    }

    /// True when a read found `agent` not live (and no reset came since).
    pub(crate) fn gone(&self, agent: Uuid) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let read_at = lock(&self.gone[shard_of(&agent)]).get(&agent).copied();
        let gone = read_at.is_some_and(|r| r >= self.floor.load(Ordering::Acquire));
        if gone {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        gone
    }

    /// The agent a static token was seen live for, whatever its state now.
    pub(crate) fn token_agent(&self, hash: &[u8; 32]) -> Option<Uuid> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.tokens[shard_of(hash)]).get(hash).copied()
    }

    /// True when the agent a cached static token belonged to is now known not live.
    pub(crate) fn token_gone(&self, hash: &[u8; 32]) -> bool {
        self.token_agent(hash).is_some_and(|a| self.gone(a))
    }

    /// Records that a database read that began at `read_at` found `agent` not live.
    pub(crate) fn insert_gone(&self, agent: Uuid, read_at: u64) {
        if !self.active.load(Ordering::Acquire) || read_at < self.floor.load(Ordering::Acquire) {
            return;
        }
        lock(&self.agents[shard_of(&agent)]).remove(&agent);
        let mut shard = lock(&self.gone[shard_of(&agent)]);
        if shard.len() >= self.capacity_per_shard && !shard.contains_key(&agent) {
            shard.clear();
            shard.shrink_to(self.capacity_per_shard);
        }
        shard.insert(agent, read_at);
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Caches what a database read that began at `read_at` found.
    pub(crate) fn insert(&self, agent: Uuid, live: Live, read_at: u64, token: Option<[u8; 32]>) {
        if !self.active.load(Ordering::Acquire) || read_at < self.floor.load(Ordering::Acquire) {
            return;
        }
        {
            let mut shard = lock(&self.agents[shard_of(&agent)]);
            if shard.len() >= self.capacity_per_shard && !shard.contains_key(&agent) {
                shard.clear();
                shard.shrink_to(self.capacity_per_shard);
            }
            shard.insert(agent, Entry { live, read_at });
        }
        if let Some(hash) = token {
            let mut shard = lock(&self.tokens[shard_of(&hash)]);
            if shard.len() >= self.capacity_per_shard && !shard.contains_key(&hash) {
                shard.clear();
            }
            shard.insert(hash, agent);
        }
    }

    /// Voids every entry of `workspace` read before now.
    pub(crate) fn invalidate(&self, workspace: Uuid) {
        let s = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let mut shard = lock(&self.invalidated[shard_of(&workspace)]);
        shard.insert(workspace, s);
        // Bounded: past the agent bound, forgetting them all costs one reset.
        if shard.len() > self.capacity_per_shard {
            drop(shard);
            self.reset();
        }
    }

    /// Voids everything cached so far.
    pub(crate) fn reset(&self) {
        let s = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.floor.store(s, Ordering::Release);
        self.resets.fetch_add(1, Ordering::Relaxed);
        for m in &self.agents {
            let mut shard = lock(m);
            shard.clear();
            shard.shrink_to_fit();
        }
        for m in &self.tokens {
            lock(m).clear();
        }
        for m in &self.invalidated {
            lock(m).clear();
        }
        for m in &self.gone {
            let mut shard = lock(m);
            shard.clear();
            shard.shrink_to_fit();
        }
    }

    /// The watch is running: drop what was cached before and start using the cache.
    pub(super) fn activate(&self) {
        self.reset();
        self.active.store(true, Ordering::Release);
    }

    /// The watch stopped: stop using the cache (and drop it).
    pub(super) fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
        self.reset();
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let slot = |k: usize, v: usize| (k + v + 1) as u64;
        let (mut entries, mut bytes) = (0, 0);
        for m in &self.agents {
            let s = lock(m);
            entries += s.len() as u64;
            bytes += s.capacity() as u64 * slot(size_of::<Uuid>(), size_of::<Entry>());
        }
        for m in &self.tokens {
            bytes += lock(m).capacity() as u64 * slot(32, size_of::<Uuid>());
        }
        for m in &self.invalidated {
            bytes += lock(m).capacity() as u64 * slot(size_of::<Uuid>(), 8);
        }
        for m in &self.gone {
            let s = lock(m);
            entries += s.len() as u64;
            bytes += s.capacity() as u64 * slot(size_of::<Uuid>(), 8);
        }
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            entries,
            bytes,
            active: self.active.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn live(ws: Uuid, generation: i32) -> Live {
        Live {
            workspace_id: ws,
            session_generation: generation,
        }
    }

    #[test]
    fn off_until_the_watch_runs_and_dropped_when_it_stops() {
        let c = Liveness::new(100);
        let (a, ws) = (Uuid::new_v4(), Uuid::new_v4());
        c.insert(a, live(ws, 0), c.begin_read(), None);
        assert_eq!(c.agent(a), None, "off: nothing is cached");
        c.activate();
        c.insert(a, live(ws, 0), c.begin_read(), None);
        assert_eq!(c.agent(a), Some(live(ws, 0)));
        c.deactivate();
        assert_eq!(c.agent(a), None);
        c.activate();
        assert_eq!(c.agent(a), None, "re-established: the old entries are gone");
    }

    #[test]
    fn an_invalidation_during_a_read_voids_what_the_read_found() {
        let c = Liveness::new(100);
        c.activate();
        let (a, b, ws, other) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let before = c.begin_read();
        c.invalidate(ws);
        c.insert(a, live(ws, 0), before, None);
        assert_eq!(
            c.agent(a),
            None,
            "read before the invalidation, stored after"
        );
        c.insert(b, live(other, 0), before, None);
        assert_eq!(
            c.agent(b),
            Some(live(other, 0)),
            "another workspace is unaffected"
        );
        let after = c.begin_read();
        c.insert(a, live(ws, 1), after, None);
        assert_eq!(c.agent(a), Some(live(ws, 1)));
        c.invalidate(ws);
        assert_eq!(c.agent(a), None);
        let s = c.stats();
        assert_eq!((s.hits, s.invalidations), (2, 2));
    }

    #[test]
    fn a_reset_during_a_read_voids_it_too() {
        let c = Liveness::new(100);
        c.activate();
        let (a, ws) = (Uuid::new_v4(), Uuid::new_v4());
        let before = c.begin_read();
        c.reset();
        c.insert(a, live(ws, 0), before, Some([7; 32]));
        assert_eq!(c.agent(a), None);
        assert_eq!(c.token(&[7; 32]), None);
        c.insert(a, live(ws, 0), c.begin_read(), Some([7; 32]));
        assert_eq!(c.token(&[7; 32]), Some((a, live(ws, 0))));
    }

    #[test]
    fn gone_agents_stay_gone_until_a_reset() {
        let c = Liveness::new(1600);
        let (a, ws) = (Uuid::new_v4(), Uuid::new_v4());
        c.insert_gone(a, c.begin_read());
        assert!(!c.gone(a), "off: nothing is cached");
        c.activate();
        c.insert(a, live(ws, 0), c.begin_read(), Some([7; 32]));
        c.insert_gone(a, c.begin_read());
        assert!(c.gone(a) && c.token_gone(&[7; 32]));
        assert_eq!(c.agent(a), None, "the live entry went with it");
        c.invalidate(ws);
        assert!(c.gone(a), "an invalidation never undoes it");
        let before = c.begin_read();
        c.reset();
        assert!(!c.gone(a));
        c.insert_gone(a, before);
        assert!(!c.gone(a), "read before the reset");
        for _ in 0..20_000 {
            c.insert_gone(Uuid::new_v4(), c.begin_read());
        }
        assert!(c.stats().entries <= 1600, "{:?}", c.stats());
    }

    #[test]
    fn memory_is_bounded() {
        let c = Liveness::new(1600);
        c.activate();
        let ws = Uuid::new_v4();
        for _ in 0..20_000 {
            c.insert(Uuid::new_v4(), live(ws, 0), c.begin_read(), None);
        }
        let s = c.stats();
        assert!(s.entries <= 1600, "{s:?}");
        assert!(s.bytes < 1600 * 2 * 70, "{s:?}");
        for _ in 0..5_000 {
            c.invalidate(Uuid::new_v4());
        }
        let n: usize = c.invalidated.iter().map(|m| lock(m).len()).sum();
        assert!(n <= 1600 + SHARDS, "{n}");
    }
}
