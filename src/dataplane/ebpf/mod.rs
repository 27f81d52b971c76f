//! The eBPF engine's kernel half: loads `duet.bpf.c` (compiled by build.rs,
//! embedded here), attaches it to the LAN interface, and reads and writes its maps. What goes into the maps, and when, is
//! decided by the data-plane thread (src/dataplane/thread.rs) from the Rust
//! engine's verdicts: this file knows nothing about scheduling.
use crate::forward::{maglev, BoundedMap, HashTable, TableKey, MAX_DEAL};
use crate::wire::frame::{FlowKey, Mac};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader, Pod};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

mod sys;
#[cfg(test)]
mod tests;

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/duet.bpf.o"));

/// The tc program's name: also what finds a filter a killed duet left behind.
const TC_PROG: &str = "duet_tc";
/// UDP flows in the kernel: a separate LRU map (evicting one only sends its
/// packets back to user space), sized apart from the confirmed TCP flows.
const UDP_FLOWS: u32 = 65536;
/// The walk looks a flow's remembered counters up (and has its caller
/// look the flow up) this many flows ahead, in two steps: the tables'
/// index first, their entry once that has arrived.
const AHEAD: usize = 8;
const AHEAD_NEAR: usize = 4;

/// `struct flow_key` in duet.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct RawKey {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
    pad: [u8; 3],
}

/// `struct flow_val` in duet.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawVal {
    mac: Mac,
    local: u8,
    origin: u8,
    backend: [u8; 4],
    epoch: u32,
    tcp_flags: u8,
    pad: [u8; 3],
    packets: u64,
    bytes: u64,
    last_seen: u64,
}

/// `struct control` in duet.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawControl {
    active: u32,
    ifindex: u32,
    pad0: u32,
    own_mac: Mac,
    vmac: Mac,
    lease_until: u64,
    new_cost_ns: u64,
    epoch: u32,
    pad: u32,
    echo_cost_ns: u64,
}

/// `struct svc_key` in duet.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RawSvc {
    vip: [u8; 4],
    port: [u8; 2],
    proto: u8,
    pad: u8,
}

/// `struct target` in duet.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTarget {
    mac: Mac,
    local: u8,
    pad: u8,
    backend: [u8; 4],
}

/// `struct pick` in duet.bpf.c: 71 KiB, so always boxed.
#[repr(C)]
struct RawPick {
    src_mask: [u8; 4],
    with_port: u8,
    n: u8,
    exact: u8,
    pad: u8,
    deal_len: u16,
    pad2: u16,
    cursor: u32,
    t: [RawTarget; PICK_BACKENDS],
    deal: [u8; MAX_DEAL],
    slot: [u8; maglev::TABLE_SIZE],
    tail: [u8; 3],
}

/// Backends one service's kernel table can name (its slots are bytes).
const PICK_BACKENDS: usize = 255;
// The C struct's size (4-byte aligned): the kernel copies that many bytes.
const _: () = assert!(std::mem::size_of::<RawPick>() == 72_712);

// SAFETY: plain repr(C) data without padding the kernel could leak into
// (every gap is an explicit field), valid for any bit pattern.
unsafe impl Pod for RawKey {}
// SAFETY: as above.
unsafe impl Pod for RawVal {}
// SAFETY: as above.
unsafe impl Pod for RawControl {}
// SAFETY: as above.
unsafe impl Pod for RawSvc {}

impl RawKey {
    fn new(k: &FlowKey) -> RawKey {
        RawKey {
            saddr: k.src.octets(),
            daddr: k.dst.octets(),
            sport: k.sport.to_be_bytes(),
            dport: k.dport.to_be_bytes(),
            proto: k.proto,
            pad: [0; 3],
        }
    }

    fn flow(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: Ipv4Addr::from(self.saddr),
            sport: u16::from_be_bytes(self.sport),
            dst: Ipv4Addr::from(self.daddr),
            dport: u16::from_be_bytes(self.dport),
        }
    }

    /// The key's 13 meaningful bytes (the padding is always zero).
    fn bytes(&self) -> [u8; 13] {
        let mut b = [0u8; 13];
        b[0..4].copy_from_slice(&self.saddr);
        b[4..8].copy_from_slice(&self.daddr);
        b[8..10].copy_from_slice(&self.sport);
        b[10..12].copy_from_slice(&self.dport);
        b[12] = self.proto;
        b
    }
}

