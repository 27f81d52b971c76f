//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend walks its own permutation of the table slots, derived from
//! its address alone, and claims the next free slot on each of its turns.
//! Backends get turns in proportion to their weight (as Katran's Maglev v2
//! does), so a backend of weight 2 owns about twice the slots of one of
//! weight 1. Because permutations depend only on addresses and ties are
//! broken in address order, both directors build the same table from the
//! same backend set, and removing one of N backends moves about 1/N of the
//! flows: a takeover without synced state still lands most flows right.

use std::net::Ipv4Addr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Table size: a prime, so every skip value generates a full permutation.
pub const TABLE_SIZE: usize = 65537;

const OFFSET_SEED: u64 = 0x6475_6574_6d61_6731; // "duetmag1"
const SKIP_SEED: u64 = 0x6475_6574_6d61_6732; // "duetmag2"
const EMPTY: u16 = u16::MAX;

/// A built lookup table: slot → index into the backend list it was built from.
pub(crate) struct Maglev {
    table: Box<[u16]>,
}

impl Maglev {
    /// Builds the table for `backends` (address, weight > 0), which the
    /// caller sorts by address so that every node builds the same table.
    /// `None` when there is no backend with a positive weight or more
    /// backends than a slot index can name.
    pub(crate) fn build(backends: &[(Ipv4Addr, u32)]) -> Option<Maglev> {
        let n = backends.len();
        if n == 0 || n >= usize::from(EMPTY) {
            return None;
        }
        let max_w = u64::from(backends.iter().map(|b| b.1).max()?);
        if max_w == 0 {
            return None;
        }
        let m = TABLE_SIZE as u64;
        let perm: Vec<(u64, u64)> = backends
            .iter()
            .map(|(addr, _)| {
                let o = addr.octets();
                let offset = xxh3_64_with_seed(&o, OFFSET_SEED) % m;
                let skip = xxh3_64_with_seed(&o, SKIP_SEED) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut credit = vec![0u64; n];
        let mut table = vec![EMPTY; TABLE_SIZE].into_boxed_slice();
        let mut filled = 0usize;
        // Every round the heaviest backend gets one turn and the others a
        // share of one in proportion to weight, so rounds are at most
        // TABLE_SIZE and the loop ends.
        loop {
            for i in 0..n {
                credit[i] += u64::from(backends[i].1);
                while credit[i] >= max_w {
                    credit[i] -= max_w;
                    let (offset, skip) = perm[i];
                    loop {
                        let slot = ((offset + next[i] * skip) % m) as usize;
                        next[i] += 1;
                        if table[slot] == EMPTY {
                            table[slot] = i as u16;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == TABLE_SIZE {
                        return Some(Maglev { table });
                    }
                }
            }
        }
    }

    /// The backend index for a flow hash.
    pub(crate) fn lookup(&self, hash: u32) -> usize {
        usize::from(self.table[hash as usize % TABLE_SIZE])
    }

    /// Every slot's backend index.
    pub(crate) fn slots(&self) -> &[u16] {
        &self.table
    }
}

/// The flow hash of sh (`port` None) and mh: murmur3's 32-bit finaliser,
/// simple enough that the eBPF program computes the same (duet.bpf.c,
/// `kernel_pick`) and picks as the engine does.
pub fn flow_hash(src: Ipv4Addr, port: Option<u16>) -> u32 {
    let mut h = u32::from(src);
    if let Some(p) = port {
        h ^= fmix32(u32::from(p) ^ 0x6475_6574);
    }
    fmix32(h)
}

fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<(Ipv4Addr, u32)> {
        (1..=n).map(|i| (Ipv4Addr::new(10, 0, 0, i), 1)).collect()
    }

    fn owners(m: &Maglev, backends: &[(Ipv4Addr, u32)], flows: &[u32]) -> Vec<Ipv4Addr> {
        flows.iter().map(|h| backends[m.lookup(*h)].0).collect()
    }

    fn flows(n: usize) -> Vec<u32> {
        let mut rng = fastrand::Rng::with_seed(42);
        (0..n).map(|_| rng.u32(..)).collect()
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        let b = addrs(7);
        let m = Maglev::build(&b).unwrap();
        let mut count = [0usize; 7];
        for &s in m.table.iter() {
            assert_ne!(s, EMPTY);
            count[usize::from(s)] += 1;
        }
        let ideal = TABLE_SIZE / 7;
        for c in count {
            assert!(c.abs_diff(ideal) <= ideal / 50, "{count:?}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let b = vec![
            (Ipv4Addr::new(10, 0, 0, 1), 1),
            (Ipv4Addr::new(10, 0, 0, 2), 2),
            (Ipv4Addr::new(10, 0, 0, 3), 5),
        ];
        let m = Maglev::build(&b).unwrap();
        let mut count = [0usize; 3];
        for &s in m.table.iter() {
            count[usize::from(s)] += 1;
        }
        let unit = TABLE_SIZE as f64 / 8.0;
        for (i, w) in [1.0, 2.0, 5.0].iter().enumerate() {
            let share = count[i] as f64 / (unit * w);
            assert!((0.97..1.03).contains(&share), "{count:?}");
        }
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        let hashes = flows(100_000);
        for n in [5u8, 10] {
            let all = addrs(n);
            let before = owners(&Maglev::build(&all).unwrap(), &all, &hashes);
            for victim in 0..usize::from(n) {
                let mut rest = all.clone();
                let gone = rest.remove(victim).0;
                let after = owners(&Maglev::build(&rest).unwrap(), &rest, &hashes);
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let moved_survivors = before
                    .iter()
                    .zip(&after)
                    .filter(|(a, b)| **a != gone && a != b)
                    .count();
                let limit = hashes.len() / usize::from(n) + hashes.len() / 50;
                assert!(moved <= limit, "n={n} moved {moved} > {limit}");
                // Flows of surviving backends mostly stay put.
                assert!(
                    moved_survivors <= hashes.len() / 50,
                    "n={n}: {moved_survivors} flows of survivors moved"
                );
            }
        }
    }

    #[test]
    fn same_set_in_same_order_builds_same_table() {
        let b = addrs(4);
        assert_eq!(
            Maglev::build(&b).unwrap().table,
            Maglev::build(&b).unwrap().table
        );
    }

    #[test]
    fn nothing_to_build_from() {
        assert!(Maglev::build(&[]).is_none());
        assert!(Maglev::build(&[(Ipv4Addr::LOCALHOST, 0)]).is_none());
    }
}
