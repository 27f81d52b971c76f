//! The BPF programs themselves, run by the kernel on crafted frames
//! (BPF_PROG_TEST_RUN), Katran-style: input frame, expected verdict and
//! expected output frame. They need root (CAP_BPF): without it they fail.
use super::*;
use crate::forward::maglev::{flow_hash, TABLE_SIZE};
use crate::forward::TableBackend;
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const VMAC: Mac = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
const OWN: Mac = [0x02, 0, 0, 0, 0, 0x01];
const PEER: Mac = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x09];
const OTHER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x33];

const ACK: u8 = 0x10;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

fn kernel() -> Kernel {
    kernel_with_budget(0)
}

/// `budget` SYNs a second for user space (0: all of them).
fn kernel_with_budget(budget: u32) -> Kernel {
    let k = Kernel::load(&Params {
        ifindex: 7,
        vmac: VMAC,
        own_mac: OWN,
        max_connections: 4,
        lease: Duration::from_secs(5),
        new_flow_budget: budget,
        echo_rate: 2,
    });
    let mut k = k.expect("loading the eBPF programs (these tests need root)");
    k.set_vips(&[VIP]).expect("setting the VIP");
    k
}

fn key(proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        proto,
        src: CLIENT,
        sport,
        dst: VIP,
        dport,
    }
}

fn tcp(dst_mac: Mac, sport: u16, flags: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, dst_mac)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .tcp(sport, 80, 1000, 65535);
    let b = if flags & SYN != 0 { b.syn() } else { b };
    let b = if flags & ACK != 0 { b.ack(1) } else { b };
    let b = if flags & FIN != 0 { b.fin() } else { b };
    let b = if flags & RST != 0 { b.rst() } else { b };
    let payload = b"GET / HTTP/1.0\r\n\r\n";
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("building a TCP frame");
    out
}

fn udp(dst_mac: Mac, sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, dst_mac)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .udp(sport, 53);
    let mut out = Vec::with_capacity(b.size(8));
    b.write(&mut out, b"question")
        .expect("building a UDP frame");
    out
}

/// An ICMP "fragmentation needed" from a router about the backend's reply
/// VIP:80 → CLIENT:sport.
fn icmp_error(sport: u16) -> Vec<u8> {
    let quoted = PacketBuilder::ipv4(VIP.octets(), CLIENT.octets(), 64).tcp(80, sport, 1, 100);
    let mut q = Vec::new();
    quoted
        .write(&mut q, &[])
        .expect("building the quoted segment");
    let b = PacketBuilder::ethernet2(CLIENT_MAC, VMAC)
        .ipv4([10, 0, 0, 254], VIP.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ));
    let mut out = Vec::new();
    b.write(&mut out, &q[..28])
        .expect("building the ICMP error");
    out
}

impl Kernel {
    /// Runs `prog` on `frame`: its return value and the frame after it.
    fn run(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let p = self.bpf.program(prog).expect("program in the object");
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let r = <&SchedClassifier>::try_from(p)
            .expect("tc program")
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(TC_PROG, frame)
    }

    /// Runs tc on `frame`: whether it leaves the frame to user space,
    /// passed on untouched, to the virtual MAC still (what user space's
    /// packet socket behind tc keeps).
    fn user(&self, frame: &[u8]) -> bool {
        let (verdict, out) = self.tc(frame);
        verdict == TC_ACT_OK && out == frame && frame[..6] == VMAC
    }
}

fn remote() -> Target {
    Target {
        backend: Ipv4Addr::new(10, 0, 0, 2),
        mac: PEER,
        local: false,
    }
}

fn local() -> Target {
    Target {
        backend: Ipv4Addr::new(10, 0, 0, 1),
        mac: OWN,
        local: true,
    }
}

fn with_macs(frame: &[u8], dst: Mac, src: Mac) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

