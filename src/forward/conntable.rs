//! The bounded tables behind the connection and persistence state, and the
//! IPVS TCP state machine as seen by a Direct-Routing director.
//!
//! A table is a slab of entries plus a hash index into it. Both are sized
//! once at construction, so inserting and removing never allocate, and
//! expiry walks the slab with a cursor so each call does bounded work.

use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::wire::frame::{FlowKey, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use super::Timeouts;

pub use crate::wire::state::TcpState;

/// The state machine: what each state means for a DR director.
impl TcpState {
    /// Whether the entry counts as an active connection (IPVS ActiveConn).
    pub fn is_active(self) -> bool {
        self == TcpState::Established
    }

    /// Idle time after which an entry in this state expires.
    pub fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            TcpState::SynRecv => t.syn,
            TcpState::Established => t.tcp,
            TcpState::FinWait | TcpState::TimeWait => t.tcp_fin,
            TcpState::Close => t.close,
            TcpState::Udp => t.udp,
        }
    }

    /// The state after a client → server TCP segment with `flags`, starting
    /// from `from` (`None` for a new entry). This is IPVS's
    /// `tcp_states[IP_VS_DIR_INPUT_ONLY]` restricted to the states it can
    /// reach; flag precedence is RST, SYN, FIN, ACK as in `tcp_state_idx`.
    pub fn after(from: Option<TcpState>, flags: u8) -> TcpState {
        use TcpState::*;
        let event = if flags & TCP_RST != 0 {
            3
        } else if flags & TCP_SYN != 0 {
            0
        } else if flags & TCP_FIN != 0 {
            1
        } else if flags & TCP_ACK != 0 {
            2
        } else {
            return Close;
        };
        let col = match from {
            None | Some(Udp) => 0,
            Some(Established) => 1,
            Some(SynRecv) => 2,
            Some(FinWait) => 3,
            Some(TimeWait) => 4,
            Some(Close) => 5,
        };
        // Columns: none, ES, SR, FW, TW, CL.
        const TABLE: [[TcpState; 6]; 4] = [
            /* syn */
            [SynRecv, Established, SynRecv, SynRecv, SynRecv, SynRecv],
            /* fin */
            [Close, FinWait, TimeWait, FinWait, TimeWait, Close],
            /* ack */
            [
                Established,
                Established,
                Established,
                FinWait,
                TimeWait,
                Close,
            ],
            // IPVS keeps SYN_RECV on RST so a spoofed RST cannot cut a
            // handshake short.
            /* rst */
            [Close, Close, SynRecv, Close, Close, Close],
        ];
        TABLE[event][col]
    }
}

/// A key of a [`BoundedMap`]: hashed in one shot over its packed bytes.
/// `std::hash::Hash` feeds a streaming hasher field by field, several
/// times the cost of one call on 13 bytes; under a flood every packet
/// hashes a key up to three times (lookup, eviction, insert).
pub(crate) trait Key: Copy + Eq {
    fn hash_with(&self, seed: u64) -> u64;
}

impl Key for FlowKey {
    fn hash_with(&self, seed: u64) -> u64 {
        let mut b = [0u8; 13];
        b[0] = self.proto;
        b[1..5].copy_from_slice(&self.src.octets());
        b[5..7].copy_from_slice(&self.sport.to_be_bytes());
        b[7..11].copy_from_slice(&self.dst.octets());
        b[11..13].copy_from_slice(&self.dport.to_be_bytes());
        xxh3_64_with_seed(&b, seed)
    }
}

/// A fixed-capacity map from `K` to `V` whose entries live in a slab.
/// Indices stay valid until the entry is removed, so other entries can refer
/// to them.
///
/// The index is one open-addressed array of 8-byte buckets (32 bits of the
/// key's hash, slot + 1), probed linearly: a lookup touches one index cache
/// line and then the slot itself, two memory accesses where a `HashMap` of
/// slot numbers needs three (control bytes, bucket, slot). Removal shifts
/// the following run back instead of leaving tombstones, so probe lengths
/// never degrade and nothing is ever rehashed or reallocated.
pub(crate) struct BoundedMap<K, V> {
    /// Seed of xxh3, random per table: several times cheaper than
    /// SipHash on the hot path, and still unpredictable to a client
    /// choosing ports to collide.
    seed: u64,
    index: Box<[u64]>,
    mask: usize,
    len: usize,
    slots: Vec<Option<(K, V)>>,
    free: Vec<u32>,
    capacity: usize,
    cursor: usize,
}

