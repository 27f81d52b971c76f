//! The bounded tables behind the connection and persistence state, and the
//! IPVS TCP state machine as seen by a Direct-Routing director.
//!
//! A table is a slab of entries plus a hash index into it. Both are sized
//! once at construction, so inserting and removing never allocate, and
//! expiry walks the slab with a cursor so each call does bounded work.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;
use xxhash_rust::xxh3::Xxh3Builder;

use crate::wire::frame::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use super::Timeouts;

/// Connection state. TCP states follow IPVS's "input only" table, the one it
/// uses when the director sees only client → server packets (DR mode):
/// replies go straight from the backend to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// A SYN was seen (IPVS SYN_RECV).
    SynRecv,
    /// The client acknowledged: an active connection (IPVS ESTABLISHED,
    /// counted as "ActiveConn").
    Established,
    /// The client sent FIN on an established connection.
    FinWait,
    /// FIN seen before the handshake completed, or after FIN_WAIT.
    TimeWait,
    /// Reset, or a packet without any of SYN/FIN/ACK/RST.
    Close,
    /// Not a TCP state: UDP entries have a single state.
    Udp,
}

impl TcpState {
    /// A stable number for wire formats (connection sync).
    pub fn as_u8(self) -> u8 {
        match self {
            TcpState::SynRecv => 1,
            TcpState::Established => 2,
            TcpState::FinWait => 3,
            TcpState::TimeWait => 4,
            TcpState::Close => 5,
            TcpState::Udp => 6,
        }
    }

    /// Inverse of [`TcpState::as_u8`]; `None` for unknown values.
    pub fn from_u8(v: u8) -> Option<TcpState> {
        Some(match v {
            1 => TcpState::SynRecv,
            2 => TcpState::Established,
            3 => TcpState::FinWait,
            4 => TcpState::TimeWait,
            5 => TcpState::Close,
            6 => TcpState::Udp,
            _ => return None,
        })
    }

    /// A label for status pages and logs (IPVS spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::Udp => "UDP",
        }
    }

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

/// A fixed-capacity map from `K` to `V` whose entries live in a slab.
/// Indices stay valid until the entry is removed, so other entries can refer
/// to them.
pub(crate) struct BoundedMap<K, V> {
    /// xxh3 with a per-process random seed: several times cheaper than
    /// SipHash on the hot path, and still unpredictable to a client
    /// choosing ports to collide.
    index: HashMap<K, u32, Xxh3Builder>,
    slots: Vec<Option<(K, V)>>,
    free: Vec<u32>,
    capacity: usize,
    cursor: usize,
}

impl<K: Hash + Eq + Copy, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // Twice the room: hashbrown then always rehashes tombstones in place
        // instead of growing, so no insert ever allocates.
        BoundedMap {
            index: HashMap::with_capacity_and_hasher(
                capacity * 2,
                Xxh3Builder::new().with_seed(fastrand::u64(..)),
            ),
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            cursor: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.index.len() >= self.capacity
    }

    pub(crate) fn find(&self, key: &K) -> Option<u32> {
        self.index.get(key).copied()
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
        debug_assert!(!self.index.contains_key(&key));
        if self.is_full() {
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some((key, value));
                i
            }
            None => {
                self.slots.push(Some((key, value)));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        Some(i)
    }

    pub(crate) fn remove_at(&mut self, i: u32) -> Option<(K, V)> {
        let entry = self.slots.get_mut(i as usize)?.take()?;
        self.index.remove(&entry.0);
        self.free.push(i);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::TCP_PSH;
    use TcpState::*;

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
        let cap_before = m.index.capacity();
        for round in 0..50u64 {
            for k in 0..1000 {
                m.insert(round * 1000 + k, ()).unwrap();
            }
            for i in 0..1000 {
                m.remove_at(i).unwrap();
            }
        }
        assert_eq!(m.len(), 0);
        // capacity() is items + growth left, which tombstones lower; a
        // reallocation would have at least doubled it.
        let cap_after = m.index.capacity();
        assert!(
            (1000..=cap_before).contains(&cap_after),
            "index reallocated: {cap_before} -> {cap_after}"
        );
        assert_eq!(m.slots.capacity(), 1000);
    }
}