#[test]
fn table_of_frames() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    assert!(k.install(&key(6, 1000, 80), remote()).unwrap());
    assert!(k.install(&key(6, 1001, 80), local()).unwrap());
    assert!(k.install(&key(17, 1000, 53), remote()).unwrap());

    struct Case {
        name: &'static str,
        frame: Vec<u8>,
        verdict: u32,
        /// Expected frame out of tc; `None`: unchanged (and to the
        /// virtual MAC: user space's).
        out: Option<Vec<u8>>,
    }
    let remote_in = tcp(VMAC, 1000, ACK);
    let local_in = tcp(VMAC, 1001, ACK);
    let udp_in = udp(VMAC, 1000);
    let fin_in = tcp(VMAC, 1000, FIN | ACK);
    let rst_in = tcp(VMAC, 1001, RST);
    let cases = vec![
        Case {
            name: "remote hit: MACs rewritten, redirected",
            out: Some(with_macs(&remote_in, PEER, OWN)),
            frame: remote_in,
            verdict: TC_ACT_REDIRECT,
        },
        Case {
            name: "local hit: destination is our own MAC, to the stack",
            out: Some(with_macs(&local_in, OWN, CLIENT_MAC)),
            frame: local_in,
            verdict: TC_ACT_OK,
        },
        Case {
            name: "UDP hit",
            out: Some(with_macs(&udp_in, PEER, OWN)),
            frame: udp_in,
            verdict: TC_ACT_REDIRECT,
        },
        Case {
            name: "miss: passed on to user space's socket",
            frame: tcp(VMAC, 2000, ACK),
            verdict: TC_ACT_OK,
            out: None,
        },
        Case {
            name: "FIN of a confirmed flow: forwarded, noted for the walk",
            out: Some(with_macs(&fin_in, PEER, OWN)),
            frame: fin_in,
            verdict: TC_ACT_REDIRECT,
        },
        Case {
            name: "RST of a confirmed flow",
            out: Some(with_macs(&rst_in, OWN, CLIENT_MAC)),
            frame: rst_in,
            verdict: TC_ACT_OK,
        },
        Case {
            name: "FIN of an unknown flow: user space",
            frame: tcp(VMAC, 2000, FIN | ACK),
            verdict: TC_ACT_OK,
            out: None,
        },
        Case {
            name: "SYN with FIN: user space",
            frame: tcp(VMAC, 1000, SYN | FIN),
            verdict: TC_ACT_OK,
            out: None,
        },
        Case {
            name: "SYN of a known flow: user space decides (port reuse)",
            frame: tcp(VMAC, 1000, SYN),
            verdict: TC_ACT_OK,
            out: None,
        },
        Case {
            name: "ICMP error about a known flow: user space (decide_related)",
            frame: icmp_error(1000),
            verdict: TC_ACT_OK,
            out: None,
        },
        Case {
            name: "not to the virtual MAC: untouched, not for the socket",
            frame: tcp(OTHER_MAC, 1000, ACK),
            verdict: TC_ACT_OK,
            out: None,
        },
    ];
    for c in cases {
        let (verdict, out) = k.tc(&c.frame);
        assert_eq!(verdict, c.verdict, "{}: verdict", c.name);
        assert_eq!(
            out,
            c.out.clone().unwrap_or_else(|| c.frame.clone()),
            "{}: frame",
            c.name
        );
    }
}

#[test]
fn syn_on_a_known_flow_takes_it_from_the_kernel() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    let a = key(6, 1000, 80);
    assert!(k.install(&a, remote()).unwrap());
    // User space decides it; the old entry goes before it reads the frame.
    assert!(k.user(&tcp(VMAC, 1000, SYN)));
    assert!(k.lookup(&a).is_none(), "port reuse: old entry left");
    // A SYN-ACK or FIN does not.
    assert!(k.install(&a, remote()).unwrap());
    assert!(k.user(&tcp(VMAC, 1000, SYN | ACK)));
    assert_eq!(k.tc(&tcp(VMAC, 1000, FIN | ACK)).0, TC_ACT_REDIRECT);
    assert!(k.lookup(&a).is_some());
}