const EMPTY: u64 = 0;

/// Asks the CPU to bring the cache line holding `p` closer: the tables are
/// far larger than the caches, and a lookup is two dependent misses (the
/// index, then the slot) that a caller knowing its next keys can overlap.
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, and reads or writes
    // nothing the program sees; `p` is a valid reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn bucket(hash: u32, slot: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(slot + 1)
}

fn bucket_hash(b: u64) -> u32 {
    (b >> 32) as u32
}

fn bucket_slot(b: u64) -> u32 {
    (b as u32).wrapping_sub(1)
}

impl<K: Key, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        // Slot numbers are stored as u32 + 1.
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        // At most two thirds full: short probe runs, and always an empty
        // bucket to end a search.
        let buckets = (capacity + capacity / 2 + 1).next_power_of_two();
        BoundedMap {
            seed: fastrand::u64(..),
            index: vec![EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            len: 0,
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            cursor: 0,
        }
    }

    fn hash(&self, key: &K) -> u32 {
        let h = key.hash_with(self.seed);
        // Fold the high half in: the bucket number comes from the low bits.
        (h ^ (h >> 32)) as u32
    }

    /// The bucket holding `key`, if present.
    fn position(&self, key: &K, h: u32) -> Option<usize> {
        let mut i = h as usize & self.mask;
        loop {
            let b = self.index[i];
            if b == EMPTY {
                return None;
            }
            if bucket_hash(b) == h {
                let s = bucket_slot(b);
                if matches!(self.slots.get(s as usize), Some(Some((k, _))) if k == key) {
                    return Some(i);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    pub(crate) fn find(&self, key: &K) -> Option<u32> {
        let h = self.hash(key);
        self.position(key, h).map(|i| bucket_slot(self.index[i]))
    }

    /// The first step of a [`BoundedMap::find`] of `key` done ahead of
    /// time, for a caller with many keys to look up: starts fetching the
    /// key's index bucket. A hint only; nothing changes.
    pub(crate) fn prefetch_index(&self, key: &K) {
        let h = self.hash(key);
        prefetch(&self.index[h as usize & self.mask]);
    }

    /// The second step, once the bucket has had time to arrive: starts
    /// fetching the slot it names (when its hash is the key's).
    pub(crate) fn prefetch_slot(&self, key: &K) {
        let h = self.hash(key);
        let b = self.index[h as usize & self.mask];
        if b != EMPTY && bucket_hash(b) == h {
            if let Some(s) = self.slots.get(bucket_slot(b) as usize) {
                prefetch(s);
            }
        }
    }

    /// The entry at `i`; `None` for a free slot or an index out of range.
    pub(crate) fn at(&self, i: u32) -> Option<&(K, V)> {
        self.slots.get(i as usize).and_then(|s| s.as_ref())
    }

    pub(crate) fn at_mut(&mut self, i: u32) -> Option<&mut (K, V)> {
        self.slots.get_mut(i as usize).and_then(|s| s.as_mut())
    }

    /// Inserts a key that is not present. `None` when the table is full.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<u32> {
        debug_assert!(self.find(&key).is_none());
        if self.is_full() {
            return None;
        }
        let h = self.hash(&key);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some((key, value));
                i
            }
            None => {
                self.slots.push(Some((key, value)));
                (self.slots.len() - 1) as u32
            }
        };
        let mut i = h as usize & self.mask;
        while self.index[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.index[i] = bucket(h, slot);
        self.len += 1;
        Some(slot)
    }

    pub(crate) fn remove_at(&mut self, i: u32) -> Option<(K, V)> {
        let key = self.slots.get(i as usize)?.as_ref()?.0;
        let h = self.hash(&key);
        let mut hole = self.position(&key, h)?;
        let entry = self.slots[i as usize].take()?;
        self.free.push(i);
        self.len -= 1;
        // Backward-shift deletion: every later bucket of the run whose home
        // lies at or before the hole moves into it.
        let mut j = (hole + 1) & self.mask;
        loop {
            let b = self.index[j];
            if b == EMPTY {
                break;
            }
            let home = bucket_hash(b) as usize & self.mask;
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(hole) & self.mask {
                self.index[hole] = b;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.index[hole] = EMPTY;
        Some(entry)
    }

    /// The next slot index for an incremental sweep, wrapping around.
    pub(crate) fn sweep_next(&mut self) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        if self.cursor >= self.slots.len() {
            self.cursor = 0;
        }
        let i = self.cursor as u32;
        self.cursor += 1;
        Some(i)
    }

    /// The number of slots a full sweep visits.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &(K, V))> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|e| (i as u32, e)))
    }
}

/// No slot / no list.
const NIL: u32 = u32::MAX;
const NO_LIST: u8 = u8::MAX;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    list: u8,
}

