//! The hot path: one thread that owns the packet socket, the TUN device and
//! the forwarding engine. It never waits on the control plane: role,
//! backend snapshot and announcement requests arrive through `Shared`,
//! checked with one atomic load per batch and locked only when changed.
use crate::dataplane::announce::{Announcer, ArpAction, Holding};
use crate::dataplane::drop::DpDrop;
use crate::dataplane::ebpf::{self, Kernel};
use crate::forward::{
    ConnEntry, Engine, FloodEvent, PersistEntry, Snapshot, TableStats, TcpState, Timeouts,
    TokenBucket, Verdict,
};
use crate::sync::Installs;
use crate::wire::frame::{self, Classified, FlowKey, Mac, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::packet::{self, PacketSocket, RxRing, RxSlot, SlotKind, SLOT_LEN, VNET_HDR_LEN};
use super::tun::Tun;

/// Frames handed to one `sendmmsg`.
const BATCH: usize = 64;
/// Frames taken from the ring before the housekeeping runs again, so a
/// saturated ring cannot starve sync, expiry or control changes.
const FRAMES_PER_ROUND: usize = 1024;
/// How often changes go to (or installs come from) the sync thread.
const SYNC_PERIOD: Duration = Duration::from_millis(10);
/// Bound on changes handed over per exchange; the rest wait in the engine's log.
const SYNC_MAX: usize = 8192;
/// Pings of the VIP answered per second (and at once): each costs a TUN
/// write (or, on the eBPF engine, a pass to the stack) and a reply from the
/// kernel, which does not rate-limit echo replies, so an ICMP flood must
/// not turn into as many of both.
pub const ECHO_RATE: u32 = 1000;
/// Reports waiting for the control loop (it takes them at once; the engine
/// emits at most a pair of flood events a minute).
const REPORTS_MAX: usize = 16;
/// eBPF engine: how often the lease is renewed and the kernel's flows are
/// walked, and how many flows of each map one walk visits: enough that a
/// full pass over the map takes about KERNEL_PASS walks (~5.8 s: the loop
/// wakes every 20 ms at most, so a walk comes every 100-110 ms; well
/// inside the shortest timeout of a flow the kernel holds, 10 s in CLOSE or
/// for UDP under pressure), at most KERNEL_WALK (a full table of 262,144
/// takes ~6.8 s), and at least KERNEL_WALK_MIN (a small table is still
/// walked whole several times a second). Visiting a flow costs about a
/// microsecond, memory-bound: a small table walked whole ten times a
/// second, or a large one faster than its timeouts need, spends that for
/// nothing.
const KERNEL_PERIOD: Duration = Duration::from_millis(100);
const KERNEL_PASS: usize = 55;
const KERNEL_WALK: usize = 4096;
const KERNEL_WALK_MIN: usize = 256;

/// Flows of a map one walk visits when it holds about `flows`.
fn walk_budget(flows: usize) -> usize {
    flows
        .div_ceil(KERNEL_PASS)
        .clamp(KERNEL_WALK_MIN, KERNEL_WALK)
}

/// What the control plane tells the data plane.
#[derive(Clone)]
pub struct Control {
    /// Whether this node forwards, and whether it announces the VIPs (the
    /// control plane's `crate::handover` machine decides).
    pub holding: Holding,
    pub snapshot: Arc<Snapshot>,
    /// Bumped to ask for a fresh burst of gratuitous ARPs.
    pub announce: u64,
}

/// What the data plane reports back, published a few times a second.
#[derive(Clone, Default, Debug)]
pub struct DpStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub local_packets: u64,
    pub connections: usize,
    pub drops: BTreeMap<DpDrop, u64>,
    /// Per (VIP, backend address).
    pub backends: Vec<((Ipv4Addr, Ipv4Addr), crate::forward::BackendCounters)>,
    pub vip_conflicts: u64,
    /// Connection table occupancy and evictions per part.
    pub table: TableStats,
    /// "ebpf" or "userspace".
    pub engine: &'static str,
    /// eBPF engine: flows the kernel forwards, and confirmed flows it had
    /// no room for (user space forwards those).
    pub kernel_flows: usize,
    pub kernel_full: u64,
    /// Handshake ACKs of half-open flows that came to user space because
    /// the kernel's embryonic LRU had evicted the flow (a SYN flood churns
    /// it); user space forwarded them.
    pub kernel_embryonic_lost: u64,
    /// Frames the kernel forwarded itself (counted in rx/tx too).
    pub kernel_packets: u64,
    /// New flows the kernel scheduled itself (exact tables, or over budget).
    pub kernel_scheduled: u64,
    /// Notes of those flows lost to a full ring (the walk adopted them).
    pub kernel_adopt_lost: u64,
}