/// A confirmed flow's close is forwarded in kernel; the walk hands its
/// FIN and RST to user space's state machine once each.
#[test]
fn the_walk_reports_each_close_once() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    let a = key(6, 1000, 80);
    assert!(k.install(&a, remote()).unwrap());
    let walk = |k: &mut Kernel| {
        let mut seen = Vec::new();
        k.walk(6, 100, |key, act| {
            seen.push((key, act.packets, act.tcp_flags));
            true
        });
        seen
    };
    assert_eq!(k.tc(&tcp(VMAC, 1000, ACK)).0, TC_ACT_REDIRECT);
    assert_eq!(walk(&mut k), vec![(a, 1, 0)]);
    assert_eq!(k.tc(&tcp(VMAC, 1000, FIN | ACK)).0, TC_ACT_REDIRECT);
    assert_eq!(walk(&mut k), vec![(a, 1, FIN)]);
    // The ACK of the server's FIN: no new flag.
    assert_eq!(k.tc(&tcp(VMAC, 1000, ACK)).0, TC_ACT_REDIRECT);
    assert_eq!(walk(&mut k), vec![(a, 1, 0)]);
    assert_eq!(k.tc(&tcp(VMAC, 1000, RST)).0, TC_ACT_REDIRECT);
    assert_eq!(walk(&mut k), vec![(a, 1, RST)]);
    // A handshake closed before its ACK: user space, nothing noted.
    let b = key(6, 3000, 80);
    k.install_embryonic(&b, remote()).unwrap();
    assert!(k.user(&tcp(VMAC, 3000, FIN | ACK)));
}

#[test]
fn arp_passes_untouched() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    let arp = crate::wire::frame::build_arp(1, CLIENT_MAC, CLIENT, [0; 6], VIP, [0xff; 6]);
    assert_eq!(k.tc(&arp), (TC_ACT_OK, arp.to_vec()));
    let to_vmac = crate::wire::frame::build_arp(1, CLIENT_MAC, CLIENT, VMAC, VIP, VMAC);
    assert!(k.user(&to_vmac));
}

#[test]
fn inactive_or_expired_lease_forwards_nothing() {
    let mut k = kernel();
    assert!(k.install(&key(6, 1000, 80), remote()).unwrap());
    let f = tcp(VMAC, 1000, ACK);
    // Never activated: user space's (which is not directing either; the
    // stack drops vMAC frames, PACKET_OTHERHOST, itself).
    assert!(k.user(&f));
    k.set_active(true).unwrap();
    assert_eq!(k.tc(&f).0, TC_ACT_REDIRECT);
    // A lease duet stopped renewing (it was killed; the filter stayed).
    k.control.lease_until = sys::monotonic_ns() - 1;
    k.write_control().unwrap();
    assert!(k.user(&f), "expired lease must not forward");
    k.renew().unwrap();
    assert_eq!(k.tc(&f).0, TC_ACT_REDIRECT);
    k.set_active(false).unwrap();
    assert_eq!(k.tc(&f), (TC_ACT_OK, f.clone()));
}

/// A walk in steps smaller than the map visits every flow once a round,
/// also when flows are taken back on the way.
#[test]
fn a_bounded_walk_resumes_and_covers_every_flow() {
    let mut k = kernel();
    let keys: Vec<FlowKey> = (0..4).map(|i| key(6, 2000 + i, 80)).collect();
    for a in &keys {
        assert!(k.install(a, remote()).unwrap());
    }
    let mut seen = Vec::new();
    let mut steps = 0;
    while steps < 20 {
        steps += 1;
        k.walk(6, 2, |key, _| {
            seen.push(key);
            key.sport != 2001
        });
        if k.cursor[0].is_none() {
            break;
        }
    }
    seen.sort_by_key(|s| s.sport);
    assert_eq!(seen, keys, "one round in {steps} steps");
    assert!(k.lookup(&keys[1]).is_none(), "taken back");
    assert_eq!(k.len().0, 4, "counted as visited");
    k.walk(6, 100, |_, _| true);
    assert_eq!(k.len().0, 3);
}