impl TableKey for RawKey {
    fn hash_with(&self, seed: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(&self.bytes(), seed)
    }
}

/// Why the eBPF engine cannot run here; auto mode logs it and falls back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    #[error("tc on {0}: {1}")]
    Tc(String, String),
}

/// Where the kernel sends a flow's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub backend: Ipv4Addr,
    pub mac: Mac,
    pub local: bool,
}

/// What the kernel did with one flow since it was installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub target: Target,
    pub packets: u64,
    pub bytes: u64,
    /// How long ago the kernel last forwarded one of its frames; `None`
    /// when it never did.
    pub idle: Option<Duration>,
    /// Scheduled by the kernel itself (over the budget): user space
    /// has not decided it, and adopts it.
    pub kernel_scheduled: bool,
    /// In a confirmed map (its handshake completed, or a UDP flow's second
    /// datagram came), not a pending one.
    pub confirmed: bool,
    /// TCP FIN and RST the kernel forwarded since the flow's previous
    /// visit: user space's state machine takes them from here.
    pub tcp_flags: u8,
}

/// Totals over all CPUs of the frames the kernel forwarded itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub remote_packets: u64,
    pub remote_bytes: u64,
    pub local_packets: u64,
    pub local_bytes: u64,
    pub redirect_errors: u64,
    /// Half-open flows the program moved to the confirmed map on their
    /// handshake's ACK.
    pub promoted: u64,
    /// New flows over user space's budget that the kernel scheduled itself.
    pub new_scheduled: u64,
    /// New flows over the budget for a service without a kernel table (no
    /// eligible backend, or too many): handed to user space all the same.
    pub new_unscheduled: u64,
    /// Non-first fragments to the VIP, dropped in kernel.
    pub fragments: u64,
    /// Pings of the VIP handed to the local stack, and those over the rate.
    pub echo_local: u64,
    pub echo_limited: u64,
    /// Confirmations of kernel-scheduled flows lost to a full ring (the
    /// walk adopts those flows later).
    pub adopt_lost: u64,
    /// Frames to the virtual MAC with a VLAN id, dropped in kernel.
    pub vlan: u64,
}

/// Fixed facts about the interface the program serves.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub ifindex: u32,
    pub vmac: Mac,
    pub own_mac: Mac,
    /// Entries in the confirmed-flow map; the embryonic map gets the bound
    /// of the userspace table's embryonic part for this capacity.
    pub max_connections: u32,
    /// How long one renewal keeps the program forwarding (dead_after/2).
    pub lease: Duration,
    /// New flows (TCP and UDP) a second that user space decides; the
    /// kernel schedules the rest itself. 0: user space decides all.
    pub new_flow_budget: u32,
    /// Pings of the VIP answered a second (by the local stack).
    pub echo_rate: u32,
}

/// The loaded programs and their maps. Dropping it detaches the tc program
/// (a TCX link, or a netlink filter removed by aya) and frees the maps.
pub struct Kernel {
    bpf: Ebpf,
    confirmed: MapData,
    embryonic: MapData,
    udp: MapData,
    /// UDP flows the kernel scheduled, until their second datagram.
    udp_new: MapData,
    /// The VIPs, and those last written to it.
    vips: MapData,
    vips_set: Vec<Ipv4Addr>,
    picks: MapData,
    /// Services whose table is in `picks`.
    picked: Vec<RawSvc>,
    ctl: Array<MapData, RawControl>,
    stats: PerCpuArray<MapData, u64>,
    /// Flows the kernel scheduled, as it confirms them.
    adoptions: RingBuf<MapData>,
    control: RawControl,
    lease: Duration,
    /// Where the next bounded walk resumes (a hash bucket), per map.
    cursor: [Option<u32>; 2],
    /// What one batched lookup of the walk fills.
    batch_keys: Vec<RawKey>,
    batch_vals: Vec<RawVal>,
    /// Flows per map counted by the last complete walk, and by the one
    /// under way.
    flows: [usize; 2],
    counting: [usize; 2],
    /// Counters and flags as last read, per flow, with the walk round
    /// that read them: the kernel's only grow (user space cannot reset them
    /// without racing the program), so activity is the difference. One
    /// per map, so the end of a pass sweeps only its own map's flows (a
    /// small map's pass ends every walk). Flows the kernel dropped by
    /// itself stay remembered until the end of their map's pass, so each
    /// has room for its map full and more: twice over for the confirmed
    /// TCP map (the kernel deletes one only for a SYN on its ports), four
    /// times for the UDP LRU (a whole map's worth of evictions a pass).
    seen: [BoundedMap<RawKey, Seen>; 2],
    /// Slots of `seen` to forget at the end of a pass.
    stale: Vec<u32>,
    round: [u32; 2],
    /// When the pass under way over each map started, and its walks.
    pass_start: [u64; 2],
    pass_walks: [u32; 2],
}

