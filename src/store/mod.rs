//! Persistent node state on sled: identity, boot counter, last role and term,
//! admin overrides (drains, weights), last health states and a capped event
//! log. A restarted or rebooted node keeps its drains and its history.
//!
//! Layout: one sled tree per kind of state. Every value is a JSON record
//! with a version field, `{"v":1,...}`, so a later duet can change a record
//! without guessing what it reads; a record this code cannot decode is
//! skipped with a warning rather than failing the whole store. The `meta`
//! tree holds the store format number; a different number means another duet
//! version wrote this directory.
//!
//! Recovery policy of [`Store::open`]: if sled reports damaged data (or
//! panics while opening), or the store format is not ours, the directory is
//! renamed to `<dir>.corrupt-<unix seconds>` (kept for inspection, never
//! deleted), a warning is logged, a fresh store is created and its first
//! event records the move. A node must come up even if its state did not
//! survive; its drains are lost, which the event says. Plain I/O problems
//! (permissions, read-only or full disk, another process holding the lock)
//! are returned as [`StoreError::Io`] and nothing is moved: the data is
//! probably fine and the operator has to fix the environment.
//!
//! sled itself, on a damaged `db` file, often recovers by silently dropping
//! what it cannot read (tried: random bytes, zeroes, truncation). That case
//! is detected (sled's `conf` existed but our format record is gone) and
//! reported with a warning and a `store` event.
//!
//! Writes return errors for the caller to log; reads of a failing store
//! return empty values and log. Nothing here panics.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One line of the event log (role changes, health transitions, admin actions).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct EventRecord {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub kind: String,
    pub message: String,
}

/// Store layout version, kept in `meta/format`.
pub const FORMAT: u64 = 1;
/// Record version written by this code.
const RECORD_V: u32 = 1;
/// Events kept; older ones are dropped as new ones arrive.
pub const EVENT_CAP: u64 = 1000;

const META: &str = "meta";
const DRAINS: &str = "drains";
const WEIGHTS: &str = "weights";
const HEALTH: &str = "health";
const EVENTS: &str = "events";

const K_FORMAT: &str = "format";
const K_BOOT: &str = "boot_count";
const K_NODE_ID: &str = "node_id";
const K_LAST_ROLE: &str = "last_role";
const K_DRAINS_VERSION: &str = "drains_version";
const K_HOST: &str = "host_changes";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created, read or written:
    /// permissions, a read-only or full file system, or another process
    /// holding sled's lock. Nothing was moved.
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// sled found damaged data, or rejected the directory as written by an
    /// incompatible sled version.
    #[error("state in {path} is damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// The directory was written by a duet with a different store format.
    #[error("state in {path} has store format {found}, this duet uses format {supported}")]
    Incompatible {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// A read or write failed on an open store.
    #[error("store operation failed: {0}")]
    Db(String),
    /// A record could not be encoded (not expected with these plain types).
    #[error("cannot encode record: {0}")]
    Encode(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Db(e.to_string())
    }
}

/// A versioned record: `{"v": 1, ...body}`.
#[derive(Serialize, Deserialize)]
struct Rec<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize, Deserialize)]
struct FormatRec {
    format: u64,
}
#[derive(Serialize, Deserialize)]
struct BootRec {
    count: u64,
}
#[derive(Serialize, Deserialize)]
struct NodeIdRec {
    node_id: String,
}
#[derive(Serialize, Deserialize)]
struct RoleRec {
    role: String,
    term: u64,
    ts_ms: u64,
}
/// What `duet run` changed on the host, with the values it found, so a
/// start after a crash or a cut-short stop restores the true originals.
#[derive(Serialize, Deserialize)]
struct HostRec {
    vip: String,
    sysctls: Vec<(String, String)>,
}
#[derive(Serialize, Deserialize)]
struct DrainsVersionRec {
    version: u64,
}
#[derive(Serialize, Deserialize)]
struct DrainRec {
    drained: bool,
    ts_ms: u64,
}
#[derive(Serialize, Deserialize)]
struct WeightRec {
    weight: u32,
    ts_ms: u64,
}
#[derive(Serialize, Deserialize)]
struct HealthRec {
    up: bool,
    ts_ms: u64,
}
#[derive(Serialize, Deserialize)]
struct EventRec {
    ts_ms: u64,
    kind: String,
    message: String,
}