/// Entries traded between the data plane and the sync thread.
#[derive(Default)]
pub struct SyncExchange {
    /// Director: changes taken from the engine, not yet queued for sending.
    pub conns: Vec<ConnEntry>,
    pub persists: Vec<PersistEntry>,
    /// Director: the whole table, when the sync layer asked for it.
    pub snapshot: Option<(Vec<ConnEntry>, Vec<PersistEntry>)>,
    pub want_snapshot: bool,
    /// Standby: entries received from the director, to install.
    pub installs: Installs,
}

/// What the sync thread reports for status and metrics.
#[derive(Clone, Default, Debug)]
pub struct SyncStatus {
    pub synced: u64,
    pub lag_entries: u64,
    pub lag_ms: Option<u64>,
    pub rejected: u64,
    /// `sync::position`: last batch sent (director) or applied (standby).
    pub position: u64,
    /// The peer's boot id as its heartbeats' challenge verified it (0 =
    /// none yet); written by the control loop, read by the sync thread.
    pub peer_boot: u64,
}

pub struct Shared {
    version: AtomicU64,
    /// An eventfd that wakes the data plane at once on a control change, so
    /// a takeover does not wait for the poll timeout.
    wake: OwnedFd,
    control: Mutex<Control>,
    active: AtomicBool,
    stop: AtomicBool,
    pub stats: Mutex<DpStats>,
    pub sync: Mutex<SyncExchange>,
    pub sync_status: Mutex<SyncStatus>,
    /// Director: everything taken from the engine so far is acknowledged by
    /// the standby (gates a planned switchover).
    sync_caught_up: AtomicBool,
    reports: (
        smol::channel::Sender<Report>,
        smol::channel::Receiver<Report>,
    ),
}

/// What the data plane and the sync thread tell the control loop, which
/// sleeps until one of these (or its other inputs) arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The successor's gratuitous ARP was seen while stepping down.
    SuccessorAnnounced,
    /// The standby acknowledged everything sent so far.
    SyncCaughtUp,
    /// For the control plane's event log.
    Flood(FloodEvent),
}