#[test]
fn counters_walk_and_removal() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    let a = key(6, 1000, 80);
    let b = key(6, 1001, 80);
    assert!(k.install(&a, remote()).unwrap());
    assert!(k.install(&b, local()).unwrap());
    let f = tcp(VMAC, 1000, ACK);
    for _ in 0..3 {
        assert_eq!(k.tc(&f).0, TC_ACT_REDIRECT);
    }
    let mut seen = Vec::new();
    k.walk(6, 100, |key, act| {
        seen.push((key, act.packets, act.bytes, act.idle.is_some()));
        key != b
    });
    seen.sort_by_key(|s| s.0.sport);
    assert_eq!(
        seen,
        vec![(a, 3, 3 * f.len() as u64, true), (b, 0, 0, false)]
    );
    // b was dropped by the walk; a reports only what is new.
    assert!(k.lookup(&b).is_none());
    assert_eq!(k.tc(&f).0, TC_ACT_REDIRECT);
    let mut again = Vec::new();
    k.walk(6, 100, |key, act| {
        again.push((key, act.packets));
        true
    });
    assert_eq!(again, vec![(a, 1)]);
    // The walk counts the flows it visits, for status.
    assert_eq!(k.len().0, 1, "the last complete walk saw a only");
    k.remove(&a);
    assert!(k.user(&f));
    assert_eq!(k.walk(6, 100, |_, _| true), 0);
    assert_eq!(k.len(), (0, 0));
    let s = k.stats();
    assert_eq!(s.remote_packets, 4);
    assert_eq!(s.remote_bytes, 4 * f.len() as u64);
}

#[test]
fn full_map_refuses_and_keeps_confirmed_flows() {
    let k = kernel();
    for port in 0..4 {
        assert!(k.install(&key(6, 1000 + port, 80), remote()).unwrap());
    }
    assert!(!k.install(&key(6, 2000, 80), remote()).unwrap(), "full");
    for port in 0..4 {
        assert!(
            k.lookup(&key(6, 1000 + port, 80)).is_some(),
            "never evicted"
        );
    }
    // Installing an installed flow again is not an error.
    assert!(k.install(&key(6, 1000, 80), remote()).unwrap());
}

/// Whether `key` sits in the confirmed map (not only the embryonic one).
fn confirmed(k: &Kernel, key: &FlowKey) -> Option<RawVal> {
    sys::lookup(fd(&k.confirmed), &RawKey::new(key)).unwrap()
}

#[test]
fn embryonic_flow_forwards_its_handshake_and_is_promoted_on_the_ack() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    let a = key(6, 1000, 80);
    k.install_embryonic(&a, remote()).unwrap();
    assert!(confirmed(&k, &a).is_none());
    // The SYN's retransmission goes where its first went, in kernel.
    let syn = tcp(VMAC, 1000, SYN);
    assert_eq!(
        k.tc(&syn).0,
        TC_ACT_REDIRECT,
        "a retransmitted SYN stays in kernel"
    );
    assert!(k.lookup(&a).is_some(), "the retransmission kept its flow");
    // After a backend change (a new epoch) it is decided afresh, and the
    // stale entry goes so that it cannot catch the handshake's ACK.
    k.set_tables(&[]).unwrap();
    assert!(k.user(&syn));
    assert!(k.lookup(&a).is_none(), "stale embryonic entry left");
    k.install_embryonic(&a, remote()).unwrap();
    // The handshake's ACK: forwarded in kernel, and the flow moves to the
    // confirmed map with its counters.
    let ack = tcp(VMAC, 1000, ACK);
    assert!(confirmed(&k, &a).is_none());
    let (verdict, out) = k.tc(&ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, with_macs(&ack, PEER, OWN));
    let v = confirmed(&k, &a).expect("promoted on the ACK");
    assert_eq!((v.packets, v.bytes, v.mac), (1, ack.len() as u64, PEER));
    assert!(
        sys::lookup::<RawKey, RawVal>(fd(&k.embryonic), &RawKey::new(&a))
            .unwrap()
            .is_none(),
        "left in the embryonic map"
    );
    // Data after it: a confirmed hit, counted on.
    assert_eq!(k.tc(&ack).0, TC_ACT_REDIRECT);
    assert_eq!(confirmed(&k, &a).unwrap().packets, 2);
    assert_eq!(k.stats().promoted, 1);
    // The walk of confirmed flows sees everything since the SYN.
    let mut seen = Vec::new();
    k.walk(6, 100, |key, act| {
        seen.push((key, act.packets));
        true
    });
    assert_eq!(seen, vec![(a, 2)]);
    // A local backend: delivered to this node's stack.
    let b = key(6, 1001, 80);
    k.install_embryonic(&b, local()).unwrap();
    let ack_b = tcp(VMAC, 1001, ACK);
    let (verdict, out) = k.tc(&ack_b);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(&out[..6], &OWN);
    assert!(confirmed(&k, &b).is_some());
}