/// `N` intrusive doubly-linked recency lists over the slot indices of a
/// [`BoundedMap`], oldest first. Each slot is in at most one list; moving,
/// unlinking and finding the oldest are O(1), and the links are allocated
/// once for the map's capacity, so eviction never allocates either.
pub(crate) struct Lru<const N: usize> {
    links: Box<[Link]>,
    head: [u32; N],
    tail: [u32; N],
    len: [usize; N],
}

impl<const N: usize> Lru<N> {
    pub(crate) fn new(capacity: usize) -> Self {
        let unlinked = Link {
            prev: NIL,
            next: NIL,
            list: NO_LIST,
        };
        Lru {
            links: vec![unlinked; capacity.max(1)].into_boxed_slice(),
            head: [NIL; N],
            tail: [NIL; N],
            len: [0; N],
        }
    }

    /// The list slot `i` is in.
    pub(crate) fn list_of(&self, i: u32) -> Option<usize> {
        let l = self.links.get(i as usize)?.list;
        (l != NO_LIST).then_some(l as usize)
    }

    #[cfg(test)]
    pub(crate) fn len(&self, list: usize) -> usize {
        self.len[list]
    }

    /// The least recently pushed slot of `list`.
    pub(crate) fn oldest(&self, list: usize) -> Option<u32> {
        let h = self.head[list];
        (h != NIL).then_some(h)
    }

    /// Makes `i` the newest entry of `list`, taking it out of any list it
    /// was in. Out-of-range slots are ignored.
    pub(crate) fn push(&mut self, list: usize, i: u32) {
        if list >= N || i as usize >= self.links.len() {
            return;
        }
        self.unlink(i);
        let t = self.tail[list];
        self.links[i as usize] = Link {
            prev: t,
            next: NIL,
            list: list as u8,
        };
        match t {
            NIL => self.head[list] = i,
            t => self.links[t as usize].next = i,
        }
        self.tail[list] = i;
        self.len[list] += 1;
    }