impl Shared {
    pub fn new(control: Control) -> std::io::Result<Arc<Shared>> {
        // SAFETY: plain eventfd(2); owned right away.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Arc::new(Shared {
            wake,
            version: AtomicU64::new(1),
            active: AtomicBool::new(control.holding.forwards()),
            control: Mutex::new(control),
            stop: AtomicBool::new(false),
            stats: Mutex::new(DpStats::default()),
            sync: Mutex::new(SyncExchange::default()),
            sync_status: Mutex::new(SyncStatus::default()),
            sync_caught_up: AtomicBool::new(false),
            reports: smol::channel::bounded(REPORTS_MAX),
        }))
    }

    pub fn update(&self, f: impl FnOnce(&mut Control)) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c);
        self.active.store(c.holding.forwards(), Ordering::Release);
        self.version.fetch_add(1, Ordering::Release);
        drop(c);
        let one = 1u64;
        // SAFETY: an eventfd write takes exactly 8 bytes.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        let c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        c.snapshot.clone()
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Queues a report for the control loop. The queue is bounded: a
    /// report that finds it full is dropped (flood events come at most a
    /// pair a minute, the others once per handover).
    pub fn report(&self, r: Report) {
        let _ = self.reports.0.try_send(r);
    }

    /// Where the control loop waits for reports.
    pub fn reports(&self) -> smol::channel::Receiver<Report> {
        self.reports.1.clone()
    }

    /// Sync thread, director: whether the standby has acknowledged all
    /// sent so far; reported when that becomes true.
    pub fn set_sync_caught_up(&self, caught_up: bool) {
        let was = self.sync_caught_up.swap(caught_up, Ordering::AcqRel);
        if caught_up && !was {
            self.report(Report::SyncCaughtUp);
        }
    }

    /// A handover starts waiting for the standby: the next confirmation
    /// must be a fresh one.
    pub fn reset_sync_caught_up(&self) {
        self.sync_caught_up.store(false, Ordering::Release);
    }

    pub fn sync_caught_up(&self) -> bool {
        self.sync_caught_up.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn sync_status(&self) -> SyncStatus {
        self.sync_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stats(&self) -> DpStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a new `Control` changes for the data plane, against what it runs
/// with now.
#[derive(Debug, PartialEq, Eq)]
struct Delta {
    /// Another snapshot: the engine (and the kernel's tables) take it.
    snapshot: bool,
    /// ... naming other VIPs: the announcer and the kernel's VIP map too.
    vips: bool,
    /// Forwarding starts (join the virtual MAC, turn the kernel on) or
    /// stops.
    active: Option<bool>,
    /// A fresh burst of gratuitous ARPs was asked for.
    announce_again: bool,
}

impl Delta {
    fn between(running: &Arc<Snapshot>, active: bool, announce_seen: u64, c: &Control) -> Delta {
        let snapshot = !Arc::ptr_eq(&c.snapshot, running);
        let forwards = c.holding.forwards();
        Delta {
            snapshot,
            vips: snapshot && c.snapshot.vips != running.vips,
            active: (forwards != active).then_some(forwards),
            announce_again: c.announce != announce_seen,
        }
    }
}

pub struct Params {
    pub vmac: Mac,
    pub own_mac: Mac,
    pub max_connections: usize,
    /// The eBPF engine's kernel half, when it runs.
    pub kernel: Option<Kernel>,
}

struct Plane {
    p: Params,
    sock: PacketSocket,
    ring: Option<RxRing>,
    tun: Tun,
    shared: Arc<Shared>,
    engine: Engine,
    active: bool,
    seen_version: u64,
    announce_seen: u64,
    announcer: Announcer,
    echo: TokenBucket,
    stats: DpStats,
    kernel: Option<Kernel>,
    /// Per (VIP, backend), packets the kernel forwarded beyond the one each
    /// walk visit accounts through the engine (see `walk_kernel`).
    kernel_extra: BTreeMap<(Ipv4Addr, Ipv4Addr), u64>,
}

/// Starts the data-plane thread; it runs until `shared.stop()`.
pub fn spawn(
    mut p: Params,
    mut sock: PacketSocket,
    tun: Tun,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let control = shared
        .control
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let engine = Engine::new(
        control.snapshot.clone(),
        p.max_connections,
        Timeouts::default(),
    );
    let ring = sock
        .take_ring()
        .ok_or_else(|| std::io::Error::other("packet socket without a receive ring"))?;
    let now = Instant::now();
    let mut kernel = p.kernel.take();
    let vips = control.snapshot.vips.clone();
    if let Some(k) = &mut kernel {
        if let Err(e) = k.set_vips(&vips) {
            log::error!("eBPF VIPs: {e}");
        }
        if let Err(e) = k.set_tables(&engine.hash_tables()) {
            log::warn!("eBPF hash tables: {e}");
        }
    }
    let announcer = Announcer::new(now, vips, p.vmac);
    let plane = Plane {
        stats: DpStats {
            engine: super::engine_name(&kernel),
            ..DpStats::default()
        },
        kernel,
        kernel_extra: BTreeMap::new(),
        p,
        sock,
        ring: Some(ring),
        tun,
        shared,
        engine,
        active: false,
        seen_version: 0,
        announce_seen: control.announce,
        announcer,
        echo: TokenBucket::new(ECHO_RATE, ECHO_RATE),
    };
    std::thread::Builder::new()
        .name("duet-dataplane".into())
        .spawn(move || plane.run())
}

impl Plane {
    fn run(mut self) {
        let Some(mut ring) = self.ring.take() else {
            return;
        };
        // Frames to send (rewritten in their ring slots), and every slot
        // held until that send is done.
        let mut out: Vec<RxSlot> = Vec::with_capacity(BATCH);
        let mut held: Vec<RxSlot> = Vec::with_capacity(BATCH);
        let mut big = vec![0u8; SLOT_LEN].into_boxed_slice();
        let mut last_publish = Instant::now();
        let mut last_expire = Instant::now();
        let mut last_sync = Instant::now();
        let mut last_kernel = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            // Sleep only when the ring is empty; a busy ring is read without
            // any system call. Control changes are still seen at once: the
            // version is checked on every round, the eventfd only wakes.
            if !ring.ready() {
                // A round is at most 20 ms; an announcement due sooner is
                // sent on time.
                let wait = self.announcer.poll_timeout().map_or(20, |t| {
                    t.saturating_duration_since(Instant::now())
                        .as_millis()
                        .min(20) as i32
                });
                if let Err(e) = self.sock.wait(self.shared.wake.as_raw_fd(), wait) {
                    log::error!("data plane poll: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let now = Instant::now();
            self.apply_control(now);
            self.send_due_garps(now);
            for _ in 0..FRAMES_PER_ROUND {
                let Some(s) = ring.take() else {
                    break;
                };
                match s.kind {
                    SlotKind::InRing => {
                        held.push(s);
                        if let Some(len) = self.handle(now, ring.frame_mut(&s)) {
                            out.push(RxSlot { len, ..s });
                            if out.len() == BATCH {
                                self.flush(&mut ring, &mut out, &mut held);
                            }
                        }
                    }
                    SlotKind::Truncated => {
                        ring.release(&s);
                        self.drop(DpDrop::Frame(frame::DropReason::Truncated));
                    }
                    SlotKind::Tagged { queued } => {
                        ring.release(&s);
                        if queued {
                            // Its bytes are next in the queue: a later
                            // queued frame must not read them as its own.
                            let _ = self.sock.recv_queued(&mut big);
                        }
                        self.drop(DpDrop::Frame(frame::DropReason::Vlan));
                    }
                    SlotKind::Queued => {
                        ring.release(&s);
                        // Frames before it leave first: a flow keeps its order.
                        self.flush(&mut ring, &mut out, &mut held);
                        self.handle_queued(now, &mut big);
                    }
                }
            }
            self.flush(&mut ring, &mut out, &mut held);
            self.take_arp(now, &mut big);
            self.take_adoptions(now);
            if now.duration_since(last_sync) >= SYNC_PERIOD {
                self.exchange_sync(now);
                last_sync = now;
            }
            if now.duration_since(last_kernel) >= KERNEL_PERIOD {
                self.tend_kernel(now);
                last_kernel = now;
            }
            if now.duration_since(last_expire) >= Duration::from_millis(100) {
                self.engine.expire(now, 4096);
                self.pass_events();
                last_expire = now;
            }
            if now.duration_since(last_publish) >= Duration::from_millis(200) {
                match packet::ring_drops(&self.sock) {
                    Ok(0) => {}
                    Ok(n) => *self.stats.drops.entry(DpDrop::RxRingFull).or_default() += n,
                    Err(e) => log::debug!("packet statistics: {e}"),
                }
                self.publish();
                last_publish = now;
            }
        }
        if self.active {
            if let Err(e) = self.sock.leave(self.p.vmac) {
                log::warn!("leaving virtual MAC: {e}");
            }
        }
        if let Some(k) = &mut self.kernel {
            if let Err(e) = k.set_active(false) {
                log::warn!("stopping the eBPF engine: {e}");
            }
        }
        self.publish();
    }

    /// eBPF engine: renews the lease while directing, and walks part of
    /// the kernel's flows. Each flow the kernel forwarded since the last
    /// visit goes through the Rust engine once, as one packet carrying all
    /// its bytes: that refreshes its expiry by the same state machine and
    /// timeouts as a packet seen here, and tells whether it still goes
    /// where the kernel sends it (a backend that went down, a flow that
    /// expired or was rescheduled: taken back from the kernel).
    fn tend_kernel(&mut self, now: Instant) {
        let Some(k) = &mut self.kernel else {
            return;
        };
        if self.active {
            if let Err(e) = k.renew() {
                log::warn!("renewing the eBPF lease: {e}");
            }
        }
        // The size of each map: as its last full pass counted it, or as
        // the engine's table says if that is more (it holds every flow
        // the kernel does, bar kernel-scheduled ones not adopted yet, and
        // is up to date while the map grows).
        let (tcp, udp) = k.len();
        let t = self.engine.table_stats();
        let flows = [
            tcp.max(t.established.entries + t.embryonic.entries),
            udp.max(t.udp.entries),
        ];
        for (proto, flows) in [FlowKey::TCP, FlowKey::UDP].into_iter().zip(flows) {
            let mut tend = Tend {
                engine: &mut self.engine,
                extra: &mut self.kernel_extra,
                now,
                proto,
            };
            k.walk_with(proto, walk_budget(flows), &mut tend);
        }
    }

    /// eBPF engine: flows the kernel scheduled go into the engine's table
    /// now, as if decided here (counted, synced: a takeover keeps them, and
    /// unconfirmed ones feed the flood guard), and are confirmed there when
    /// the kernel confirms them, without waiting for the walk.
    fn take_adoptions(&mut self, now: Instant) {
        let Some(k) = &mut self.kernel else {
            return;
        };
        let engine = &mut self.engine;
        k.adoptions(|key, backend, confirmed| {
            let held = engine
                .lookup(now, &key)
                .is_some_and(|e| e.backend == backend);
            if held {
                if confirmed {
                    engine.confirm(now, &key);
                }
            } else if !engine.adopt(now, &key, backend, confirmed) {
                log::debug!("eBPF: cannot adopt {key:?} (backend {backend} gone)");
            }
        });
    }

    /// eBPF engine: a frame of a flow the kernel scheduled itself that the
    /// engine has not taken in yet (a close during its handshake, or a port
    /// reused since the engine's entry):
    /// the engine adopts the kernel's pick, so this frame goes there too.
    fn adopt_from_kernel(&mut self, now: Instant, key: &FlowKey) {
        let Some(k) = &self.kernel else {
            return;
        };
        if key.proto != FlowKey::TCP {
            return;
        }
        let Some(act) = k.lookup(key) else {
            return;
        };
        let backend = act.target.backend;
        if act.kernel_scheduled
            && self
                .engine
                .lookup(now, key)
                .is_none_or(|e| e.backend != backend)
            && !self.engine.adopt(now, key, backend, act.confirmed)
        {
            log::debug!("eBPF: cannot adopt {key:?} (backend {backend} gone)");
        }
    }

    /// eBPF engine: a flow user space just forwarded goes to the kernel. A
    /// new TCP flow (its SYN) goes to the embryonic LRU, which the program
    /// promotes on the handshake's ACK; a TCP flow confirmed here (in
    /// ESTABLISHED: the kernel had lost it) and a UDP flow seen before go
    /// to the confirmed maps. `before`: the flow's state before this frame.
    /// A FIN or RST seen here belongs to a flow the kernel does not hold
    /// confirmed, so it installs nothing; nor do SYNs within user space's
    /// budget.
    fn offer_kernel(
        &mut self,
        now: Instant,
        key: &FlowKey,
        flags: u8,
        before: Option<TcpState>,
        v: &Verdict,
    ) {
        let Some(k) = &self.kernel else {
            return;
        };
        let Verdict::Forward { addr, mac, local } = *v else {
            return;
        };
        let target = ebpf::Target {
            backend: addr,
            mac,
            local,
        };
        if key.proto == FlowKey::TCP && flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN {
            if let Err(e) = k.install_embryonic(key, target) {
                log::debug!("eBPF install: {e}");
            }
            return;
        }
        if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return;
        }
        let confirmed = match key.proto {
            FlowKey::UDP => before.is_some(),
            _ => {
                if before == Some(TcpState::SynRecv) && self.active {
                    self.stats.kernel_embryonic_lost += 1;
                }
                self.engine
                    .lookup(now, key)
                    .is_some_and(|e| e.state == TcpState::Established)
            }
        };
        if !confirmed {
            return;
        }
        match k.install(key, target) {
            Ok(true) => {}
            Ok(false) => self.stats.kernel_full += 1,
            Err(e) => log::debug!("eBPF install: {e}"),
        }
    }

    /// Sends the frames of `out` from their ring slots, then hands every
    /// held slot back to the kernel.
    fn flush(&mut self, ring: &mut RxRing, out: &mut Vec<RxSlot>, held: &mut Vec<RxSlot>) {
        if !out.is_empty() {
            let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
            for (f, s) in frames.iter_mut().zip(out.iter()) {
                *f = ring.frame(s);
            }
            self.send(&frames[..out.len()]);
            out.clear();
        }
        for s in held.drain(..) {
            ring.release(&s);
        }
    }

    /// eBPF engine: ARP comes on a socket of its own (sys::packet::Receive).
    fn take_arp(&mut self, now: Instant, buf: &mut [u8]) {
        for _ in 0..FRAMES_PER_ROUND {
            let n = match self.sock.recv_arp(buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    log::warn!("data plane ARP receive: {e}");
                    return;
                }
            };
            self.handle_read(now, buf, n);
        }
    }

    /// A frame too large for a ring slot (a GSO super-frame): read from
    /// the socket queue, handled and sent on its own.
    fn handle_queued(&mut self, now: Instant, big: &mut [u8]) {
        let n = match self.sock.recv_queued(big) {
            Ok(0) => {
                self.drop(DpDrop::QueueMissing);
                return;
            }
            Ok(n) => n,
            Err(e) => {
                log::warn!("data plane receive: {e}");
                self.drop(DpDrop::QueueMissing);
                return;
            }
        };
        self.handle_read(now, big, n);
    }

    /// Handles a frame of `n` bytes read into `buf` by recv(2) (`n` is the
    /// frame's own length, larger than `buf` when it was cut) and sends it
    /// on if it goes to a remote backend.
    fn handle_read(&mut self, now: Instant, buf: &mut [u8], n: usize) {
        if n > buf.len() {
            self.drop(DpDrop::Frame(frame::DropReason::Truncated));
        } else if let Some(len) = self.handle(now, &mut buf[..n]) {
            self.send(&[&buf[..len]]);
        }
    }

    fn send(&mut self, frames: &[&[u8]]) {
        match self.sock.send_batch(frames) {
            Ok(k) => self.stats.tx_packets += k as u64,
            Err(e) => log::warn!("data plane send: {e}"),
        }
    }

    fn exchange_sync(&mut self, now: Instant) {
        let mut ex = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        if self.active {
            let ex = &mut *ex;
            let r = self
                .engine
                .take_changes(&mut ex.conns, &mut ex.persists, SYNC_MAX);
            // A sync thread that stopped taking changes must not grow memory:
            // past a bound, the standby gets a fresh snapshot instead.
            let backlog = ex.conns.len() + ex.persists.len() > 8 * SYNC_MAX;
            if r.overflowed || ex.want_snapshot || backlog {
                ex.want_snapshot = false;
                ex.conns.clear();
                ex.persists.clear();
                ex.snapshot = Some((self.engine.export(now), self.engine.export_persist(now)));
            }
            // Flows a stepping-down predecessor created after we took over
            // (see the sync thread); ours win where both exist.
            for c in ex.installs.conns.drain(..) {
                if self.engine.lookup(now, &c.key).is_none() {
                    self.engine.install(now, c);
                }
            }
            ex.installs.persists.clear();
        } else {
            for c in ex.installs.conns.drain(..) {
                self.engine.install(now, c);
            }
            for p in ex.installs.persists.drain(..) {
                self.engine.install_persist(now, p);
            }
        }
    }

    fn pass_events(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            log::warn!("{}", ev.message);
            self.shared.report(Report::Flood(ev));
        }
    }

    fn publish(&mut self) {
        self.stats.connections = self.engine.len();
        self.stats.table = self.engine.table_stats();
        self.stats.backends = self.engine.counters().into_iter().collect();
        let mut out = self.stats.clone();
        if let Some(k) = &self.kernel {
            // What the kernel forwarded never passed through here.
            let s = k.stats();
            out.rx_packets += s.remote_packets + s.local_packets;
            out.rx_bytes += s.remote_bytes + s.local_bytes;
            out.tx_packets += s.remote_packets;
            out.local_packets += s.local_packets;
            out.kernel_packets = s.remote_packets + s.local_packets;
            out.kernel_scheduled = s.new_scheduled;
            out.kernel_adopt_lost = s.adopt_lost;
            if s.redirect_errors > 0 {
                out.drops.insert(DpDrop::Redirect, s.redirect_errors);
            }
            // What the kernel dropped or answered without user space, as
            // the userspace engine counts it.
            out.local_packets += s.echo_local;
            for (reason, n) in [
                (DpDrop::Frame(frame::DropReason::Fragment), s.fragments),
                (DpDrop::EchoRateLimit, s.echo_limited),
                (DpDrop::Frame(frame::DropReason::Vlan), s.vlan),
            ] {
                if n > 0 {
                    *out.drops.entry(reason).or_default() += n;
                }
            }
            let (tcp, udp) = k.len();
            out.kernel_flows = tcp + udp;
            for (addr, c) in &mut out.backends {
                c.packets += self.kernel_extra.get(addr).copied().unwrap_or(0);
            }
        }
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = out;
    }

    fn apply_control(&mut self, now: Instant) {
        let v = self.shared.version.load(Ordering::Acquire);
        if v == self.seen_version {
            return;
        }
        self.seen_version = v;
        let c = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let d = Delta::between(self.engine.snapshot(), self.active, self.announce_seen, &c);
        if d.snapshot {
            if d.vips {
                self.announcer.set_vips(now, c.snapshot.vips.clone());
                if let Some(k) = &mut self.kernel {
                    if let Err(e) = k.set_vips(&c.snapshot.vips) {
                        log::error!("eBPF VIPs: {e}");
                    }
                }
            }
            self.engine.set_snapshot(c.snapshot.clone());
            if let Some(k) = &mut self.kernel {
                if let Err(e) = k.set_tables(&self.engine.hash_tables()) {
                    log::warn!("eBPF hash tables: {e}");
                }
            }
        }
        if let Some(active) = d.active {
            let r = if active {
                self.sock.join(self.p.vmac)
            } else {
                self.sock.leave(self.p.vmac)
            };
            if let Err(e) = r {
                log::error!("virtual MAC membership (active={active}): {e}");
            }
            if let Some(k) = &mut self.kernel {
                if let Err(e) = k.set_active(active) {
                    log::error!("eBPF engine (active={active}): {e}");
                }
            }
            if active {
                self.engine
                    .hold_unknown_until(now + crate::forward::TAKEOVER_HOLD);
            }
            self.active = active;
        }
        self.announcer.set_holding(now, c.holding);
        if d.announce_again {
            self.announce_seen = c.announce;
            self.announcer.announce_again(now);
        }
    }

    fn send_due_garps(&mut self, now: Instant) {
        if self.announcer.poll_garp(now) {
            self.send_garp();
        }
    }

    /// One gratuitous ARP for each VIP.
    fn send_garp(&mut self) {
        for i in 0..self.announcer.vips().len() {
            let vip = self.announcer.vips()[i];
            let arp = frame::build_arp(1, self.p.vmac, vip, [0; 6], vip, [0xff; 6]);
            self.send_control_frame(&arp);
        }
    }

    fn send_control_frame(&mut self, f: &[u8]) {
        let mut buf = [0u8; VNET_HDR_LEN + 64];
        buf[VNET_HDR_LEN..VNET_HDR_LEN + f.len()].copy_from_slice(f);
        if let Err(e) = self.sock.send_arp(&[&buf[..VNET_HDR_LEN + f.len()]]) {
            log::warn!("sending ARP: {e}");
        } else {
            self.stats.tx_packets += 1;
        }
    }

    fn drop(&mut self, reason: DpDrop) {
        *self.stats.drops.entry(reason).or_default() += 1;
    }

    /// Handles one received slot (virtio header + frame). Returns the length
    /// to send back out on the LAN when the frame goes to a remote backend.
    fn handle(&mut self, now: Instant, slot: &mut [u8]) -> Option<usize> {
        if slot.len() < VNET_HDR_LEN {
            self.drop(DpDrop::Frame(frame::DropReason::Truncated));
            return None;
        }
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += (slot.len() - VNET_HDR_LEN) as u64;
        let (vnet, frame) = slot.split_at_mut(VNET_HDR_LEN);
        let classified = match frame::classify(frame, &self.engine.snapshot().vips) {
            Ok(c) => c,
            Err(r) => {
                self.drop(DpDrop::Frame(r));
                return None;
            }
        };
        match classified {
            Classified::NotOurs => None,
            Classified::EchoRequest | Classified::ToVip { .. } if !self.active => {
                self.drop(DpDrop::NotDirector);
                None
            }
            Classified::EchoRequest => {
                if !self.echo.allow(now) {
                    self.drop(DpDrop::EchoRateLimit);
                    return None;
                }
                // The VIP sits on lo: the local stack writes the reply.
                self.deliver_local(vnet, frame);
                None
            }
            Classified::Arp(a) => {
                self.handle_arp(now, &a);
                None
            }
            Classified::ToVip {
                key,
                tcp_flags,
                icmp_error,
            } => {
                let len = frame.len();
                let verdict = if icmp_error {
                    self.engine.decide_related(now, &key, len)
                } else {
                    if self.kernel.is_some() && tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                        self.adopt_from_kernel(now, &key);
                    }
                    let before = match self.kernel {
                        Some(_) => self.engine.lookup(now, &key).map(|e| e.state),
                        None => None,
                    };
                    let v = self.engine.decide(now, &key, tcp_flags, len);
                    if self.kernel.is_some() {
                        self.offer_kernel(now, &key, tcp_flags, before, &v);
                    }
                    v
                };
                match verdict {
                    Verdict::Forward {
                        mac, local: false, ..
                    } => {
                        frame::rewrite_macs(frame, mac, self.p.own_mac);
                        Some(VNET_HDR_LEN + len)
                    }
                    Verdict::Forward { local: true, .. } => {
                        self.deliver_local(vnet, frame);
                        None
                    }
                    Verdict::Drop(d) => {
                        self.drop(DpDrop::Forward(d));
                        None
                    }
                }
            }
        }
    }

    fn deliver_local(&mut self, vnet: &[u8], frame: &[u8]) {
        if frame.len() <= 14 {
            self.drop(DpDrop::Frame(frame::DropReason::Truncated));
            return;
        }
        // The TUN device takes IP packets: offsets in the header that count
        // from the MAC header move back by the 14 bytes removed.
        let mut h = [0u8; VNET_HDR_LEN];
        h.copy_from_slice(vnet);
        let field = |h: &[u8; VNET_HDR_LEN], at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let hdr_len = field(&h, 2).saturating_sub(14);
        h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        if h[0] & 1 != 0 {
            let csum_start = field(&h, 6).saturating_sub(14);
            h[6..8].copy_from_slice(&csum_start.to_le_bytes());
        }
        match self.tun.write(&h, &frame[14..]) {
            Ok(()) => self.stats.local_packets += 1,
            Err(e) => {
                self.drop(DpDrop::LocalDelivery);
                log::debug!("TUN write: {e}");
            }
        }
    }

    fn handle_arp(&mut self, now: Instant, a: &frame::ArpInfo) {
        match self.announcer.on_arp(now, a) {
            ArpAction::Ignore => {}
            ArpAction::SuccessorAnnounced => {
                log::info!("step-down: the successor announced the VIP");
                self.shared.report(Report::SuccessorAnnounced);
            }
            ArpAction::Conflict { vip, garp, warn } => {
                self.stats.vip_conflicts += 1;
                if garp {
                    self.send_garp();
                }
                if warn {
                    log::warn!(
                        "VIP {vip} announced by {}: re-announcing",
                        fmt_mac(&a.sender_mac)
                    );
                }
            }
            ArpAction::Reply { vip, to_mac, to_ip } => {
                let reply = frame::build_arp(2, self.p.vmac, vip, to_mac, to_ip, to_mac);
                self.send_control_frame(&reply);
            }
        }
    }
}