#[test]
fn embryonic_flow_stays_evictable_when_confirmed_is_full_and_obeys_the_lease() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    for port in 0..4 {
        assert!(k.install(&key(6, 2000 + port, 80), remote()).unwrap());
    }
    let a = key(6, 1000, 80);
    k.install_embryonic(&a, remote()).unwrap();
    let ack = tcp(VMAC, 1000, ACK);
    // No room to promote: forwarded from the embryonic map all the same.
    assert_eq!(k.tc(&ack).0, TC_ACT_REDIRECT);
    assert_eq!(k.tc(&ack).0, TC_ACT_REDIRECT);
    assert!(confirmed(&k, &a).is_none());
    assert_eq!(k.lookup(&a).map(|x| x.packets), Some(2));
    assert_eq!(k.stats().promoted, 0);
    // Fail-safe: an expired lease forwards no embryonic flow either.
    k.control.lease_until = sys::monotonic_ns() - 1;
    k.write_control().unwrap();
    assert!(k.user(&ack));
    // Removal takes it from the embryonic map too.
    k.renew().unwrap();
    k.remove(&a);
    assert!(k.lookup(&a).is_none());
    assert!(k.user(&ack));
}

#[test]
fn embryonic_map_is_a_bounded_lru() {
    let mut k = kernel();
    // The userspace table's embryonic bound for 4 confirmed flows is 4; a
    // flood of SYNs evicts old entries rather than failing.
    for port in 0..1000 {
        k.install_embryonic(&key(6, 10_000 + port, 80), remote())
            .unwrap();
    }
    let (mut keys, mut vals) = (vec![RawKey::default(); 64], vec![RawVal::default(); 64]);
    let (n, rest) = sys::lookup_batch(fd(&k.embryonic), None, &mut keys, &mut vals).unwrap();
    assert_eq!(rest, None, "one batch holds them all");
    assert!((1..=4).contains(&n), "{n} embryonic entries");
    assert!(k.lookup(&key(6, 10_999, 80)).is_some(), "newest kept");
    assert_eq!(k.walk(6, 100, |_, _| true), 0, "confirmed map untouched");
}

fn backend_of(t: Target) -> TableBackend {
    TableBackend {
        backend: t.backend,
        mac: t.mac,
        local: t.local,
    }
}

/// A table for port 80 whose slot `s` names backend `s % n`, so a test
/// knows the pick from the flow hash alone.
fn table(backends: &[TableBackend], src_mask: Ipv4Addr, with_port: bool) -> HashTable {
    HashTable {
        vip: VIP,
        proto: FlowKey::TCP,
        port: 80,
        src_mask,
        with_port,
        backends: backends.to_vec(),
        slots: (0..TABLE_SIZE)
            .map(|s| (s % backends.len()) as u16)
            .collect(),
        deal: Vec::new(),
        exact: false,
    }
}