impl Kernel {
    /// Loads the program and fills the control map (not forwarding yet).
    pub fn load(p: &Params) -> Result<Kernel, Error> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries("confirmed", p.max_connections.max(1))
            .map_max_entries("embryonic", embryonic_bound(p.max_connections))
            .map_max_entries("udp", UDP_FLOWS)
            .map_max_entries("udp_new", embryonic_bound(p.max_connections))
            .load(OBJECT)?;
        let prog = bpf.program_mut(TC_PROG).ok_or(Error::Program(
            TC_PROG,
            aya::programs::ProgramError::NotLoaded,
        ))?;
        <&mut SchedClassifier>::try_from(prog)
            .and_then(|p| p.load())
            .map_err(|e| Error::Program(TC_PROG, e))?;
        let hash = |bpf: &mut Ebpf, name: &'static str| match bpf.take_map(name) {
            Some(Map::HashMap(m) | Map::LruHashMap(m)) => Ok(m),
            _ => Err(Error::Map(name, "missing or not a hash".into())),
        };
        let confirmed = hash(&mut bpf, "confirmed")?;
        let embryonic = hash(&mut bpf, "embryonic")?;
        let udp = hash(&mut bpf, "udp")?;
        let udp_new = hash(&mut bpf, "udp_new")?;
        let picks = hash(&mut bpf, "picks")?;
        let vips = hash(&mut bpf, "vips")?;
        let ctl = bpf
            .take_map("ctl")
            .ok_or(Error::Map("ctl", "missing".into()))
            .and_then(|m| Array::try_from(m).map_err(|e| Error::Map("ctl", e.to_string())))?;
        let stats = bpf
            .take_map("stats")
            .ok_or(Error::Map("stats", "missing".into()))
            .and_then(|m| {
                PerCpuArray::try_from(m).map_err(|e| Error::Map("stats", e.to_string()))
            })?;
        let adoptions = bpf
            .take_map("adoptions")
            .ok_or(Error::Map("adoptions", "missing".into()))
            .and_then(|m| {
                RingBuf::try_from(m).map_err(|e| Error::Map("adoptions", e.to_string()))
            })?;
        let mut k = Kernel {
            bpf,
            adoptions,
            confirmed,
            embryonic,
            udp,
            udp_new,
            picks,
            picked: Vec::new(),
            vips,
            vips_set: Vec::new(),
            ctl,
            stats,
            control: RawControl {
                active: 0,
                ifindex: p.ifindex,
                pad0: 0,
                own_mac: p.own_mac,
                vmac: p.vmac,
                lease_until: 0,
                new_cost_ns: match p.new_flow_budget {
                    0 => 0,
                    n => 1_000_000_000 / u64::from(n),
                },
                epoch: 0,
                pad: 0,
                echo_cost_ns: 1_000_000_000 / u64::from(p.echo_rate.max(1)),
            },
            lease: p.lease,
            cursor: [None, None],
            batch_keys: Vec::new(),
            batch_vals: Vec::new(),
            flows: [0, 0],
            counting: [0, 0],
            seen: [
                BoundedMap::new(2 * p.max_connections.max(1) as usize),
                BoundedMap::new(4 * UDP_FLOWS as usize),
            ],
            stale: Vec::new(),
            round: [0, 0],
            pass_start: [0, 0],
            pass_walks: [0, 0],
        };
        k.write_control()?;
        Ok(k)
    }

    /// Attaches the tc program to `ifname`'s clsact ingress. A filter left
    /// by an earlier duet that was killed (netlink attachments, kernels
    /// before 6.6, outlive their process) is removed first.
    pub fn attach_tc(&mut self, ifname: &str) -> Result<(), Error> {
        let tc_err = |e: String| Error::Tc(ifname.to_string(), e);
        match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, TC_PROG) {
            Ok(()) => log::warn!("removed a stale duet tc filter from {ifname}"),
            Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::debug!("looking for a stale tc filter on {ifname}: {e}"),
        }
        // EEXIST: the qdisc is there already (ours from before, or another
        // user's); both are fine.
        if let Err(e) = tc::qdisc_add_clsact(ifname) {
            let exists = matches!(&e, tc::TcError::NetlinkError(n)
                if n.raw_os_error() == Some(libc::EEXIST));
            if !exists {
                return Err(tc_err(e.to_string()));
            }
        }
        let prog: &mut SchedClassifier = self
            .bpf
            .program_mut(TC_PROG)
            .ok_or_else(|| tc_err("program missing".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| tc_err(e.to_string()))?;
        // DUET_TC_ATTACH=netlink attaches as kernels before 6.6 must (a tc
        // filter that outlives the process), to test that path here.
        let r = if std::env::var("DUET_TC_ATTACH").as_deref() == Ok("netlink") {
            prog.attach_with_options(
                ifname,
                TcAttachType::Ingress,
                tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
            )
        } else {
            prog.attach(ifname, TcAttachType::Ingress)
        };
        r.map_err(|e| tc_err(e.to_string()))?;
        Ok(())
    }

    /// Turns forwarding on or off (directing, or stepping down, is on).
    pub fn set_active(&mut self, active: bool) -> Result<(), Error> {
        self.control.active = u32::from(active);
        if active {
            self.control.lease_until = sys::monotonic_ns() + self.lease.as_nanos() as u64;
        }
        self.write_control()
    }

    /// Renews the lease: the program keeps forwarding for `lease` from now.
    pub fn renew(&mut self) -> Result<(), Error> {
        self.control.lease_until = sys::monotonic_ns() + self.lease.as_nanos() as u64;
        self.write_control()
    }

    /// The addresses the program forwards for; frames to any other address
    /// are the host's own.
    pub fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<(), Error> {
        let err = |e: std::io::Error| Error::Map("vips", e.to_string());
        for gone in self.vips_set.iter().filter(|v| !vips.contains(v)) {
            let _ = sys::delete(fd(&self.vips), &gone.octets());
        }
        self.vips_set.retain(|v| vips.contains(v));
        for v in vips {
            sys::update(fd(&self.vips), &v.octets(), &1u8, 0).map_err(err)?;
            if !self.vips_set.contains(v) {
                self.vips_set.push(*v);
            }
        }
        Ok(())
    }

    /// Replaces the kernel's scheduling tables (one per service) and starts
    /// a new epoch: a SYN retransmitted, or a UDP flow the kernel
    /// scheduled, after a backend change is decided afresh.
    pub fn set_tables(&mut self, tables: &[HashTable]) -> Result<(), Error> {
        let err = |e: std::io::Error| Error::Map("picks", e.to_string());
        let mut now = Vec::with_capacity(tables.len());
        // SAFETY: RawPick is plain bytes; all zeroes is a valid value.
        let mut v: Box<RawPick> = unsafe { Box::new_zeroed().assume_init() };
        for t in tables {
            if t.backends.len() > PICK_BACKENDS
                || t.slots.len() != v.slot.len()
                || t.deal.len() > v.deal.len()
            {
                continue;
            }
            let key = RawSvc {
                vip: t.vip.octets(),
                port: t.port.to_be_bytes(),
                proto: t.proto,
                pad: 0,
            };
            v.src_mask = t.src_mask.octets();
            v.with_port = u8::from(t.with_port);
            v.n = t.backends.len() as u8;
            v.exact = u8::from(t.exact);
            v.deal_len = t.deal.len() as u16;
            for (raw, &i) in v.deal.iter_mut().zip(&t.deal) {
                *raw = i as u8;
            }
            for (raw, b) in v.t.iter_mut().zip(&t.backends) {
                *raw = RawTarget {
                    mac: b.mac,
                    local: u8::from(b.local),
                    pad: 0,
                    backend: b.backend.octets(),
                };
            }
            for (raw, &i) in v.slot.iter_mut().zip(t.slots.iter()) {
                *raw = i as u8;
            }
            sys::update(fd(&self.picks), &key, &*v, 0).map_err(err)?;
            now.push(key);
        }
        for old in &self.picked {
            if !now.contains(old) {
                let _ = sys::delete(fd(&self.picks), old);
            }
        }
        self.picked = now;
        self.control.epoch = self.control.epoch.wrapping_add(1);
        self.write_control()
    }

    fn write_control(&mut self) -> Result<(), Error> {
        self.ctl
            .set(0, self.control, 0)
            .map_err(|e| Error::Map("ctl", e.to_string()))
    }

    fn map_for(&self, proto: u8) -> Option<(usize, &MapData)> {
        match proto {
            FlowKey::TCP => Some((0, &self.confirmed)),
            FlowKey::UDP => Some((1, &self.udp)),
            _ => None,
        }
    }

    /// Hands `key`'s frames to the kernel. `Ok(false)`: the map is full (a
    /// plain hash, so confirmed flows are never evicted); user space keeps
    /// forwarding that flow.
    pub fn install(&self, key: &FlowKey, t: Target) -> Result<bool, Error> {
        let Some((_, m)) = self.map_for(key.proto) else {
            return Ok(false);
        };
        insert(m, key, t, self.control.epoch).map_err(|e| Error::Map("confirmed", e.to_string()))
    }

    /// Hands a new TCP flow (its SYN just forwarded) to the kernel's
    /// embryonic LRU, so its handshake's ACK and first data stay in kernel;
    /// the program promotes it to the confirmed map on that ACK. A full map
    /// evicts its least recently used flow, whose next frame comes back
    /// here.
    pub fn install_embryonic(&self, key: &FlowKey, t: Target) -> Result<(), Error> {
        if key.proto != FlowKey::TCP {
            return Ok(());
        }
        insert(&self.embryonic, key, t, self.control.epoch)
            .map(|_| ())
            .map_err(|e| Error::Map("embryonic", e.to_string()))
    }

    /// Takes `key` away from the kernel; its next frame goes to user space.
    pub fn remove(&mut self, key: &FlowKey) {
        let k = RawKey::new(key);
        let mut slot = None;
        if let Some((s, m)) = self.map_for(key.proto) {
            // ENOENT: not installed, or already gone.
            let _ = sys::delete(fd(m), &k);
            slot = Some(s);
        }
        let pending = match key.proto {
            FlowKey::TCP => &self.embryonic,
            _ => &self.udp_new,
        };
        let _ = sys::delete(fd(pending), &k);
        if let Some(seen) = slot.map(|s| &mut self.seen[s]) {
            if let Some(i) = seen.find(&k) {
                seen.remove_at(i);
            }
        }
    }

    /// The kernel's view of `key`, if installed (confirmed or embryonic):
    /// its counters since installation.
    pub fn lookup(&self, key: &FlowKey) -> Option<Activity> {
        let (_, m) = self.map_for(key.proto)?;
        let k = RawKey::new(key);
        let (v, confirmed): (RawVal, bool) = match sys::lookup(fd(m), &k).ok()? {
            Some(v) => (v, true),
            None if key.proto == FlowKey::TCP => {
                (sys::lookup(fd(&self.embryonic), &k).ok()??, false)
            }
            None => (sys::lookup(fd(&self.udp_new), &k).ok()??, false),
        };
        Some(activity(
            &v,
            Seen::default(),
            sys::monotonic_ns(),
            confirmed,
        ))
    }

    /// Visits about `budget` installed flows of `proto` (whole hash
    /// buckets), resuming where the last walk stopped (a few bpf(2) calls:
    /// one batched lookup, and a delete per flow taken back). `f` gets what the kernel forwarded since
    /// the flow's previous visit and returns whether the flow stays in the
    /// kernel.
    pub fn walk(
        &mut self,
        proto: u8,
        budget: usize,
        f: impl FnMut(FlowKey, Activity) -> bool,
    ) -> usize {
        struct Plain<F>(F);
        impl<F: FnMut(FlowKey, Activity) -> bool> Visit for Plain<F> {
            fn visit(&mut self, key: FlowKey, act: Activity) -> bool {
                (self.0)(key, act)
            }
        }
        self.walk_with(proto, budget, &mut Plain(f))
    }

    /// [`Kernel::walk`], telling `v` of the flows it will visit next
    /// ([`Visit::ahead`]) so its own lookups of them overlap.
    pub fn walk_with(&mut self, proto: u8, budget: usize, v: &mut impl Visit) -> usize {
        let Some((slot, m)) = self.map_for(proto) else {
            return 0;
        };
        let fd = fd(m);
        let now = sys::monotonic_ns();
        let round = self.round[slot];
        // The kernel returns whole hash buckets: one that holds more flows
        // than the room left (ENOSPC) is read with more room, not skipped.
        let mut room = budget.max(1);
        let (got, next) = loop {
            if self.batch_keys.len() < room {
                self.batch_keys.resize(room, RawKey::default());
                self.batch_vals.resize(room, RawVal::default());
            }
            match sys::lookup_batch(
                fd,
                self.cursor[slot],
                &mut self.batch_keys[..room],
                &mut self.batch_vals[..room],
            ) {
                Ok(r) => break r,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && room < 1 << 20 => room *= 2,
                Err(e) => {
                    log::debug!("eBPF walk: {e}");
                    break (0, None);
                }
            }
        };
        for i in 0..got {
            // The walk is memory-bound (the tables dwarf the caches): the
            // lookups of the next flows start now.
            if i + AHEAD < got {
                let k = &self.batch_keys[i + AHEAD];
                self.seen[slot].prefetch_index(k);
                v.ahead(&k.flow(), false);
            }
            if i + AHEAD_NEAR < got {
                let k = &self.batch_keys[i + AHEAD_NEAR];
                self.seen[slot].prefetch_slot(k);
                v.ahead(&k.flow(), true);
            }
            let (cur, val) = (self.batch_keys[i], self.batch_vals[i]);
            let at = self.seen[slot].find(&cur);
            // Counters below the remembered ones: the flow was deleted (a
            // SYN on its ports) and installed afresh since the last visit.
            let before = at
                .and_then(|j| self.seen[slot].at(j))
                .map(|(_, s)| *s)
                .filter(|s| s.packets <= val.packets && s.bytes <= val.bytes)
                .unwrap_or_default();
            if v.visit(cur.flow(), activity(&val, before, now, true)) {
                let seen = Seen {
                    packets: val.packets,
                    bytes: val.bytes,
                    tcp_flags: val.tcp_flags,
                    round,
                };
                // Updated in place: one lookup a visit.
                match at.and_then(|j| self.seen[slot].at_mut(j)) {
                    Some((_, s)) => *s = seen,
                    // Full (more churn in one pass than the room
                    // allows): the flow's next visit counts all it ever
                    // forwarded again.
                    None => {
                        if self.seen[slot].insert(cur, seen).is_none() {
                            log::debug!("eBPF walk: no room to remember {:?}", cur.flow());
                        }
                    }
                }
            } else {
                let _ = sys::delete(fd, &cur);
                if let Some(j) = at {
                    self.seen[slot].remove_at(j);
                }
            }
        }
        self.counting[slot] += got;
        self.pass_walks[slot] += 1;
        if next.is_none() {
            log::debug!(
                "eBPF walk: a pass over the {} map: {} flows in {} walks, {} ms",
                if slot == 0 { "TCP" } else { "UDP" },
                self.counting[slot],
                self.pass_walks[slot],
                now.saturating_sub(self.pass_start[slot]) / 1_000_000
            );
            self.pass_start[slot] = now;
            self.pass_walks[slot] = 0;
            // The end: the next walk starts over, and flows the kernel
            // dropped by itself (LRU) stop being remembered.
            self.round[slot] = round.wrapping_add(1);
            self.stale.clear();
            let seen = &mut self.seen[slot];
            self.stale.extend(
                seen.iter()
                    .filter(|(_, (_, s))| s.round != round)
                    .map(|(j, _)| j),
            );
            for &j in &self.stale {
                seen.remove_at(j);
            }
            self.flows[slot] = std::mem::take(&mut self.counting[slot]);
        }
        self.cursor[slot] = next;
        got
    }

    /// Installed flows (TCP, UDP), as the last complete walk of each map
    /// counted them.
    pub fn len(&self) -> (usize, usize) {
        (self.flows[0], self.flows[1])
    }

    pub fn stats(&self) -> KernelStats {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        KernelStats {
            remote_packets: sum(0),
            remote_bytes: sum(1),
            local_packets: sum(2),
            local_bytes: sum(3),
            redirect_errors: sum(4),
            promoted: sum(5),
            new_scheduled: sum(6),
            new_unscheduled: sum(7),
            fragments: sum(8),
            echo_local: sum(9),
            echo_limited: sum(10),
            adopt_lost: sum(11),
            vlan: sum(12),
        }
    }

    /// Hands `f` each note of a flow the kernel scheduled (on scheduling,
    /// within the budget, and on confirmation) since the last call: the
    /// flow, its backend, and whether it is confirmed; oldest first. Reads
    /// shared memory: no system call.
    pub fn adoptions(&mut self, mut f: impl FnMut(FlowKey, Ipv4Addr, bool)) {
        while let Some(item) = self.adoptions.next() {
            // `struct adoption`: the key, the backend address, confirmed.
            let Some(a) = item.get(..size_of::<RawKey>() + 5) else {
                continue;
            };
            let (k, b) = a.split_at(size_of::<RawKey>());
            let key = RawKey {
                saddr: [k[0], k[1], k[2], k[3]],
                daddr: [k[4], k[5], k[6], k[7]],
                sport: [k[8], k[9]],
                dport: [k[10], k[11]],
                proto: k[12],
                pad: [0; 3],
            };
            f(key.flow(), Ipv4Addr::new(b[0], b[1], b[2], b[3]), b[4] != 0);
        }
    }
}