/// One walk of a kernel map, through the engine (see `Plane::tend_kernel`).
struct Tend<'a> {
    engine: &'a mut Engine,
    extra: &'a mut BTreeMap<(Ipv4Addr, Ipv4Addr), u64>,
    now: Instant,
    proto: u8,
}

impl ebpf::Visit for Tend<'_> {
    fn ahead(&mut self, key: &FlowKey, near: bool) {
        self.engine.prefetch(key, near);
    }

    fn visit(&mut self, key: FlowKey, act: ebpf::Activity) -> bool {
        let (engine, now) = (&mut *self.engine, self.now);
        let t = act.target;
        // Only a flow the engine holds there, or one the kernel
        // scheduled itself and the engine takes in now: `decide` on
        // a flow it lost would schedule it afresh.
        let held = engine
            .lookup(now, &key)
            .is_some_and(|e| e.backend == t.backend);
        let adopted = !held
            && act.kernel_scheduled
            && act.packets > 0
            && engine.adopt(now, &key, t.backend, true);
        if !held && !adopted {
            return false;
        }
        if act.packets == 0 {
            return true;
        }
        // The FIN or RST the kernel forwarded moves the flow to
        // FIN_WAIT or CLOSE here, as if this node had seen it.
        let flags = if self.proto == FlowKey::TCP {
            TCP_ACK | act.tcp_flags
        } else {
            0
        };
        let v = engine.decide(now, &key, flags, act.bytes as usize);
        let keep = matches!(v, Verdict::Forward { addr, .. } if addr == t.backend);
        *self.extra.entry((key.dst, t.backend)).or_default() += act.packets - 1;
        keep
    }
}