/// A flow the kernel scheduled is announced to user space when it is
/// scheduled (within user space's budget of new flows) and when its
/// handshake's ACK (a UDP flow's second datagram) confirms it; one user
/// space installed is not.
#[test]
fn kernel_scheduled_flows_are_announced_for_adoption() {
    // One a second with a 100 ms burst: the first new flow only.
    let mut k = kernel_with_budget(1);
    k.set_active(true).unwrap();
    let backends = [backend_of(remote())];
    let mut t = table(&backends, Ipv4Addr::BROADCAST, true);
    t.deal = vec![0];
    t.exact = true;
    let mut u = t.clone();
    u.proto = FlowKey::UDP;
    u.port = 53;
    k.set_tables(&[t, u]).unwrap();
    let notes = |k: &mut Kernel| {
        let mut v = Vec::new();
        k.adoptions(|key, backend, confirmed| v.push((key.sport, backend, confirmed)));
        v
    };
    let b = backends[0].backend;
    for sport in [7000, 7001] {
        assert_eq!(k.tc(&tcp(VMAC, sport, SYN)).0, TC_ACT_REDIRECT);
    }
    assert_eq!(notes(&mut k), vec![(7000, b, false)], "the budget's one");
    for sport in [7000, 7001] {
        let ack = tcp(VMAC, sport, ACK);
        k.tc(&ack);
        k.tc(&ack);
    }
    assert_eq!(notes(&mut k), vec![(7000, b, true), (7001, b, true)]);
    let d = udp(VMAC, 7002);
    for _ in 0..3 {
        k.tc(&d);
    }
    assert_eq!(notes(&mut k), vec![(7002, b, true)], "over the budget");
    // Installed by user space on its SYN: it knows it already.
    let a = key(6, 7003, 80);
    k.install_embryonic(&a, remote()).unwrap();
    k.tc(&tcp(VMAC, 7003, ACK));
    assert!(k.lookup(&a).unwrap().confirmed);
    assert_eq!(notes(&mut k), vec![]);
    assert_eq!(k.stats().adopt_lost, 0);
}

/// rr and wrr: user space deals one cycle of its picks, and the kernel
/// hands them out in turn to every new flow at any rate (no budget spent,
/// none to user space); an exact hash table (sh, mh) likewise.
#[test]
fn exact_tables_schedule_every_new_flow_in_kernel() {
    // Budget 0: everything else would go to user space.
    let mut k = kernel_with_budget(0);
    k.set_active(true).unwrap();
    let backends = [backend_of(remote()), backend_of(local())];
    let mut t = table(&backends, Ipv4Addr::BROADCAST, true);
    t.deal = vec![0, 1, 1];
    t.exact = true;
    let mut u = t.clone();
    u.proto = FlowKey::UDP;
    u.port = 53;
    k.set_tables(&[t.clone(), u]).unwrap();
    let mut got = Vec::new();
    for sport in 5000..5006 {
        let syn = tcp(VMAC, sport, SYN);
        assert!(!k.user(&syn), "port {sport}: to user space");
        let act = k.lookup(&key(6, sport, 80)).expect("scheduled");
        assert!(act.kernel_scheduled, "port {sport}");
        got.push(act.target.backend);
        // A retransmission goes where the first went, taking no pick.
        assert!(!k.user(&syn));
        k.remove(&key(6, sport, 80));
    }
    let b = |i: usize| backends[i].backend;
    assert_eq!(got, vec![b(0), b(1), b(1), b(0), b(1), b(1)]);
    // UDP flows are dealt from their own service's cycle.
    let f = udp(VMAC, 6000);
    assert!(!k.user(&f));
    assert_eq!(k.lookup(&key(17, 6000, 53)).unwrap().target.backend, b(0));
    // An exact table without a deal hashes, as sh and mh do.
    t.deal.clear();
    k.set_tables(&[t]).unwrap();
    let want = (flow_hash(CLIENT, Some(5100)) as usize % TABLE_SIZE) % 2;
    assert!(!k.user(&tcp(VMAC, 5100, SYN)));
    assert_eq!(k.lookup(&key(6, 5100, 80)).unwrap().target.backend, b(want));
    let s = k.stats();
    assert_eq!((s.new_scheduled, s.new_unscheduled), (8, 0));
    // Not exact: user space decides within its (unlimited) budget.
    k.set_tables(&[table(&backends, Ipv4Addr::BROADCAST, true)])
        .unwrap();
    assert!(k.user(&tcp(VMAC, 5200, SYN)));
}