    /// Takes `i` out of its list, if it is in one.
    pub(crate) fn unlink(&mut self, i: u32) {
        let Some(&Link { prev, next, list }) = self.links.get(i as usize) else {
            return;
        };
        if list == NO_LIST {
            return;
        }
        let l = list as usize;
        match prev {
            NIL => self.head[l] = next,
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.tail[l] = prev,
            n => self.links[n as usize].prev = prev,
        }
        self.links[i as usize] = Link {
            prev: NIL,
            next: NIL,
            list: NO_LIST,
        };
        self.len[l] -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::TCP_PSH;
    use TcpState::*;

    impl Key for u32 {
        fn hash_with(&self, seed: u64) -> u64 {
            xxh3_64_with_seed(&self.to_le_bytes(), seed)
        }
    }

    impl Key for u64 {
        fn hash_with(&self, seed: u64) -> u64 {
            xxh3_64_with_seed(&self.to_le_bytes(), seed)
        }
    }

    #[test]
    fn flow_keys_differing_in_any_field_hash_apart() {
        let k = FlowKey {
            proto: 6,
            src: std::net::Ipv4Addr::new(198, 18, 0, 1),
            sport: 1000,
            dst: std::net::Ipv4Addr::new(198, 18, 0, 100),
            dport: 80,
        };
        let variants = [
            FlowKey { proto: 17, ..k },
            FlowKey {
                src: std::net::Ipv4Addr::new(198, 18, 0, 2),
                ..k
            },
            FlowKey { sport: 1001, ..k },
            FlowKey {
                dst: std::net::Ipv4Addr::new(198, 18, 0, 101),
                ..k
            },
            FlowKey { dport: 81, ..k },
        ];
        for v in variants {
            assert_ne!(v.hash_with(7), k.hash_with(7), "{v:?}");
        }
        assert_ne!(k.hash_with(7), k.hash_with(8), "the seed matters");
    }

    const S: u8 = TCP_SYN;
    const A: u8 = TCP_ACK;
    const F: u8 = TCP_FIN | TCP_ACK;
    const R: u8 = TCP_RST;

    #[test]
    fn tcp_transitions_table() {
        let cases: &[(&str, Option<TcpState>, u8, TcpState)] = &[
            ("syn opens", None, S, SynRecv),
            (
                "mid-flow ack of unknown flow (sloppy)",
                None,
                A,
                Established,
            ),
            ("fin of unknown flow", None, F, Close),
            ("rst of unknown flow", None, R, Close),
            ("handshake ack", Some(SynRecv), A, Established),
            ("syn retransmit", Some(SynRecv), S, SynRecv),
            ("rst during handshake ignored", Some(SynRecv), R, SynRecv),
            ("fin during handshake", Some(SynRecv), F, TimeWait),
            ("data", Some(Established), A | TCP_PSH, Established),
            ("client fin", Some(Established), F, FinWait),
            ("client rst", Some(Established), R, Close),
            ("ack after fin", Some(FinWait), A, FinWait),
            ("syn after close reopens", Some(Close), S, SynRecv),
            ("syn in time wait", Some(TimeWait), S, SynRecv),
            ("no flags", Some(Established), 0, Close),
            ("rst wins over syn", None, S | R, Close),
        ];
        for (desc, from, flags, want) in cases {
            assert_eq!(TcpState::after(*from, *flags), *want, "{desc}");
        }
    }

    #[test]
    fn state_numbers_roundtrip() {
        for s in [SynRecv, Established, FinWait, TimeWait, Close, Udp] {
            assert_eq!(TcpState::from_u8(s.as_u8()), Some(s));
        }
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(99), None);
    }

    #[test]
    fn timeouts_per_state() {
        let t = Timeouts::default();
        assert_eq!(Established.timeout(&t), Duration::from_secs(900));
        assert_eq!(FinWait.timeout(&t), Duration::from_secs(120));
        assert_eq!(Udp.timeout(&t), Duration::from_secs(300));
        assert_eq!(SynRecv.timeout(&t), Duration::from_secs(60));
        assert_eq!(Close.timeout(&t), Duration::from_secs(10));
    }