pub fn fmt_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn what_a_control_change_changes() {
        let one = Arc::new(Snapshot {
            vips: vec![Ipv4Addr::new(198, 18, 0, 100)],
            ..Snapshot::default()
        });
        let same_vips = Arc::new(Snapshot {
            generation: 2,
            ..(*one).clone()
        });
        let two_vips = Arc::new(Snapshot {
            vips: vec![
                Ipv4Addr::new(198, 18, 0, 100),
                Ipv4Addr::new(198, 18, 0, 101),
            ],
            ..(*one).clone()
        });
        let control = |snapshot: &Arc<Snapshot>, holding, announce| Control {
            holding,
            snapshot: snapshot.clone(),
            announce,
        };
        // (control, running active) → delta
        let cases = [
            (
                control(&one, Holding::No, 0),
                false,
                (false, false, None, false),
            ),
            (
                control(&one, Holding::Directing, 0),
                false,
                (false, false, Some(true), false),
            ),
            (
                control(&one, Holding::Directing, 0),
                true,
                (false, false, None, false),
            ),
            // Stepping down still forwards; only No stops it.
            (
                control(&one, Holding::SteppingDown, 0),
                true,
                (false, false, None, false),
            ),
            (
                control(&one, Holding::No, 0),
                true,
                (false, false, Some(false), false),
            ),
            (
                control(&same_vips, Holding::No, 0),
                false,
                (true, false, None, false),
            ),
            (
                control(&two_vips, Holding::No, 0),
                false,
                (true, true, None, false),
            ),
            (
                control(&one, Holding::Directing, 1),
                true,
                (false, false, None, true),
            ),
        ];
        for (i, (c, active, (snapshot, vips, act, again))) in cases.into_iter().enumerate() {
            let want = Delta {
                snapshot,
                vips,
                active: act,
                announce_again: again,
            };
            assert_eq!(Delta::between(&one, active, 0, &c), want, "case {i}");
        }
    }

    #[test]
    fn a_full_walk_pass_takes_under_six_seconds() {
        let pass = |flows: usize| flows.div_ceil(walk_budget(flows)) as u32 * KERNEL_PERIOD;
        // Small tables: walked whole every time, or in a few walks.
        assert_eq!(walk_budget(0), KERNEL_WALK_MIN);
        assert_eq!(pass(100), KERNEL_PERIOD);
        assert_eq!(pass(1000), 4 * KERNEL_PERIOD);
        // Larger ones: 55 walks a pass (~5.8 s), up to the cap.
        for flows in [20_000, 65_536, 200_000, 225_280] {
            assert_eq!(pass(flows), 55 * KERNEL_PERIOD, "{flows}");
        }
        assert_eq!(walk_budget(262_144), KERNEL_WALK);
        assert_eq!(walk_budget(usize::MAX), KERNEL_WALK);
    }
}