fn encode<T: Serialize>(body: T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&Rec { v: RECORD_V, body }).map_err(|e| StoreError::Encode(e.to_string()))
}

/// `None` for records that are malformed or from a newer record version.
fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice::<Rec<T>>(bytes) {
        Ok(r) if r.v <= RECORD_V => Some(r.body),
        Ok(r) => {
            log::warn!(
                "store: {tree}/{} has record version {}, skipped",
                String::from_utf8_lossy(key),
                r.v
            );
            None
        }
        Err(e) => {
            log::warn!(
                "store: {tree}/{} is unreadable ({e}), skipped",
                String::from_utf8_lossy(key)
            );
            None
        }
    }
}

/// Wall-clock unix milliseconds: event times, versions and boot ids.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    drains: sled::Tree,
    weights: sled::Tree,
    health: sled::Tree,
    events: sled::Tree,
    boot: u64,
    next_event: AtomicU64,
    moved_aside: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, increments the boot
    /// counter and flushes it. Damaged or foreign state is moved aside (see
    /// the module docs); I/O problems are errors.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        match Store::open_strict(dir) {
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Incompatible { .. })) => {
                let aside = aside_path(dir);
                log::warn!(
                    "store: {e}; moving it to {} and starting with empty state",
                    aside.display()
                );
                std::fs::rename(dir, &aside).map_err(|source| StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let mut store = Store::open_strict(dir)?;
                store.moved_aside = Some(aside.clone());
                if let Err(e2) = store.log_event(
                    "store",
                    &format!(
                        "previous state moved to {} ({e}); drains and history reset",
                        aside.display()
                    ),
                ) {
                    log::warn!("store: cannot record the move: {e2}");
                }
                Ok(store)
            }
            other => other,
        }
    }

    /// Like [`Store::open`] but never moves anything: damaged or foreign
    /// state is returned as an error.
    pub fn open_strict(dir: &Path) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // sled writes `conf` when it creates a database. If it was there but
        // our format record is not, sled threw away unreadable data while
        // recovering (it does that silently for a damaged `db` file).
        let existed = dir.join("conf").exists();
        let config = sled::Config::new()
            .path(dir)
            // A few KiB of state: keep sled's page cache (default 1 GiB) small.
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(Some(500));
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<_, sled::Error> {
            let db = config.open()?;
            let trees = (
                db.open_tree(META)?,
                db.open_tree(DRAINS)?,
                db.open_tree(WEIGHTS)?,
                db.open_tree(HEALTH)?,
                db.open_tree(EVENTS)?,
            );
            Ok((db, trees))
        }));
        let (db, (meta, drains, weights, health, events)) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(sled::Error::Io(e))) => return Err(io(e)),
            Ok(Err(e)) => {
                return Err(StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                return Err(StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: "sled panicked while opening it".into(),
                })
            }
        };

        let mut lost_state = false;
        match meta.get(K_FORMAT)? {
            Some(bytes) => {
                let found = serde_json::from_slice::<Rec<FormatRec>>(&bytes)
                    .map(|r| r.body.format)
                    .map_err(|e| StoreError::Corrupt {
                        path: dir.to_path_buf(),
                        detail: format!("unreadable format record: {e}"),
                    })?;
                if found != FORMAT {
                    return Err(StoreError::Incompatible {
                        path: dir.to_path_buf(),
                        found,
                        supported: FORMAT,
                    });
                }
            }
            None => {
                lost_state = existed;
                meta.insert(K_FORMAT, encode(FormatRec { format: FORMAT })?)?;
            }
        }

        let boot = meta
            .get(K_BOOT)?
            .and_then(|b| decode::<BootRec>(META, K_BOOT.as_bytes(), &b))
            .map_or(0, |r| r.count)
            .saturating_add(1);
        meta.insert(K_BOOT, encode(BootRec { count: boot })?)?;
        db.flush()?;

        let next_event = match events.last()? {
            Some((k, _)) => event_seq(&k).map_or(0, |s| s.saturating_add(1)),
            None => 0,
        };

        let store = Store {
            dir: dir.to_path_buf(),
            db,
            meta,
            drains,
            weights,
            health,
            events,
            boot,
            next_event: AtomicU64::new(next_event),
            moved_aside: None,
        };
        if lost_state {
            let msg = format!(
                "state in {} was unreadable and sled discarded it; drains and history reset",
                dir.display()
            );
            log::warn!("store: {msg}");
            if let Err(e) = store.log_event("store", &msg) {
                log::warn!("store: cannot record the loss: {e}");
            }
        }
        Ok(store)
    }

    /// Where [`Store::open`] moved damaged state to, if it did.
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// How many times this store has been opened, this time included.
    pub fn boot_count(&self) -> u64 {
        self.boot
    }

    pub fn node_id(&self) -> Option<String> {
        self.get::<NodeIdRec>(&self.meta, META, K_NODE_ID)
            .map(|r| r.node_id)
    }

    pub fn set_node_id(&self, id: &str) -> Result<(), StoreError> {
        self.meta.insert(
            K_NODE_ID,
            encode(NodeIdRec {
                node_id: id.to_string(),
            })?,
        )?;
        self.flush()
    }

    /// The role and term last recorded, so a restarted node continues from
    /// its last term.
    pub fn last_role(&self) -> Option<(String, u64)> {
        self.get::<RoleRec>(&self.meta, META, K_LAST_ROLE)
            .map(|r| (r.role, r.term))
    }

    /// Flushed: role changes are rare and the term must survive a crash.
    pub fn set_last_role(&self, role: &str, term: u64) -> Result<(), StoreError> {
        self.meta.insert(
            K_LAST_ROLE,
            encode(RoleRec {
                role: role.to_string(),
                term,
                ts_ms: now_ms(),
            })?,
        )?;
        self.flush()
    }

    /// The sysctls (key, value found) a run changed for `vip`, if a run
    /// that did not finish recorded them.
    pub fn host_changes(&self, vip: &str) -> Option<Vec<(String, String)>> {
        self.get::<HostRec>(&self.meta, META, K_HOST)
            .filter(|r| r.vip == vip)
            .map(|r| r.sysctls)
    }

    /// Records the host changes of this run (`None` once they are undone).
    /// Flushed: a crash right after must still know the originals.
    pub fn set_host_changes(
        &self,
        vip: &str,
        sysctls: Option<&[(String, String)]>,
    ) -> Result<(), StoreError> {
        match sysctls {
            Some(s) => {
                self.meta.insert(
                    K_HOST,
                    encode(HostRec {
                        vip: vip.to_string(),
                        sysctls: s.to_vec(),
                    })?,
                )?;
            }
            None => {
                self.meta.remove(K_HOST)?;
            }
        }
        self.flush()
    }

    /// Backends an operator drained.
    pub fn drains(&self) -> BTreeSet<String> {
        self.scan::<DrainRec>(&self.drains, DRAINS)
            .into_iter()
            .filter(|(_, r)| r.drained)
            .map(|(k, _)| k)
            .collect()
    }

    /// Flushed before returning: an admin action must survive a crash.
    pub fn set_drained(&self, backend: &str, drained: bool) -> Result<(), StoreError> {
        if drained {
            self.drains.insert(
                backend,
                encode(DrainRec {
                    drained,
                    ts_ms: now_ms(),
                })?,
            )?;
        } else {
            self.drains.remove(backend)?;
        }
        self.flush()
    }

    /// Version of the drain set (unix ms of its last change, here or on the
    /// peer): the pair keeps the newest.
    pub fn drains_version(&self) -> u64 {
        self.get::<DrainsVersionRec>(&self.meta, META, K_DRAINS_VERSION)
            .map_or(0, |r| r.version)
    }

    /// Replaces the whole drain set, with its version. Flushed.
    pub fn set_drains(&self, drains: &BTreeSet<String>, version: u64) -> Result<(), StoreError> {
        for old in self.drains() {
            if !drains.contains(&old) {
                self.drains.remove(old.as_str())?;
            }
        }
        for d in drains {
            self.drains.insert(
                d.as_str(),
                encode(DrainRec {
                    drained: true,
                    ts_ms: now_ms(),
                })?,
            )?;
        }
        self.meta
            .insert(K_DRAINS_VERSION, encode(DrainsVersionRec { version })?)?;
        self.flush()
    }

    /// Operator weight overrides.
    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.scan::<WeightRec>(&self.weights, WEIGHTS)
            .into_iter()
            .map(|(k, r)| (k, r.weight))
            .collect()
    }

    /// Flushed: an admin action. `None` removes the override.
    pub fn set_weight(&self, backend: &str, weight: Option<u32>) -> Result<(), StoreError> {
        match weight {
            Some(weight) => {
                self.weights.insert(
                    backend,
                    encode(WeightRec {
                        weight,
                        ts_ms: now_ms(),
                    })?,
                )?;
            }
            None => {
                self.weights.remove(backend)?;
            }
        }
        self.flush()
    }

    /// Last known health of each backend, for a warm start.
    pub fn health(&self) -> BTreeMap<String, bool> {
        self.scan::<HealthRec>(&self.health, HEALTH)
            .into_iter()
            .map(|(k, r)| (k, r.up))
            .collect()
    }

    /// Not flushed: sled's background flush (500 ms) is enough for a hint.
    pub fn set_health(&self, backend: &str, up: bool) -> Result<(), StoreError> {
        self.health.insert(
            backend,
            encode(HealthRec {
                up,
                ts_ms: now_ms(),
            })?,
        )?;
        Ok(())
    }

    /// Appends an event stamped with the current time, dropping the oldest
    /// beyond [`EVENT_CAP`]. Not flushed.
    pub fn log_event(&self, kind: &str, message: &str) -> Result<(), StoreError> {
        self.log_event_at(now_ms(), kind, message)
    }

    fn log_event_at(&self, ts_ms: u64, kind: &str, message: &str) -> Result<(), StoreError> {
        let seq = self.next_event.fetch_add(1, Ordering::Relaxed);
        self.events.insert(
            seq.to_be_bytes(),
            encode(EventRec {
                ts_ms,
                kind: kind.to_string(),
                message: message.to_string(),
            })?,
        )?;
        // Keys are big-endian sequence numbers, so the oldest come first.
        let keep_from = (seq + 1).saturating_sub(EVENT_CAP);
        while let Some((k, _)) = self.events.first()? {
            match event_seq(&k) {
                Some(s) if s >= keep_from => break,
                _ => {
                    self.events.remove(k)?;
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` events, newest first.
    pub fn events(&self, limit: usize) -> Vec<EventRecord> {
        let mut out = Vec::new();
        for item in self.events.iter().rev() {
            if out.len() >= limit {
                break;
            }
            match item {
                Ok((k, v)) => {
                    if let Some(r) = decode::<EventRec>(EVENTS, &k, &v) {
                        out.push(EventRecord {
                            ts_ms: r.ts_ms,
                            kind: r.kind,
                            message: r.message,
                        });
                    }
                }
                Err(e) => {
                    log::warn!("store: reading events failed: {e}");
                    break;
                }
            }
        }
        out
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, tree: &sled::Tree, name: &str, key: &str) -> Option<T> {
        match tree.get(key) {
            Ok(Some(bytes)) => decode(name, key.as_bytes(), &bytes),
            Ok(None) => None,
            Err(e) => {
                log::warn!("store: reading {name}/{key} failed: {e}");
                None
            }
        }
    }

    fn scan<T: DeserializeOwned>(&self, tree: &sled::Tree, name: &str) -> Vec<(String, T)> {
        let mut out = Vec::new();
        for item in tree.iter() {
            match item {
                Ok((k, v)) => {
                    let Ok(key) = std::str::from_utf8(&k) else {
                        log::warn!("store: {name} has a non-UTF-8 key, skipped");
                        continue;
                    };
                    if let Some(r) = decode(name, &k, &v) {
                        out.push((key.to_string(), r));
                    }
                }
                Err(e) => {
                    log::warn!("store: reading {name} failed: {e}");
                    break;
                }
            }
        }
        out
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            log::warn!("store: final flush of {} failed: {e}", self.dir.display());
        }
    }
}

fn event_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `<dir>.corrupt-<unix seconds>`, with a counter if that exists already.
fn aside_path(dir: &Path) -> PathBuf {
    let secs = now_ms() / 1000;
    let base = dir
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    let mut candidate = PathBuf::from(format!("{base}.corrupt-{secs}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}.corrupt-{secs}-{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "duet-store-test-{tag}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn state(&self) -> PathBuf {
            self.0.join("state")
        }
    }

    /// Opens the store at `dir`. A store dropped a moment ago may still hold
    /// sled's file lock while its flusher thread winds down (a new process
    /// never meets this: the lock goes with the old one), so wait for it.
    fn reopen(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("open {}: {e}", dir.display()),
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reopen_keeps_state_and_counts_boots() {
        let t = TempDir::new("reopen");
        {
            let s = reopen(&t.state());
            assert_eq!(s.boot_count(), 1);
            assert_eq!(s.node_id(), None);
            assert_eq!(s.last_role(), None);
            s.set_node_id("web1").unwrap();
            s.set_last_role("director", 7).unwrap();
            s.set_drained("web2", true).unwrap();
            s.set_drained("web3", true).unwrap();
            s.set_drained("web3", false).unwrap();
            s.set_weight("web2", Some(5)).unwrap();
            s.set_health("web2", false).unwrap();
            s.log_event("role", "standby -> director").unwrap();
            s.log_event("admin", "drain web2").unwrap();
        }
        let s = reopen(&t.state());
        assert_eq!(s.boot_count(), 2);
        assert!(s.moved_aside().is_none());
        assert_eq!(s.node_id().as_deref(), Some("web1"));
        assert_eq!(s.last_role(), Some(("director".to_string(), 7)));
        assert_eq!(s.drains(), BTreeSet::from(["web2".to_string()]));
        assert_eq!(s.weights(), BTreeMap::from([("web2".to_string(), 5)]));
        assert_eq!(s.health(), BTreeMap::from([("web2".to_string(), false)]));
        let ev = s.events(10);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].kind, "admin");
        assert_eq!(ev[1].message, "standby -> director");
        assert!(ev[0].ts_ms >= ev[1].ts_ms && ev[1].ts_ms > 0);
        drop(s);
        assert_eq!(reopen(&t.state()).boot_count(), 3);
    }

    #[test]
    fn weight_override_can_be_removed() {
        let t = TempDir::new("weight");
        let s = reopen(&t.state());
        s.set_weight("a", Some(3)).unwrap();
        s.set_weight("a", None).unwrap();
        assert!(s.weights().is_empty());
    }

    #[test]
    fn events_are_capped_oldest_first_and_survive_reopen() {
        let t = TempDir::new("cap");
        {
            let s = reopen(&t.state());
            for i in 0..EVENT_CAP + 25 {
                s.log_event_at(i, "test", &format!("event {i}")).unwrap();
            }
            assert_eq!(s.events.len() as u64, EVENT_CAP);
            let ev = s.events(3);
            assert_eq!(ev[0].message, format!("event {}", EVENT_CAP + 24));
            assert_eq!(ev[2].message, format!("event {}", EVENT_CAP + 22));
        }
        let s = reopen(&t.state());
        s.log_event_at(1, "test", "after reopen").unwrap();
        let all = s.events(usize::MAX);
        assert_eq!(all.len() as u64, EVENT_CAP);
        assert_eq!(all[0].message, "after reopen");
        assert_eq!(
            all.last().unwrap().message,
            format!("event {}", 26),
            "the oldest are the ones dropped"
        );
    }

    #[test]
    fn bad_records_are_skipped_not_fatal() {
        let t = TempDir::new("records");
        let s = reopen(&t.state());
        s.set_drained("good", true).unwrap();
        s.drains.insert("garbage", b"not json".to_vec()).unwrap();
        s.drains
            .insert("future", br#"{"v":99,"drained":true,"ts_ms":1}"#.to_vec())
            .unwrap();
        s.meta.insert(K_LAST_ROLE, b"\xff\x00".to_vec()).unwrap();
        s.events.insert(b"short", b"{}".to_vec()).unwrap();
        assert_eq!(s.drains(), BTreeSet::from(["good".to_string()]));
        assert_eq!(s.last_role(), None);
        // The odd event key sorts after the sequence keys; it is skipped or read, never a panic.
        let _ = s.events(10);
        s.log_event("x", "y").unwrap();
    }

    #[test]
    fn garbage_directory_is_moved_aside() {
        let t = TempDir::new("garbage");
        let dir = t.state();
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = fastrand::Rng::with_seed(42);
        let junk: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
        std::fs::write(dir.join("conf"), &junk[..300]).unwrap();
        std::fs::write(dir.join("db"), &junk).unwrap();
        let s = reopen(&dir);
        let aside = s
            .moved_aside()
            .expect("damaged state moved aside")
            .to_path_buf();
        assert!(aside.to_string_lossy().contains(".corrupt-"));
        assert!(aside.join("db").exists(), "old files kept for inspection");
        assert_eq!(s.boot_count(), 1);
        assert!(s.drains().is_empty());
        assert_eq!(s.events(5)[0].kind, "store");
        drop(s);
        let _ = std::fs::remove_dir_all(&aside);
    }

    #[test]
    fn silently_discarded_state_is_reported() {
        let t = TempDir::new("discard");
        let dir = t.state();
        {
            let s = reopen(&dir);
            s.set_drained("web2", true).unwrap();
        }
        let mut rng = fastrand::Rng::with_seed(9);
        let junk: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
        std::fs::write(dir.join("db"), &junk).unwrap();
        let s = reopen(&dir);
        // sled recovers by dropping what it cannot read; the loss is logged.
        assert!(s.drains().is_empty());
        let ev = s.events(5);
        assert_eq!(ev[0].kind, "store");
        assert!(ev[0].message.contains("discarded"), "{ev:?}");
        drop(s);
        // A clean reopen reports nothing.
        let s = reopen(&dir);
        assert_eq!(s.events(5).len(), 1);
    }

    #[test]
    fn corrupted_db_file_never_panics() {
        let t = TempDir::new("flip");
        let dir = t.state();
        {
            let s = reopen(&dir);
            for i in 0..50 {
                s.set_drained(&format!("b{i}"), true).unwrap();
                s.log_event("e", &"x".repeat(100)).unwrap();
            }
        }
        let mut db = std::fs::read(dir.join("db")).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let i = rng.usize(..db.len());
            db[i] ^= 0xff;
        }
        std::fs::write(dir.join("db"), &db).unwrap();
        // Either sled recovers what it can, or the state is moved aside.
        let s = reopen(&dir);
        let _ = (s.drains(), s.events(100), s.boot_count());
        if let Some(aside) = s.moved_aside() {
            let _ = std::fs::remove_dir_all(aside);
        }
    }

    #[test]
    fn foreign_format_is_incompatible() {
        let t = TempDir::new("format");
        let dir = t.state();
        {
            let s = reopen(&dir);
            s.meta
                .insert(K_FORMAT, encode(FormatRec { format: 99 }).unwrap())
                .unwrap();
        }
        match Store::open_strict(&dir) {
            Err(StoreError::Incompatible { found: 99, .. }) => {}
            other => panic!("expected Incompatible, got {other:?}"),
        }
        let s = reopen(&dir);
        let aside = s.moved_aside().unwrap().to_path_buf();
        drop(s);
        let _ = std::fs::remove_dir_all(aside);
    }

    #[test]
    fn unusable_directory_is_an_io_error() {
        let t = TempDir::new("file");
        let not_a_dir = t.0.join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        assert!(matches!(
            Store::open(&not_a_dir),
            Err(StoreError::Io { .. })
        ));
        assert!(not_a_dir.is_file(), "nothing moved on an I/O error");
    }

    #[test]
    fn second_open_of_a_live_store_is_refused_not_moved() {
        let t = TempDir::new("lock");
        let s = reopen(&t.state());
        s.set_drained("keep", true).unwrap();
        match Store::open(&t.state()) {
            Err(StoreError::Io { .. }) => {}
            other => panic!("expected an Io error for a locked store, got {other:?}"),
        }
        assert_eq!(s.drains(), BTreeSet::from(["keep".to_string()]));
    }
}