/// What [`Kernel::walk_with`] asks of its caller.
pub trait Visit {
    /// A flow the walk visits a few flows from now, twice: `near` false,
    /// then `near` true closer to its visit (for a two-step prefetch of
    /// the caller's own lookup). A hint only.
    fn ahead(&mut self, _key: &FlowKey, _near: bool) {}
    /// What the kernel forwarded of `key` since its previous visit;
    /// returns whether the flow stays in the kernel.
    fn visit(&mut self, key: FlowKey, act: Activity) -> bool;
}

/// What the walk last read of one flow.
#[derive(Clone, Copy, Default)]
struct Seen {
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    round: u32,
}

/// The userspace table's embryonic bound for this many confirmed flows.
fn embryonic_bound(max_connections: u32) -> u32 {
    let part = crate::forward::Limits::for_capacity(max_connections as usize).embryonic;
    u32::try_from(part).unwrap_or(u32::MAX).max(1)
}

/// `Ok(false)`: the map is full (only a plain hash says so).
fn insert(m: &MapData, key: &FlowKey, t: Target, epoch: u32) -> std::io::Result<bool> {
    let v = RawVal {
        mac: t.mac,
        local: u8::from(t.local),
        backend: t.backend.octets(),
        epoch,
        ..RawVal::default()
    };
    match sys::update(fd(m), &RawKey::new(key), &v, sys::BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::E2BIG) => Ok(false),
        Err(e) => Err(e),
    }
}

fn fd(m: &MapData) -> RawFd {
    m.fd().as_fd().as_raw_fd()
}

fn activity(v: &RawVal, before: Seen, now: u64, confirmed: bool) -> Activity {
    Activity {
        target: Target {
            backend: Ipv4Addr::from(v.backend),
            mac: v.mac,
            local: v.local != 0,
        },
        packets: v.packets.saturating_sub(before.packets),
        bytes: v.bytes.saturating_sub(before.bytes),
        idle: (v.last_seen != 0).then(|| Duration::from_nanos(now.saturating_sub(v.last_seen))),
        kernel_scheduled: v.origin != 0,
        confirmed,
        tcp_flags: v.tcp_flags & !before.tcp_flags,
    }
}