#[test]
fn syns_over_the_budget_are_scheduled_in_kernel_by_the_services_table() {
    let mut k = kernel_with_budget(1);
    k.set_active(true).unwrap();
    let backends = [backend_of(remote()), backend_of(local())];
    k.set_tables(&[table(&backends, Ipv4Addr::BROADCAST, true)])
        .unwrap();
    // Within the budget (one a second, with a 100 ms burst): user space.
    assert!(k.user(&tcp(VMAC, 3000, SYN)));
    assert!(k.lookup(&key(6, 3000, 80)).is_none());
    // Over it: each SYN is scheduled by the table's hash, the same hash
    // the engine's mh uses, and forwarded in kernel.
    let mut picked = [0; 2];
    for sport in 3001..3041 {
        let syn = tcp(VMAC, sport, SYN);
        let (verdict, out) = k.tc(&syn);
        let want = (flow_hash(CLIENT, Some(sport)) as usize % TABLE_SIZE) % 2;
        picked[want] += 1;
        let act = k.lookup(&key(6, sport, 80)).expect("scheduled");
        assert!(act.kernel_scheduled && !act.confirmed, "port {sport}");
        assert_eq!(act.target.backend, backends[want].backend);
        if backends[want].local {
            assert_eq!(verdict, TC_ACT_OK, "port {sport}");
            assert_eq!(&out[..6], &OWN);
        } else {
            assert_eq!(verdict, TC_ACT_REDIRECT, "port {sport}");
            assert_eq!(out, with_macs(&syn, PEER, OWN));
        }
        // Its handshake's ACK promotes it like any other flow; user space
        // finds it in the walk and adopts it.
        assert!(!k.user(&tcp(VMAC, sport, ACK)));
        let act = k.lookup(&key(6, sport, 80)).expect("promoted");
        assert!(act.kernel_scheduled && act.confirmed, "port {sport}");
        // The test's confirmed map holds four flows.
        k.remove(&key(6, sport, 80));
    }
    assert!(
        picked[0] > 0 && picked[1] > 0,
        "one backend only: {picked:?}"
    );
    let s = k.stats();
    assert_eq!((s.new_scheduled, s.new_unscheduled), (40, 0));
}

#[test]
fn kernel_schedule_hashes_the_masked_client_for_persistence() {
    let mut k = kernel_with_budget(1);
    k.set_active(true).unwrap();
    let backends = [backend_of(remote()), backend_of(local())];
    let mask = Ipv4Addr::new(255, 255, 255, 0);
    k.set_tables(&[table(&backends, mask, false)]).unwrap();
    k.tc(&tcp(VMAC, 3000, SYN));
    let want = (flow_hash(Ipv4Addr::new(10, 0, 0, 0), None) as usize % TABLE_SIZE) % 2;
    for sport in 3001..3011 {
        assert!(!k.user(&tcp(VMAC, sport, SYN)));
        let act = k.lookup(&key(6, sport, 80)).expect("scheduled");
        assert_eq!(act.target.backend, backends[want].backend, "port {sport}");
    }
}

#[test]
fn syns_over_the_budget_without_a_table_go_to_user_space_counted() {
    let mut k = kernel_with_budget(1);
    k.set_active(true).unwrap();
    let backends = [backend_of(remote())];
    let mut t = table(&backends, Ipv4Addr::BROADCAST, true);
    t.port = 443;
    k.set_tables(&[t]).unwrap();
    k.tc(&tcp(VMAC, 3000, SYN));
    for sport in 3001..3006 {
        assert!(k.user(&tcp(VMAC, sport, SYN)), "no table for port 80");
        assert!(k.lookup(&key(6, sport, 80)).is_none());
    }
    let s = k.stats();
    assert_eq!((s.new_scheduled, s.new_unscheduled), (0, 5));
    // A table removed is gone from the kernel too.
    k.set_tables(&[table(&backends, Ipv4Addr::BROADCAST, true)])
        .unwrap();
    assert!(!k.user(&tcp(VMAC, 3010, SYN)));
    k.set_tables(&[]).unwrap();
    assert!(k.user(&tcp(VMAC, 3011, SYN)));
}