    #[test]
    fn bounded_map_reuses_slots_and_refuses_when_full() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(3);
        let a = m.insert(1, 10).unwrap();
        m.insert(2, 20).unwrap();
        m.insert(3, 30).unwrap();
        assert!(m.is_full());
        assert_eq!(m.insert(4, 40), None);
        assert_eq!(m.remove_at(a), Some((1, 10)));
        assert_eq!(m.remove_at(a), None);
        assert_eq!(m.find(&1), None);
        let d = m.insert(4, 40).unwrap();
        assert_eq!(d, a, "freed slot is reused");
        assert_eq!(m.at(d), Some(&(4, 40)));
        assert_eq!(m.slot_count(), 3);
        let swept: Vec<u32> = (0..7).filter_map(|_| m.sweep_next()).collect();
        assert_eq!(swept, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn bounded_map_churn_keeps_capacity() {
        let mut m: BoundedMap<u64, ()> = BoundedMap::new(1000);
        let buckets = m.index.len();
        for round in 0..50u64 {
            for k in 0..1000 {
                m.insert(round * 1000 + k, ()).unwrap();
            }
            for i in 0..1000 {
                m.remove_at(i).unwrap();
            }
        }
        assert_eq!(m.len(), 0);
        assert!(m.index.iter().all(|&b| b == EMPTY), "stale buckets left");
        assert_eq!(m.index.len(), buckets);
        assert_eq!(m.slots.capacity(), 1000);
    }

    /// Random inserts, lookups and removals against a model, in a table
    /// small enough that probe runs wrap around the end of the index and
    /// backward shifts cross it.
    #[test]
    fn bounded_map_matches_a_model() {
        use std::collections::HashMap;
        let mut rng = fastrand::Rng::with_seed(9);
        for cap in [1usize, 5, 64, 700] {
            let mut m: BoundedMap<u32, u32> = BoundedMap::new(cap);
            let mut model: HashMap<u32, (u32, u32)> = HashMap::new();
            for step in 0..20_000u32 {
                // Few distinct keys: many hits, removals and re-inserts.
                let k = rng.u32(..(cap as u32) * 3);
                match rng.u8(..3) {
                    0 => {
                        if model.contains_key(&k) {
                            continue;
                        }
                        match m.insert(k, step) {
                            Some(slot) => {
                                model.insert(k, (slot, step));
                            }
                            None => assert_eq!(model.len(), cap, "refused below capacity"),
                        }
                    }
                    1 => {
                        if let Some((slot, _)) = model.remove(&k) {
                            assert_eq!(m.remove_at(slot).map(|e| e.0), Some(k));
                        }
                    }
                    _ => {}
                }
                let want = model.get(&k).map(|&(slot, _)| slot);
                assert_eq!(m.find(&k), want, "cap {cap} step {step} key {k}");
                assert_eq!(m.len(), model.len());
            }
            for (k, (slot, v)) in &model {
                assert_eq!(m.find(k), Some(*slot));
                assert_eq!(m.at(*slot), Some(&(*k, *v)));
            }
            let live = m.index.iter().filter(|&&b| b != EMPTY).count();
            assert_eq!(live, model.len(), "index and slab disagree");
        }
    }

    #[test]
    fn lru_lists_keep_order_and_move_in_constant_time() {
        let mut l: Lru<2> = Lru::new(8);
        for i in 0..4 {
            l.push(0, i);
        }
        assert_eq!((l.oldest(0), l.len(0)), (Some(0), 4));
        // Touching moves to the newest end; moving changes list.
        l.push(0, 0);
        assert_eq!(l.oldest(0), Some(1));
        l.push(1, 1);
        assert_eq!((l.oldest(0), l.len(0), l.len(1)), (Some(2), 3, 1));
        assert_eq!((l.list_of(1), l.list_of(7)), (Some(1), None));
        l.unlink(2);
        l.unlink(2);
        let mut order = Vec::new();
        while let Some(i) = l.oldest(0) {
            order.push(i);
            l.unlink(i);
        }
        assert_eq!(order, vec![3, 0]);
        assert_eq!((l.len(0), l.oldest(0)), (0, None));
        // Out of range is ignored, not a panic.
        l.push(0, 99);
        l.push(5, 1);
        l.unlink(99);
        assert_eq!((l.len(0), l.len(1)), (0, 1));
    }

    /// Random pushes and unlinks against a model of ordered lists.
    #[test]
    fn lru_matches_a_model() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut l: Lru<3> = Lru::new(50);
        let mut model: [Vec<u32>; 3] = Default::default();
        for _ in 0..20_000 {
            let i = rng.u32(..50);
            for m in model.iter_mut() {
                m.retain(|&x| x != i);
            }
            if rng.bool() {
                let list = rng.usize(..3);
                l.push(list, i);
                model[list].push(i);
            } else {
                l.unlink(i);
            }
            for (list, m) in model.iter().enumerate() {
                assert_eq!(l.len(list), m.len());
                assert_eq!(l.oldest(list), m.first().copied());
            }
        }
    }
}