#[test]
fn udp_flows_over_the_budget_are_scheduled_in_kernel_and_confirmed_by_a_second_datagram() {
    let mut k = kernel_with_budget(1);
    k.set_active(true).unwrap();
    let backends = [backend_of(remote())];
    let mut t = table(&backends, Ipv4Addr::BROADCAST, true);
    t.proto = FlowKey::UDP;
    t.port = 53;
    k.set_tables(std::slice::from_ref(&t)).unwrap();
    // Within the budget: user space.
    assert!(k.user(&udp(VMAC, 4000)));
    // Over it: scheduled, forwarded, pending until a second datagram.
    let f = udp(VMAC, 4001);
    let a = key(17, 4001, 53);
    assert_eq!(k.tc(&f), (TC_ACT_REDIRECT, with_macs(&f, PEER, OWN)));
    let act = k.lookup(&a).expect("scheduled");
    assert!(
        act.kernel_scheduled && !act.confirmed,
        "one datagram confirms nothing"
    );
    assert_eq!(k.tc(&f).0, TC_ACT_REDIRECT);
    let act = k.lookup(&a).expect("confirmed");
    assert!(act.confirmed && act.kernel_scheduled);
    assert_eq!(act.packets, 2);
    // The walk of confirmed UDP flows sees it, for user space to adopt.
    let mut seen = Vec::new();
    k.walk(17, 100, |key, act| {
        seen.push((key, act.kernel_scheduled));
        true
    });
    assert_eq!(seen, vec![(a, true)]);
    // A pending flow from before a backend change is decided afresh: over
    // the budget by the new table, else by user space (the stale entry
    // goes).
    let b = key(17, 4002, 53);
    let g = udp(VMAC, 4002);
    assert_eq!(k.tc(&g).0, TC_ACT_REDIRECT);
    k.set_tables(&[]).unwrap();
    assert!(k.user(&g), "no table now: user space");
    assert!(k.lookup(&b).is_none(), "stale pending entry left");
    assert_eq!(k.stats().new_unscheduled, 1);
    // Removal takes a pending flow too.
    k.set_tables(&[t]).unwrap();
    assert!(!k.user(&g));
    k.remove(&b);
    assert!(k.lookup(&b).is_none());
}

fn ping(dst_mac: Mac) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, dst_mac)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .icmpv4_echo_request(7, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping")
        .expect("building an echo request");
    out
}

#[test]
fn pings_of_the_vip_go_to_the_local_stack_at_their_rate() {
    let mut k = kernel();
    let p = ping(VMAC);
    // Not directing: untouched, and user space decides (not_director).
    assert!(k.user(&p));
    k.set_active(true).unwrap();
    // Two a second with a second's burst: the first ones are handed to the
    // stack (destination our own MAC), the rest dropped and counted; none
    // is copied to user space.
    let mut verdicts = Vec::new();
    for _ in 0..6 {
        let (verdict, out) = k.tc(&p);
        if verdict != TC_ACT_SHOT {
            assert_eq!(out, with_macs(&p, OWN, CLIENT_MAC));
        }
        verdicts.push(verdict);
    }
    assert_eq!(&verdicts[..2], &[TC_ACT_OK, TC_ACT_OK], "{verdicts:?}");
    assert_eq!(verdicts[5], TC_ACT_SHOT, "{verdicts:?}");
    let s = k.stats();
    assert_eq!(s.echo_local + s.echo_limited, 6);
    assert!(s.echo_limited >= 2, "{s:?}");
    // An echo reply or an ICMP error is not a ping: user space has those.
    assert!(k.user(&icmp_error(1000)));
}

#[test]
fn non_first_fragments_to_the_vip_are_dropped_in_kernel() {
    let mut k = kernel();
    k.set_active(true).unwrap();
    let mut f = udp(VMAC, 1000);
    // Fragment offset 16 (x 8 bytes), no flags.
    f[14 + 6..14 + 8].copy_from_slice(&[0x00, 0x10]);
    assert_eq!(k.tc(&f).0, TC_ACT_SHOT);
    assert_eq!(k.stats().fragments, 1);
    // A first fragment is the UDP flow's own datagram: user space.
    let mut first = udp(VMAC, 1000);
    first[14 + 6] = 0x20; // more fragments, offset 0
    assert!(k.user(&first));
}
