//! Engine tests: simulated time, hand-built snapshots, flow keys in.

use super::*;
use crate::wire::frame::{TCP_FIN, TCP_PSH};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const SYN: u8 = TCP_SYN;
const ACK: u8 = TCP_ACK;
const FIN: u8 = TCP_FIN | TCP_ACK;
const RST: u8 = TCP_RST;

fn be(last: u8, weight: u32) -> BackendSnap {
    BackendSnap {
        name: format!("b{last}"),
        addr: Ipv4Addr::new(10, 0, 0, last),
        mac: [2, 0, 0, 0, 0, last],
        weight,
        up: true,
        local: last == 1,
        fallback: false,
    }
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn svc(proto: u8, port: u16, scheduler: Scheduler, backends: Vec<BackendSnap>) -> ServiceSnap {
    ServiceSnap {
        vip: VIP,
        proto,
        port,
        scheduler,
        persistence: None,
        persist_mask: Ipv4Addr::BROADCAST,
        backends,
    }
}

fn snap(generation: u64, services: Vec<ServiceSnap>) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        generation,
        vips: vec![VIP],
        services,
        proxy: Vec::new(),
    })
}

fn engine(services: Vec<ServiceSnap>, capacity: usize) -> Engine {
    Engine::new(snap(1, services), capacity, Timeouts::default())
}

fn tcp_key(client: u32, sport: u16) -> FlowKey {
    FlowKey {
        proto: FlowKey::TCP,
        src: Ipv4Addr::from(0xc633_0000 + client),
        sport,
        dst: VIP,
        dport: 80,
    }
}

fn udp_key(client: u32, sport: u16) -> FlowKey {
    FlowKey {
        proto: FlowKey::UDP,
        dport: 53,
        ..tcp_key(client, sport)
    }
}

fn backend_of(v: Verdict) -> Ipv4Addr {
    match v {
        Verdict::Forward { addr, .. } => addr,
        Verdict::Drop(d) => panic!("dropped: {d:?}"),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Distribution of `flows` new flows (distinct clients and ports) over
/// backends, keyed by last address octet.
fn distribute(e: &mut Engine, now: Instant, flows: u32) -> HashMap<u8, u32> {
    let mut counts = HashMap::new();
    for i in 0..flows {
        let v = e.decide(now, &tcp_key(i * 7, 1024 + (i % 60_000) as u16), SYN, 60);
        *counts.entry(backend_of(v).octets()[3]).or_insert(0) += 1;
    }
    counts
}

#[test]
fn scheduler_distribution_follows_weights() {
    // Backends 1 and 2 with weights 1:2, backend 3 drained (weight 0).
    let backends = || vec![be(1, 1), be(2, 2), be(3, 0)];
    let cases: &[(Scheduler, f64)] = &[
        (Scheduler::Rr, 1.0),
        (Scheduler::Wrr, 2.0),
        (Scheduler::Lc, 1.0),
        (Scheduler::Wlc, 2.0),
        (Scheduler::Sh, 2.0),
        (Scheduler::Mh, 2.0),
    ];
    let now = Instant::now();
    for &(kind, want_ratio) in cases {
        let mut e = engine(vec![svc(6, 80, kind, backends())], 40_000);
        let c = distribute(&mut e, now, 10_000);
        assert_eq!(c.get(&3), None, "{kind}: weight 0 got flows");
        let ratio = f64::from(c[&2]) / f64::from(c[&1]);
        assert!(
            (ratio - want_ratio).abs() / want_ratio < 0.05,
            "{kind}: ratio {ratio} want {want_ratio} ({c:?})"
        );
        assert_eq!(e.len(), 10_000);
    }
}

#[test]
fn scheduler_names_parse_and_serialize() {
    for s in ["rr", "wrr", "lc", "wlc", "sh", "mh"] {
        let k: Scheduler = s.parse().unwrap();
        assert_eq!(k.as_str(), s);
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{s}\""));
        assert_eq!(
            serde_json::from_str::<Scheduler>(&format!("\"{s}\"")).unwrap(),
            k
        );
    }
    assert!("maglev".parse::<Scheduler>().is_err());
}

#[test]
fn lc_balances_live_connections() {
    let mut e = engine(
        vec![svc(6, 80, Scheduler::Lc, vec![be(1, 1), be(2, 1)])],
        100,
    );
    let now = Instant::now();
    // Two established flows on each backend; then backend 1's both close.
    let keys: Vec<FlowKey> = (0..4).map(|i| tcp_key(i, 1000)).collect();
    let mut on = HashMap::new();
    for k in &keys {
        on.insert(*k, backend_of(e.decide(now, k, SYN, 60)));
        e.decide(now, k, ACK, 60);
    }
    for k in keys.iter().filter(|k| on[*k] == addr(1)) {
        e.decide(now, k, RST, 60);
    }
    // Closed entries count as inactive (1/256 of an active one): backend 1
    // gets the next two flows.
    for i in 10..12 {
        assert_eq!(backend_of(e.decide(now, &tcp_key(i, 1), SYN, 60)), addr(1));
    }
}

#[test]
fn table_hit_keeps_backend_and_counts() {
    let mut e = engine(
        vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)])],
        100,
    );
    let now = Instant::now();
    let k = tcp_key(1, 40000);
    let first = backend_of(e.decide(now, &k, SYN, 60));
    for i in 1..20u64 {
        let v = e.decide(now + secs(i), &k, ACK | TCP_PSH, 1000);
        assert_eq!(backend_of(v), first);
    }
    assert_eq!(e.len(), 1);
    let c = e.counters();
    let (_, mine) = c.iter().find(|((_, a), _)| *a == first).unwrap();
    assert_eq!(
        *mine,
        BackendCounters {
            packets: 20,
            bytes: 60 + 19 * 1000,
            active: 1,
            inactive: 0,
            total: 1
        }
    );
    assert_eq!(e.lookup(now, &k).unwrap().state, TcpState::Established);
}

#[test]
fn verdict_carries_mac_and_local() {
    let mut e = engine(vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1)])], 10);
    let v = e.decide(Instant::now(), &tcp_key(1, 1), SYN, 60);
    assert_eq!(
        v,
        Verdict::Forward {
            addr: addr(1),
            mac: [2, 0, 0, 0, 0, 1],
            local: true
        }
    );
}

#[test]
fn no_service_and_no_backend() {
    let mut e = engine(vec![svc(6, 80, Scheduler::Wlc, vec![be(1, 0)])], 10);
    let now = Instant::now();
    let other_port = FlowKey {
        dport: 443,
        ..tcp_key(1, 1)
    };
    assert_eq!(
        e.decide(now, &other_port, SYN, 60),
        Verdict::Drop(ForwardDrop::NoService)
    );
    assert_eq!(
        e.decide(now, &udp_key(1, 1), 0, 60),
        Verdict::Drop(ForwardDrop::NoService)
    );
    assert_eq!(
        e.decide(now, &tcp_key(1, 1), SYN, 60),
        Verdict::Drop(ForwardDrop::NoBackend)
    );
    assert_eq!(e.drops().no_service, 2);
    assert_eq!(e.drops().get(ForwardDrop::NoBackend), 1);
    assert_eq!(e.len(), 0);
}

#[test]
fn expiry_per_state() {
    let t = Timeouts::default();
    // (description, packets sent at t=0, timeout expected)
    let cases: &[(&str, FlowKey, &[u8], Duration)] = &[
        ("syn only", tcp_key(1, 1), &[SYN], t.syn),
        ("established", tcp_key(2, 1), &[SYN, ACK], t.tcp),
        ("client fin", tcp_key(3, 1), &[SYN, ACK, FIN], t.tcp_fin),
        ("reset", tcp_key(4, 1), &[SYN, ACK, RST], t.close),
        ("mid-flow unknown", tcp_key(5, 1), &[ACK], t.tcp),
        ("udp", udp_key(6, 1), &[0], t.udp),
    ];
    let services = vec![
        svc(6, 80, Scheduler::Rr, vec![be(1, 1)]),
        svc(17, 53, Scheduler::Rr, vec![be(1, 1)]),
    ];
    for (desc, key, flags, timeout) in cases {
        let mut e = engine(services.clone(), 16);
        let t0 = Instant::now();
        for f in *flags {
            backend_of(e.decide(t0, key, *f, 60));
        }
        let before = t0 + *timeout - Duration::from_millis(1);
        assert!(e.lookup(before, key).is_some(), "{desc}: expired early");
        assert_eq!(e.expire(before, 100), 0, "{desc}");
        assert_eq!(e.len(), 1, "{desc}");
        let after = t0 + *timeout;
        assert!(e.lookup(after, key).is_none(), "{desc}: still live");
        assert_eq!(e.expire(after, 100), 1, "{desc}");
        assert_eq!(e.len(), 0, "{desc}");
        let c = e.counters();
        assert_eq!(
            c[0].1.active + c[0].1.inactive,
            0,
            "{desc}: counts released"
        );
    }
}

#[test]
fn traffic_refreshes_the_deadline() {
    let mut e = engine(vec![svc(17, 53, Scheduler::Rr, vec![be(1, 1)])], 16);
    let t0 = Instant::now();
    let k = udp_key(1, 1);
    for i in 0..10 {
        backend_of(e.decide(t0 + secs(200 * i), &k, 0, 60));
    }
    assert_eq!(e.expire(t0 + secs(1800 + 299), 10), 0);
    assert_eq!(e.expire(t0 + secs(1800 + 300), 10), 1);
}

#[test]
fn expire_work_is_bounded_by_budget() {
    let mut e = engine(vec![svc(17, 53, Scheduler::Rr, vec![be(1, 1)])], 1000);
    let t0 = Instant::now();
    for i in 0..1000 {
        backend_of(e.decide(t0, &udp_key(i, 1), 0, 60));
    }
    let later = t0 + secs(301);
    assert_eq!(e.expire(later, 100), 100);
    assert_eq!(e.len(), 900);
    let mut calls = 0;
    while !e.is_empty() {
        e.expire(later, 100);
        calls += 1;
    }
    assert_eq!(calls, 9);
}

#[test]
fn fallback_only_when_all_down() {
    let mut fb = be(9, 1);
    fb.fallback = true;
    let with = |b1: BackendSnap, b2: BackendSnap| {
        vec![svc(6, 80, Scheduler::Rr, vec![b1, b2, fb.clone()])]
    };
    let mut e = engine(with(be(1, 1), be(2, 1)), 1000);
    let now = Instant::now();
    let c = distribute(&mut e, now, 100);
    assert_eq!(c.get(&9), None);
    // One down, one drained: still no fallback? Drained has weight 0, down
    // is not up: nothing can take new flows, so the fallback does.
    let mut down = be(1, 1);
    down.up = false;
    e.set_snapshot(snap(2, with(down.clone(), be(2, 0))));
    assert_eq!(
        backend_of(e.decide(now, &tcp_key(5000, 1), SYN, 60)),
        addr(9)
    );
    // Backend 2 back with weight: fallback unused again for new flows.
    e.set_snapshot(snap(3, with(down, be(2, 1))));
    assert_eq!(
        backend_of(e.decide(now, &tcp_key(5001, 1), SYN, 60)),
        addr(2)
    );
    assert_eq!(
        backend_of(e.decide(now, &tcp_key(5002, 1), SYN, 60)),
        addr(2)
    );
}

#[test]
fn snapshot_keeps_drained_flows_and_cuts_removed_ones() {
    let mut e = engine(
        vec![svc(
            6,
            80,
            Scheduler::Rr,
            vec![be(1, 1), be(2, 1), be(3, 1)],
        )],
        100,
    );
    let now = Instant::now();
    let mut on: HashMap<u8, FlowKey> = HashMap::new();
    for i in 0..3 {
        let k = tcp_key(i, 1);
        let b = backend_of(e.decide(now, &k, SYN, 60));
        e.decide(now, &k, ACK, 60);
        on.insert(b.octets()[3], k);
    }
    assert_eq!(on.len(), 3);
    // 1 drained (weight 0), 2 removed (down, non-quiescent), 3 gone entirely.
    let mut removed = be(2, 1);
    removed.up = false;
    e.set_snapshot(snap(
        2,
        vec![svc(6, 80, Scheduler::Rr, vec![be(1, 0), removed, be(4, 1)])],
    ));
    assert_eq!(backend_of(e.decide(now, &on[&1], ACK, 60)), addr(1));
    assert_eq!(
        e.decide(now, &on[&2], ACK, 60),
        Verdict::Drop(ForwardDrop::BackendDown)
    );
    assert_eq!(
        e.decide(now, &on[&3], ACK, 60),
        Verdict::Drop(ForwardDrop::BackendDown)
    );
    assert_eq!(e.drops().backend_down, 2);
    // Their retransmissions are scheduled anew, onto the only eligible backend.
    assert_eq!(backend_of(e.decide(now, &on[&2], ACK, 60)), addr(4));
    assert_eq!(backend_of(e.decide(now, &on[&3], ACK, 60)), addr(4));
    // New flows never go to the drained backend.
    let c = distribute(&mut e, now, 50);
    assert_eq!(c.keys().collect::<Vec<_>>(), vec![&4]);
    // The gone backend is forgotten once it has no entries left.
    assert!(e.counters().iter().all(|((_, a), _)| *a != addr(3)));
    let one = e
        .counters()
        .into_iter()
        .find(|((_, a), _)| *a == addr(1))
        .unwrap()
        .1;
    assert_eq!((one.active, one.total), (1, 1));
}

#[test]
fn counters_survive_unrelated_snapshot_changes() {
    let mut e = engine(vec![svc(6, 80, Scheduler::Wlc, vec![be(1, 1)])], 100);
    let now = Instant::now();
    backend_of(e.decide(now, &tcp_key(1, 1), SYN, 100));
    e.set_snapshot(snap(
        2,
        vec![svc(6, 80, Scheduler::Wlc, vec![be(1, 5), be(2, 1)])],
    ));
    let c = e
        .counters()
        .into_iter()
        .find(|((_, a), _)| *a == addr(1))
        .unwrap()
        .1;
    assert_eq!((c.packets, c.bytes, c.total, c.inactive), (1, 100, 1, 1));
    assert_eq!(e.snapshot().generation, 2);
}

#[test]
fn persistence_sticks_per_masked_client_until_expiry() {
    let mut s = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1), be(3, 1)]);
    s.persistence = Some(secs(600));
    s.persist_mask = Ipv4Addr::new(255, 255, 255, 0);
    let mut e = engine(vec![s], 1000);
    let t0 = Instant::now();
    let client = |last: u8, sport: u16| FlowKey {
        src: Ipv4Addr::new(203, 0, 113, last),
        ..tcp_key(0, sport)
    };
    // Handshakes that complete, then reset: confirmed flows whose
    // entries expire after the CLOSE timeout.
    let open = |e: &mut Engine, t: Instant, k: &FlowKey| {
        let b = backend_of(e.decide(t, k, SYN, 60));
        assert_eq!(backend_of(e.decide(t, k, ACK, 60)), b);
        e.decide(t, k, RST, 60);
        b
    };
    let first = open(&mut e, t0, &client(1, 1000));
    // Many flows from the same /24, interleaved with other clients that
    // advance the round robin: all land on the same backend.
    for i in 0..30u16 {
        let other = FlowKey {
            src: Ipv4Addr::new(192, 0, i as u8, 1),
            ..tcp_key(0, i)
        };
        open(&mut e, t0, &other);
        let k = client((i % 200) as u8 + 2, 2000 + i);
        assert_eq!(open(&mut e, t0 + secs(1), &k), first);
    }
    assert_eq!(e.persist_len(), 31);
    // The template outlives its connections by the persistence timeout: the
    // reset flows expire at 11 s, the template 600 s after its last use.
    let later = t0 + secs(12);
    while e.expire(later, 1000) > 0 {}
    assert_eq!(e.len(), 0);
    assert_eq!(e.persist_len(), 31);
    assert_eq!(
        backend_of(e.decide(later, &client(77, 5000), SYN, 60)),
        first
    );
    // Long after: the template is gone and the client is scheduled afresh.
    let much_later = later + secs(601);
    while e.expire(much_later, 1000) > 0 {}
    assert_eq!(e.len(), 0);
    assert_eq!(e.persist_len(), 0);
    let mut seen = std::collections::HashSet::new();
    for i in 0..3u16 {
        // Different /24s each time, so each gets a new template.
        let k = FlowKey {
            src: Ipv4Addr::new(203, 0, 114 + i as u8, 1),
            ..tcp_key(0, i)
        };
        seen.insert(backend_of(e.decide(much_later, &k, SYN, 60)));
    }
    assert_eq!(seen.len(), 3, "round robin resumes for new clients");
}

#[test]
fn persistence_template_lives_while_connections_do() {
    let mut s = svc(17, 53, Scheduler::Rr, vec![be(1, 1), be(2, 1)]);
    s.persistence = Some(secs(10));
    let mut e = engine(vec![s], 100);
    let t0 = Instant::now();
    let k = udp_key(1, 1);
    let b = backend_of(e.decide(t0, &k, 0, 60));
    // Keep the UDP flow alive past the persistence timeout.
    for i in 1..=10 {
        e.decide(t0 + secs(100 * i), &k, 0, 60);
        e.expire(t0 + secs(100 * i), 100);
    }
    assert_eq!(e.persist_len(), 1);
    // A second flow of the same client still follows the template.
    let k2 = udp_key(1, 2);
    assert_eq!(backend_of(e.decide(t0 + secs(1001), &k2, 0, 60)), b);
}

#[test]
fn persistence_repoints_away_from_drained_backend() {
    let mut s = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)]);
    s.persistence = Some(secs(600));
    let mut e = engine(vec![s.clone()], 100);
    let now = Instant::now();
    let first = backend_of(e.decide(now, &tcp_key(1, 1), SYN, 60));
    let other = if first == addr(1) { 2 } else { 1 };
    for b in &mut s.backends {
        if b.addr == first {
            b.weight = 0;
        }
    }
    e.set_snapshot(snap(2, vec![s]));
    // The old flow stays; a new flow of the same client moves.
    assert_eq!(backend_of(e.decide(now, &tcp_key(1, 1), ACK, 60)), first);
    assert_eq!(
        backend_of(e.decide(now, &tcp_key(1, 2), SYN, 60)),
        addr(other)
    );
    assert_eq!(
        backend_of(e.decide(now, &tcp_key(1, 3), SYN, 60)),
        addr(other)
    );
    assert_eq!(e.persist_len(), 1);
}

#[test]
fn rst_and_icmp_errors_never_create_state() {
    let rr = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)]);
    let mut e = engine(vec![rr], 100);
    let now = Instant::now();
    assert_eq!(
        e.decide(now, &tcp_key(1, 1), RST, 60),
        Verdict::Drop(ForwardDrop::NoConnection)
    );
    assert_eq!(
        e.decide_related(now, &tcp_key(1, 1), 60),
        Verdict::Drop(ForwardDrop::NoConnection)
    );
    assert_eq!(e.len(), 0);
    // With a connection, the ICMP error follows it without touching state.
    let b = backend_of(e.decide(now, &tcp_key(1, 1), SYN, 60));
    assert_eq!(backend_of(e.decide_related(now, &tcp_key(1, 1), 590)), b);
    assert_eq!(
        e.lookup(now, &tcp_key(1, 1)).unwrap().state,
        TcpState::SynRecv
    );
    assert_eq!(e.drops().no_connection, 2);

    // Under mh, stray packets go by hash: where the flow would have been.
    let mut m = engine(
        vec![svc(6, 80, Scheduler::Mh, vec![be(1, 1), be(2, 1)])],
        100,
    );
    let k = tcp_key(7, 7);
    let by_hash = backend_of(m.decide_related(now, &k, 60));
    assert_eq!(backend_of(m.decide(now, &k, RST, 60)), by_hash);
    assert_eq!(m.len(), 0);
    assert_eq!(backend_of(m.decide(now, &k, SYN, 60)), by_hash);
}

#[test]
fn syn_reusing_a_closed_flow_is_rescheduled() {
    let mut e = engine(
        vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)])],
        100,
    );
    let now = Instant::now();
    let k = tcp_key(1, 1);
    let first = backend_of(e.decide(now, &k, SYN, 60));
    e.decide(now, &k, ACK, 60);
    e.decide(now, &k, RST, 60);
    assert_eq!(e.lookup(now, &k).unwrap().state, TcpState::Close);
    let second = backend_of(e.decide(now, &k, SYN, 60));
    assert_ne!(first, second, "round robin moved on");
    assert_eq!(e.len(), 1);
    let c: u64 = e
        .counters()
        .iter()
        .map(|(_, c)| c.active + c.inactive)
        .sum();
    assert_eq!(c, 1, "old entry released");
}

#[test]
fn mh_survives_takeover_without_sync() {
    // Two directors with the same configuration (backends listed in a
    // different order) agree on where mid-flow packets go.
    let backends: Vec<BackendSnap> = (1..=5).map(|i| be(i, 1)).collect();
    let mut reversed = backends.clone();
    reversed.reverse();
    let mut a = engine(vec![svc(6, 80, Scheduler::Mh, backends)], 20_000);
    let mut b = engine(vec![svc(6, 80, Scheduler::Mh, reversed)], 20_000);
    let now = Instant::now();
    for i in 0..10_000 {
        let k = tcp_key(i, (i % 50_000) as u16);
        let on_a = backend_of(a.decide(now, &k, SYN, 60));
        assert_eq!(backend_of(b.decide(now, &k, ACK, 60)), on_a);
    }
}

#[test]
fn after_a_takeover_unknown_mid_flow_packets_wait_for_sync() {
    let rr = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)]);
    let mut old = engine(vec![rr.clone()], 100);
    let mut new = engine(vec![rr], 100);
    let t0 = Instant::now();
    // The predecessor's last flow: its SYN went to backend `b` there.
    let k = tcp_key(1, 1);
    let b = backend_of(old.decide(t0, &k, SYN, 60));
    new.hold_unknown_until(t0 + TAKEOVER_HOLD);
    // Its handshake's ACK reaches the new director before the entry does.
    assert_eq!(
        new.decide(t0, &k, ACK, 60),
        Verdict::Drop(ForwardDrop::AwaitingSync)
    );
    assert_eq!(new.drops().awaiting_sync, 1);
    assert_eq!(new.len(), 0, "nothing scheduled");
    // New flows are not held, nor are resets (they create no state).
    backend_of(new.decide(t0, &tcp_key(2, 1), SYN, 60));
    assert_eq!(
        new.decide(t0, &tcp_key(3, 1), RST, 60),
        Verdict::Drop(ForwardDrop::NoConnection)
    );
    // The entry arrives through sync; the retransmission follows it.
    for c in old.export(t0) {
        assert!(new.install(t0, c));
    }
    let later = t0 + Duration::from_millis(200);
    assert_eq!(backend_of(new.decide(later, &k, ACK, 60)), b);
    // Past the hold (a predecessor that died syncs nothing), unknown
    // mid-flow packets are picked up again.
    let after = t0 + TAKEOVER_HOLD;
    backend_of(new.decide(after, &tcp_key(4, 1), ACK, 60));
    assert_eq!(new.drops().awaiting_sync, 1);
}

#[test]
fn mh_removal_moves_few_flows_through_the_engine() {
    let all: Vec<BackendSnap> = (1..=10).map(|i| be(i, 1)).collect();
    let keys: Vec<FlowKey> = (0..20_000)
        .map(|i| tcp_key(i, 1000 + (i % 3) as u16))
        .collect();
    let now = Instant::now();
    let mut e = engine(vec![svc(6, 80, Scheduler::Mh, all.clone())], 1);
    let before: Vec<Ipv4Addr> = keys
        .iter()
        .map(|k| backend_of(e.decide_related(now, k, 60)))
        .collect();
    e.set_snapshot(snap(2, vec![svc(6, 80, Scheduler::Mh, all[1..].to_vec())]));
    let after: Vec<Ipv4Addr> = keys
        .iter()
        .map(|k| backend_of(e.decide_related(now, k, 60)))
        .collect();
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    assert!(moved <= keys.len() / 10 + keys.len() / 50, "moved {moved}");
    assert!(after.iter().all(|a| *a != addr(1)));
}

#[test]
fn export_install_roundtrip() {
    let mut persistent = svc(6, 80, Scheduler::Wlc, vec![be(1, 1), be(2, 1)]);
    persistent.persistence = Some(secs(300));
    let services = vec![
        persistent,
        svc(17, 53, Scheduler::Rr, vec![be(1, 1), be(2, 1)]),
    ];
    let mut director = engine(services.clone(), 100);
    let mut standby = engine(services, 100);
    let now = Instant::now();
    for i in 0..10 {
        let k = tcp_key(i, 1);
        backend_of(director.decide(now, &k, SYN, 60));
        if i % 2 == 0 {
            director.decide(now, &k, ACK, 60);
        }
        backend_of(director.decide(now, &udp_key(i, 1), 0, 60));
    }
    let conns = director.export(now);
    let templates = director.export_persist(now);
    assert_eq!(conns.len(), 20);
    assert_eq!(templates.len(), 10);
    for c in &conns {
        assert!(standby.install(now, *c));
    }
    for p in &templates {
        assert!(standby.install_persist(now, *p));
    }
    let mut got = standby.export(now);
    let mut want = conns.clone();
    let order = |c: &ConnEntry| (c.key.proto, c.key.src, c.key.sport);
    got.sort_by_key(order);
    want.sort_by_key(order);
    assert_eq!(got, want);
    // The standby, now director, keeps every flow where it was.
    for c in &conns {
        let flags = if c.key.proto == FlowKey::TCP { ACK } else { 0 };
        assert_eq!(
            backend_of(standby.decide(now, &c.key, flags, 60)),
            c.backend
        );
    }
    let active = |e: &Engine| e.counters().iter().map(|(_, c)| c.active).sum::<u64>();
    assert_eq!(active(&standby), 10);
    // New flows of a synced client follow its template.
    let t = templates[0];
    let k = FlowKey {
        src: t.client,
        sport: 999,
        ..tcp_key(0, 0)
    };
    assert_eq!(backend_of(standby.decide(now, &k, SYN, 60)), t.backend);
}

#[test]
fn install_refuses_what_it_cannot_honour() {
    let mut e = engine(vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1)])], 1);
    let now = Instant::now();
    let entry = |key, backend, expires| ConnEntry {
        key,
        backend,
        state: TcpState::Established,
        expires,
    };
    let later = now + secs(10);
    assert!(
        !e.install(now, entry(tcp_key(1, 1), addr(1), now)),
        "expired"
    );
    assert!(
        !e.install(now, entry(tcp_key(1, 1), addr(7), later)),
        "unknown backend"
    );
    assert!(
        !e.install(now, entry(udp_key(1, 1), addr(1), later)),
        "unknown service"
    );
    assert!(e.install(now, entry(tcp_key(1, 1), addr(1), later)));
    assert!(
        e.install(now, entry(tcp_key(1, 1), addr(1), later)),
        "overwrite"
    );
    assert!(
        !e.install(now, entry(tcp_key(2, 1), addr(1), later)),
        "full"
    );
    assert!(
        !e.install_persist(
            now,
            PersistEntry {
                vip: VIP,
                proto: 6,
                port: 80,
                client: Ipv4Addr::new(1, 2, 3, 4),
                backend: addr(1),
                expires: later
            }
        ),
        "service without persistence"
    );
    assert_eq!(e.len(), 1);
    // Installed entries expire like any other.
    assert_eq!(e.expire(later, 10), 1);
}

#[test]
fn duplicate_services_and_backends_are_ignored() {
    let s = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(1, 1)]);
    let mut e = engine(vec![s.clone(), s], 10);
    let now = Instant::now();
    backend_of(e.decide(now, &tcp_key(1, 1), SYN, 60));
    assert_eq!(e.service_counters().len(), 1);
}

#[test]
fn backend_records_are_recycled_without_mixing_up_counters() {
    let now = Instant::now();
    let s = |bs: Vec<BackendSnap>| vec![svc(6, 80, Scheduler::Rr, bs)];
    let mut e = engine(s(vec![be(1, 1), be(2, 1)]), 100);
    // Both records freed, then one backend returns on a recycled record.
    e.set_snapshot(snap(2, s(vec![])));
    assert!(e.service_counters().is_empty());
    e.set_snapshot(snap(3, s(vec![be(1, 1)])));
    assert_eq!(e.service_counters().len(), 1);
    backend_of(e.decide(now, &tcp_key(1, 1), SYN, 60));
    e.set_snapshot(snap(4, s(vec![be(1, 1), be(2, 1)])));
    e.set_snapshot(snap(5, s(vec![be(2, 1), be(1, 1)])));
    let c = e.counters();
    assert_eq!(c.len(), 2);
    let one = c.iter().find(|((_, a), _)| *a == addr(1)).unwrap().1;
    assert_eq!((one.total, one.inactive), (1, 1));
    assert_eq!(backend_of(e.decide(now, &tcp_key(1, 1), ACK, 60)), addr(1));
}

#[test]
fn a_gone_backend_keeps_its_record_until_its_flows_end() {
    let now = Instant::now();
    let s = |bs: Vec<BackendSnap>| vec![svc(6, 80, Scheduler::Rr, bs)];
    let mut e = engine(s(vec![be(1, 1)]), 100);
    let k = tcp_key(1, 1);
    backend_of(e.decide(now, &k, SYN, 60));
    e.set_snapshot(snap(2, s(vec![be(2, 1)])));
    e.set_snapshot(snap(3, s(vec![be(3, 1), be(2, 1)])));
    assert!(e.counters().iter().any(|((_, a), _)| *a == addr(1)));
    // The flow's handshake expires; its backend's record goes with it.
    assert_eq!(e.expire(now + secs(60), 10), 1);
    let addrs: Vec<Ipv4Addr> = e.counters().iter().map(|((_, a), _)| *a).collect();
    assert!(!addrs.contains(&addr(1)), "{addrs:?}");
    // Coming back, it starts afresh and takes flows.
    e.set_snapshot(snap(4, s(vec![be(3, 1), be(2, 1), be(1, 1)])));
    let c = distribute(&mut e, now, 30);
    assert_eq!(c.len(), 3);
}

fn take(e: &mut Engine, max: usize) -> (Vec<ConnEntry>, Vec<PersistEntry>, TakeChanges) {
    let mut c = Vec::new();
    let mut p = Vec::new();
    let r = e.take_changes(&mut c, &mut p, max);
    (c, p, r)
}

#[test]
fn changes_report_new_and_state_changed_entries_once() {
    let mut persistent = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)]);
    persistent.persistence = Some(secs(300));
    let mut e = engine(vec![persistent], 100);
    let now = Instant::now();
    let k = tcp_key(1, 1000);
    let b = backend_of(e.decide(now, &k, SYN, 60));
    // A retransmitted SYN changes nothing, so the entry is reported once.
    e.decide(now, &k, SYN, 60);
    let (c, p, r) = take(&mut e, 100);
    assert_eq!(r, TakeChanges::default());
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].key, c[0].backend, c[0].state),
        (k, b, TcpState::SynRecv)
    );
    assert_eq!(p.len(), 1, "the new template");
    assert_eq!((p[0].client, p[0].backend), (k.src, b));
    assert_eq!(take(&mut e, 100).0.len(), 0, "nothing new");

    // Data on an established flow is not a change; the handshake ACK is.
    e.decide(now, &k, ACK, 60);
    e.decide(now, &k, ACK | TCP_PSH, 60);
    let (c, p, _) = take(&mut e, 100);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].state, TcpState::Established);
    assert!(p.is_empty());
    e.decide(now + secs(1), &k, ACK, 60);
    assert_eq!(take(&mut e, 100).0.len(), 0);
    e.decide(now + secs(2), &k, FIN, 60);
    let (c, _, _) = take(&mut e, 100);
    assert_eq!(c[0].state, TcpState::FinWait);
}

#[test]
fn busy_flows_are_refreshed_before_the_peer_copy_runs_out() {
    let mut e = engine(vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1)])], 10);
    let t0 = Instant::now();
    let k = tcp_key(1, 1);
    e.decide(t0, &k, SYN, 60);
    e.decide(t0, &k, ACK, 60);
    let (c, _, _) = take(&mut e, 10);
    assert_eq!(c[0].expires, t0 + secs(900));
    // Until half the timeout has passed, traffic is not worth a message.
    e.decide(t0 + secs(450), &k, ACK, 60);
    assert_eq!(take(&mut e, 10).0.len(), 0);
    e.decide(t0 + secs(451), &k, ACK, 60);
    let (c, _, _) = take(&mut e, 10);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].expires, t0 + secs(451 + 900));
}

#[test]
fn templates_kept_alive_by_connections_are_refreshed() {
    let mut persistent = svc(6, 80, Scheduler::Rr, vec![be(1, 1)]);
    persistent.persistence = Some(secs(100));
    let mut e = engine(vec![persistent], 10);
    let t0 = Instant::now();
    e.decide(t0, &tcp_key(1, 1), ACK, 60);
    take(&mut e, 10);
    // The connection (900 s) outlives the template's 100 s; expire extends
    // the template, and that must reach the peer.
    assert_eq!(e.expire(t0 + secs(101), 10), 0);
    let (c, p, _) = take(&mut e, 10);
    assert!(c.is_empty());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].expires, t0 + secs(201));
}

#[test]
fn changes_respect_max_and_keep_the_rest() {
    let mut e = engine(vec![svc(17, 53, Scheduler::Rr, vec![be(1, 1)])], 100);
    let now = Instant::now();
    for i in 0..10 {
        e.decide(now, &udp_key(i, 1), 0, 60);
    }
    let (c, _, r) = take(&mut e, 4);
    assert_eq!((c.len(), r.pending), (4, 6));
    let (c2, _, r) = take(&mut e, 100);
    assert_eq!((c2.len(), r.pending), (6, 0));
    let mut all: Vec<FlowKey> = c.iter().chain(&c2).map(|c| c.key).collect();
    all.sort_by_key(|k| k.src);
    all.dedup();
    assert_eq!(all.len(), 10);
}

#[test]
fn removed_and_recycled_slots_are_not_reported_twice_or_wrongly() {
    let mut e = engine(vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1)])], 4);
    let now = Instant::now();
    for i in 0..4 {
        e.decide(now, &tcp_key(i, 1), SYN, 60);
    }
    // All four expire (SYN_RECV: 60 s) and are swept before being taken.
    let later = now + secs(61);
    assert_eq!(e.expire(later, 10), 4);
    // A synced entry reuses a logged slot: not ours to report.
    assert!(e.install(
        later,
        ConnEntry {
            key: tcp_key(9, 9),
            backend: addr(1),
            state: TcpState::Established,
            expires: later + secs(100),
        }
    ));
    // A new flow reuses another logged slot: reported exactly once.
    e.decide(later, &tcp_key(7, 7), SYN, 60);
    let (c, _, r) = take(&mut e, 100);
    assert_eq!(r, TakeChanges::default());
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].key, tcp_key(7, 7));
}

#[test]
fn log_overflow_is_reported_once_then_tracking_resumes() {
    let mut e = engine(vec![svc(17, 53, Scheduler::Rr, vec![be(1, 1)])], 8);
    let now = Instant::now();
    // Churn: more creations than the log (2 × table capacity, all three
    // parts of 8) holds.
    for round in 0..7u64 {
        for i in 0..8 {
            e.decide(now + secs(round * 400), &udp_key(i, round as u16), 0, 60);
        }
        e.expire(now + secs(round * 400 + 301), 100);
    }
    let (c, p, r) = take(&mut e, 100);
    assert!(r.overflowed);
    assert!(c.is_empty() && p.is_empty());
    let (c, _, r) = take(&mut e, 100);
    assert!(!r.overflowed, "reported once");
    assert!(c.is_empty(), "the log was emptied");
    let t = now + secs(4000);
    e.decide(t, &udp_key(1, 1), 0, 60);
    let (c, _, r) = take(&mut e, 100);
    assert!(!r.overflowed);
    assert_eq!(c.len(), 1);
}

#[test]
fn change_log_does_not_grow() {
    let mut e = engine(vec![svc(17, 53, Scheduler::Rr, vec![be(1, 1)])], 64);
    let now = Instant::now();
    let cap = e.conn_log.slots.capacity();
    let (mut c, mut p) = (Vec::with_capacity(64), Vec::with_capacity(64));
    for round in 0..20u64 {
        let t = now + secs(round * 400);
        for i in 0..200 {
            e.decide(t, &udp_key(i, 1), 0, 60);
        }
        c.clear();
        p.clear();
        e.take_changes(&mut c, &mut p, 64);
        e.expire(t + secs(301), 1000);
    }
    assert_eq!(e.conn_log.slots.capacity(), cap);
    assert!(e.conn_log.slots.len() <= e.conn_log.cap);
}

#[test]
fn installed_entries_are_not_echoed() {
    let mut persistent = svc(6, 80, Scheduler::Rr, vec![be(1, 1)]);
    persistent.persistence = Some(secs(300));
    let mut e = engine(vec![persistent], 10);
    let now = Instant::now();
    assert!(e.install(
        now,
        ConnEntry {
            key: tcp_key(1, 1),
            backend: addr(1),
            state: TcpState::Established,
            expires: now + secs(900),
        }
    ));
    assert!(e.install_persist(
        now,
        PersistEntry {
            vip: VIP,
            proto: 6,
            port: 80,
            client: tcp_key(1, 1).src,
            backend: addr(1),
            expires: now + secs(300),
        }
    ));
    let (c, p, r) = take(&mut e, 10);
    assert!(c.is_empty() && p.is_empty() && !r.overflowed);
    // Once this node forwards the flow itself, its changes are reported.
    e.decide(now, &tcp_key(1, 1), FIN, 60);
    assert_eq!(take(&mut e, 10).0.len(), 1);
}

// Floods: spoofed sources fill the unconfirmed parts of the table, never
// the confirmed one.

fn flood_engine(scheduler: Scheduler, limits: Limits) -> Engine {
    let services = vec![
        svc(6, 80, scheduler, vec![be(1, 1), be(2, 1), be(3, 1)]),
        svc(17, 53, scheduler, vec![be(1, 1), be(2, 1), be(3, 1)]),
    ];
    Engine::with_limits(snap(1, services), limits, Timeouts::default())
}

/// One spoofed SYN (or UDP datagram) from a random source.
fn spoofed(rng: &mut fastrand::Rng, proto: u8) -> FlowKey {
    FlowKey {
        proto,
        src: Ipv4Addr::from(rng.u32(..)),
        sport: rng.u16(..),
        dst: VIP,
        dport: if proto == FlowKey::TCP { 80 } else { 53 },
    }
}

fn syn_flood(e: &mut Engine, rng: &mut fastrand::Rng, now: Instant, n: usize) {
    for _ in 0..n {
        backend_of(e.decide(now, &spoofed(rng, FlowKey::TCP), SYN, 60));
    }
}

const LIMITS: Limits = Limits {
    established: 100,
    embryonic: 1000,
    udp: 1000,
};

#[test]
fn syn_flood_leaves_room_for_a_real_handshake() {
    let mut e = flood_engine(Scheduler::Wlc, LIMITS);
    let mut rng = fastrand::Rng::with_seed(19);
    let t0 = Instant::now();
    let real: Vec<FlowKey> = (0..50).map(|i| tcp_key(i, 4000)).collect();
    let mut on = HashMap::new();
    for k in &real {
        on.insert(*k, backend_of(e.decide(t0, k, SYN, 60)));
        e.decide(t0, k, ACK, 60);
    }
    // 100 000 SYNs from random sources, in 10 ms steps of 1000 (100 kpps),
    // with the engine's periodic housekeeping in between.
    let mut now = t0;
    for _ in 0..100 {
        syn_flood(&mut e, &mut rng, now, 1000);
        now += Duration::from_millis(10);
        e.expire(now, 4096);
    }
    let st = e.table_stats();
    assert_eq!(st.embryonic.entries, 1000, "the half-open part is full");
    assert!(st.embryonic.evicted >= 99_000, "{st:?}");
    assert!(st.embryonic.pressure);
    assert_eq!(st.established.entries, 50, "confirmed flows untouched");
    let ev = e.poll_event().expect("flood event");
    assert!(ev.started);
    assert!(
        ev.message.starts_with("SYN flood suspected: "),
        "{}",
        ev.message
    );
    // A real client's handshake completes during the flood: its SYN gets
    // a slot, survives the next 500 spoofed SYNs (half the part), and its
    // ACK follows it to the same backend and confirms it.
    let client = tcp_key(777, 5555);
    let b = backend_of(e.decide(now, &client, SYN, 60));
    syn_flood(&mut e, &mut rng, now, 500);
    assert_eq!(backend_of(e.decide(now, &client, ACK, 60)), b);
    syn_flood(&mut e, &mut rng, now, 5000);
    assert_eq!(backend_of(e.decide(now, &client, ACK | TCP_PSH, 60)), b);
    let st = e.table_stats();
    assert_eq!(st.established.entries, 51);
    assert_eq!(st.promoted, 51);
    // The old flows never moved.
    for k in &real {
        assert_eq!(backend_of(e.decide(now, k, ACK, 1000)), on[k]);
    }
}

#[test]
fn confirmed_flows_are_never_evicted_even_when_their_part_is_full() {
    let limits = Limits {
        established: 10,
        ..LIMITS
    };
    let mut e = flood_engine(Scheduler::Rr, limits);
    let mut rng = fastrand::Rng::with_seed(1);
    let now = Instant::now();
    for i in 0..10 {
        backend_of(e.decide(now, &tcp_key(i, 1), SYN, 60));
        backend_of(e.decide(now, &tcp_key(i, 1), ACK, 60));
    }
    syn_flood(&mut e, &mut rng, now, 10_000);
    // One more real client: confirmed, but no room; it keeps working from
    // the half-open part instead of displacing anyone.
    let k = tcp_key(99, 1);
    let b = backend_of(e.decide(now, &k, SYN, 60));
    assert_eq!(backend_of(e.decide(now, &k, ACK, 60)), b);
    let st = e.table_stats();
    assert_eq!((st.established.entries, st.promote_refused), (10, 1));
    assert_eq!(st.established.evicted, 0);
    for i in 0..10 {
        let c = e.lookup(now, &tcp_key(i, 1)).expect("still there");
        assert_eq!(c.state, TcpState::Established);
    }
}

#[test]
fn spoofed_acks_do_not_fill_the_confirmed_part() {
    // Sloppy TCP picks up mid-flow packets of unknown flows; one spoofed
    // ACK per source must not take a confirmed slot for 900 s.
    let mut e = flood_engine(Scheduler::Mh, LIMITS);
    let mut rng = fastrand::Rng::with_seed(2);
    let now = Instant::now();
    for _ in 0..5000 {
        backend_of(e.decide(now, &spoofed(&mut rng, FlowKey::TCP), ACK, 60));
    }
    let st = e.table_stats();
    assert_eq!((st.established.entries, st.embryonic.entries), (0, 1000));
    // A real flow picked up after a takeover is confirmed by its second packet.
    let k = tcp_key(5, 5);
    let b = backend_of(e.decide(now, &k, ACK, 60));
    assert_eq!(backend_of(e.decide(now, &k, ACK, 60)), b);
    assert_eq!(e.table_stats().established.entries, 1);
}

#[test]
fn pressure_shortens_timeouts_and_ends_after_calm() {
    let mut e = flood_engine(Scheduler::Rr, LIMITS);
    let mut rng = fastrand::Rng::with_seed(3);
    let t = Timeouts::default();
    let t0 = Instant::now();
    // Before any flood a half-open entry lives the SYN timeout.
    let k = tcp_key(1, 1);
    e.decide(t0, &k, SYN, 60);
    assert!(e
        .lookup(t0 + t.syn - Duration::from_millis(1), &k)
        .is_some());
    syn_flood(&mut e, &mut rng, t0, 2000);
    e.expire(t0, 10);
    assert!(e.table_stats().embryonic.pressure);
    // The flood goes on, now with short timeouts, evicting what came first.
    syn_flood(&mut e, &mut rng, t0, 2000);
    // Under pressure: the shorter SYN timeout, also for UDP's own part
    // only once UDP is under pressure.
    let k2 = tcp_key(2, 2);
    e.decide(t0, &k2, SYN, 60);
    assert!(e
        .lookup(t0 + t.syn_pressure - Duration::from_millis(1), &k2)
        .is_some());
    assert!(e.lookup(t0 + t.syn_pressure, &k2).is_none());
    let u = udp_key(3, 3);
    e.decide(t0, &u, 0, 60);
    assert!(e.lookup(t0 + t.udp - secs(1), &u).is_some());
    // The flood stops: the flood entries go at once (oldest first, in
    // recency order), and pressure ends once calm has held.
    let after = t0 + t.syn_pressure;
    let mut now = after;
    let mut ended = None;
    while now < after + secs(30) {
        e.expire(now, 4096);
        if let Some(ev) = e.poll_event() {
            if !ev.started {
                ended = Some((now, ev));
                break;
            }
        }
        now += Duration::from_millis(100);
    }
    let (when, ev) = ended.expect("pressure ended");
    assert_eq!(e.table_stats().embryonic.entries, 0);
    assert!(
        when - after <= flood::CALM_HOLD + secs(1),
        "{:?}",
        when - after
    );
    assert!(
        ev.message.starts_with("SYN flood over after "),
        "{}",
        ev.message
    );
    assert!(!e.table_stats().embryonic.pressure);
    let k3 = tcp_key(4, 4);
    e.decide(now, &k3, SYN, 60);
    assert!(e
        .lookup(now + t.syn - Duration::from_millis(1), &k3)
        .is_some());
}

#[test]
fn udp_flood_evicts_datagrams_seen_once_before_real_flows() {
    let mut e = flood_engine(Scheduler::Rr, LIMITS);
    let mut rng = fastrand::Rng::with_seed(4);
    let now = Instant::now();
    let real: Vec<FlowKey> = (0..100).map(|i| udp_key(i, 7000)).collect();
    let mut on = HashMap::new();
    for k in &real {
        on.insert(*k, backend_of(e.decide(now, k, 0, 60)));
        e.decide(now, k, 0, 60);
    }
    for _ in 0..50_000 {
        backend_of(e.decide(now, &spoofed(&mut rng, FlowKey::UDP), 0, 60));
    }
    e.expire(now, 10);
    let st = e.table_stats();
    assert_eq!(st.udp.entries, 1000);
    assert!(st.udp.pressure && st.udp.evicted >= 49_000, "{st:?}");
    assert_eq!(st.established.entries + st.embryonic.entries, 0);
    for k in &real {
        assert_eq!(backend_of(e.decide(now, k, 0, 60)), on[k], "kept");
    }
    assert!(e
        .poll_event()
        .unwrap()
        .message
        .starts_with("UDP flood suspected: "));
}

#[test]
fn what_a_client_whose_half_open_entry_was_evicted_sees() {
    // Its ACK arrives after the entry is gone and is scheduled anew
    // (sloppy TCP): mh and sh send it where its SYN went; rr moves on to
    // a backend that has no such connection (and will answer RST).
    for (sched, same) in [
        (Scheduler::Mh, true),
        (Scheduler::Sh, true),
        (Scheduler::Rr, false),
    ] {
        let mut e = flood_engine(sched, LIMITS);
        let mut rng = fastrand::Rng::with_seed(5);
        let now = Instant::now();
        let k = tcp_key(9, 9);
        let b = backend_of(e.decide(now, &k, SYN, 60));
        syn_flood(&mut e, &mut rng, now, 1000);
        assert!(e.lookup(now, &k).is_none(), "{sched}: evicted");
        // rr: 1000 flood flows later, the cursor sits on the next backend.
        let again = backend_of(e.decide(now, &k, ACK, 60));
        assert_eq!(again == b, same, "{sched}");
    }
}

#[test]
fn unconfirmed_templates_die_with_their_flows_and_floods_are_not_synced() {
    let mut s = svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)]);
    s.persistence = Some(secs(600));
    let mut e = Engine::with_limits(snap(1, vec![s]), LIMITS, Timeouts::default());
    let mut rng = fastrand::Rng::with_seed(6);
    let now = Instant::now();
    // Before the flood: a real client, synced as usual.
    let k = tcp_key(1, 1);
    e.decide(now, &k, SYN, 60);
    e.decide(now, &k, ACK, 60);
    let (c, p, _) = take(&mut e, 10_000);
    assert_eq!((c.len(), p.len()), (1, 1));
    syn_flood(&mut e, &mut rng, now, 1000);
    e.expire(now, 10);
    take(&mut e, 10_000);
    // Under pressure spoofed SYNs get templates (they might be real) but
    // neither they nor their templates are synced, and the templates go
    // with their evicted flows.
    syn_flood(&mut e, &mut rng, now, 20_000);
    assert!(e.persist_len() <= 1 + 1000, "{}", e.persist_len());
    let (c, p, r) = take(&mut e, 100_000);
    assert!(!r.overflowed);
    assert_eq!((c.len(), p.len()), (0, 0));
    // A real handshake during the flood: synced once confirmed, template too.
    let k2 = tcp_key(2, 2);
    e.decide(now, &k2, SYN, 60);
    assert_eq!(take(&mut e, 100).0.len(), 0);
    e.decide(now, &k2, ACK, 60);
    let (c, p, _) = take(&mut e, 100);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].key, c[0].state), (k2, TcpState::Established));
    assert_eq!((p.len(), p[0].client), (1, k2.src));
    // The earlier client's template is confirmed and stays.
    let (_, old_p, _) = (0, e.export_persist(now), 0);
    assert!(old_p.iter().any(|t| t.client == k.src));
}

#[test]
fn installs_go_to_their_part() {
    let mut e = flood_engine(
        Scheduler::Rr,
        Limits {
            established: 2,
            embryonic: 2,
            udp: 2,
        },
    );
    let now = Instant::now();
    let later = now + secs(50);
    let entry = |key, state| ConnEntry {
        key,
        backend: addr(1),
        state,
        expires: later,
    };
    for i in 0..2 {
        assert!(e.install(now, entry(tcp_key(i, 1), TcpState::Established)));
    }
    assert!(
        !e.install(now, entry(tcp_key(9, 1), TcpState::Established)),
        "full"
    );
    // Half-open and UDP entries take the oldest one's place.
    for i in 0..3 {
        assert!(e.install(now, entry(tcp_key(10 + i, 1), TcpState::SynRecv)));
        assert!(e.install(now, entry(udp_key(10 + i, 1), TcpState::Udp)));
    }
    let st = e.table_stats();
    assert_eq!(
        (st.established.entries, st.embryonic.entries, st.udp.entries),
        (2, 2, 2)
    );
    assert_eq!((st.embryonic.evicted, st.udp.evicted), (1, 1));
    assert!(e.lookup(now, &tcp_key(10, 1)).is_none());
    assert!(e.lookup(now, &tcp_key(12, 1)).is_some());
}

/// The backend a kernel table names for `key`, as the eBPF program hashes.
fn table_pick(t: &HashTable, key: &FlowKey) -> Ipv4Addr {
    let src = Ipv4Addr::from(u32::from(key.src) & u32::from(t.src_mask));
    let h = maglev::flow_hash(src, t.with_port.then_some(key.sport));
    let slot = t.slots[h as usize % maglev::TABLE_SIZE];
    t.backends[usize::from(slot)].backend
}

#[test]
fn kernel_tables_pick_as_the_engine_does_for_sh_and_mh() {
    for sched in [Scheduler::Sh, Scheduler::Mh] {
        let backends: Vec<BackendSnap> = (1..=5).map(|i| be(i, 1 + u32::from(i % 2))).collect();
        let mut e = engine(vec![svc(6, 80, sched, backends)], 20_000);
        let tables = e.hash_tables();
        assert_eq!(tables.len(), 1);
        let t = &tables[0];
        assert_eq!((t.port, t.with_port), (80, sched == Scheduler::Mh));
        assert_eq!(t.slots.len(), maglev::TABLE_SIZE);
        let now = Instant::now();
        for i in 0..5_000 {
            let k = tcp_key(i * 13, 1024 + (i % 50_000) as u16);
            assert_eq!(
                table_pick(t, &k),
                backend_of(e.decide(now, &k, SYN, 60)),
                "{sched:?} flow {k:?}"
            );
        }
    }
}

#[test]
fn kernel_tables_cover_services_over_their_eligible_backends() {
    let mut persistent = svc(6, 443, Scheduler::Wlc, vec![be(1, 1), be(2, 1)]);
    persistent.persistence = Some(secs(300));
    persistent.persist_mask = Ipv4Addr::new(255, 255, 255, 0);
    let mut down = be(4, 1);
    down.up = false;
    let e = engine(
        vec![
            svc(
                6,
                80,
                Scheduler::Wrr,
                vec![be(1, 3), be(2, 1), be(3, 0), down],
            ),
            persistent,
            svc(17, 53, Scheduler::Rr, vec![be(1, 1)]),
            svc(6, 8080, Scheduler::Rr, vec![be(3, 0)]),
        ],
        100,
    );
    let tables = e.hash_tables();
    let services: Vec<(u8, u16)> = tables.iter().map(|t| (t.proto, t.port)).collect();
    assert_eq!(
        services,
        vec![(6, 80), (6, 443), (17, 53)],
        "a service without eligible backends has none"
    );
    let web = &tables[0];
    let names: Vec<Ipv4Addr> = web.backends.iter().map(|b| b.backend).collect();
    assert_eq!(names, vec![addr(1), addr(2)], "drained and down left out");
    assert!(web.with_port && web.src_mask == Ipv4Addr::BROADCAST);
    assert_eq!(web.backends[0].mac, [2, 0, 0, 0, 0, 1]);
    assert!(web.backends[0].local && !web.backends[1].local);
    // Weighted: backend 1 (weight 3) holds about three quarters of slots.
    let ones = web.slots.iter().filter(|&&s| s == 0).count();
    let share = ones as f64 / web.slots.len() as f64;
    assert!((0.7..0.8).contains(&share), "weight-3 share {share}");
    // Persistence: one masked client, one backend, whatever its port.
    let tls = &tables[1];
    assert!(!tls.with_port);
    assert_eq!(tls.src_mask, Ipv4Addr::new(255, 255, 255, 0));
    let first = table_pick(tls, &tcp_key(1, 1000));
    for i in 0..200 {
        assert_eq!(table_pick(tls, &tcp_key(i, 2000 + i as u16)), first);
    }
    // Which tables pick exactly as the engine would, at any rate: wrr and
    // rr deal one cycle of their own picks; persistence and wlc do not.
    assert!(web.exact && tables[2].exact && !tls.exact);
    assert_eq!(web.deal, vec![0, 0, 0, 1], "wrr 3:1");
    assert_eq!(tables[2].deal, vec![0]);
    assert!(tls.deal.is_empty());
}

#[test]
fn kernel_deals_are_what_the_engine_would_pick_in_turn() {
    let backends: Vec<BackendSnap> = (1..=4).map(|i| be(i, u32::from(i))).collect();
    let mut e = engine(vec![svc(6, 80, Scheduler::Wrr, backends)], 20_000);
    let t = e.hash_tables().remove(0);
    assert_eq!(t.deal.len(), 10, "weights 1+2+3+4");
    let now = Instant::now();
    for i in 0..30 {
        let k = tcp_key(i, 1024 + i as u16);
        let want = t.backends[usize::from(t.deal[i as usize % t.deal.len()])].backend;
        assert_eq!(backend_of(e.decide(now, &k, SYN, 60)), want, "flow {i}");
    }
}

#[test]
fn adopted_flows_are_counted_synced_and_followed() {
    let mut e = engine(
        vec![svc(6, 80, Scheduler::Rr, vec![be(1, 1), be(2, 1)])],
        100,
    );
    let now = Instant::now();
    let k = tcp_key(1, 1000);
    // The kernel sent it to backend 2 and its handshake completed.
    assert!(e.adopt(now, &k, addr(2), true));
    let held = e.lookup(now, &k).expect("adopted");
    assert_eq!((held.backend, held.state), (addr(2), TcpState::Established));
    assert_eq!(backend_of(e.decide(now, &k, ACK, 60)), addr(2));
    let counters: HashMap<Ipv4Addr, BackendCounters> =
        e.counters().into_iter().map(|((_, a), c)| (a, c)).collect();
    assert_eq!(
        (counters[&addr(2)].total, counters[&addr(2)].active),
        (1, 1)
    );
    assert_eq!(counters[&addr(1)].total, 0);
    let (c, _, _) = take(&mut e, 100);
    assert_eq!(c.len(), 1, "the peer learns of it");
    assert_eq!((c[0].key, c[0].backend), (k, addr(2)));
    // A half-open flow is adopted as such; a backend the engine does not
    // know (removed since the kernel's pick) is refused.
    let h = tcp_key(2, 1000);
    assert!(e.adopt(now, &h, addr(1), false));
    assert_eq!(e.lookup(now, &h).unwrap().state, TcpState::SynRecv);
    assert!(!e.adopt(now, &tcp_key(3, 1000), addr(9), true));
    assert!(e.lookup(now, &tcp_key(3, 1000)).is_none());
}

/// Flows a data plane scheduled and announced unconfirmed fill the
/// half-open part as flows decided here do: a flood of them is seen
/// (pressure, eviction, an event), and `confirm` promotes a real one
/// without counting a packet.
#[test]
fn adopted_half_open_flows_meet_the_flood_guard_and_are_confirmed() {
    let mut e = flood_engine(Scheduler::Rr, LIMITS);
    let mut rng = fastrand::Rng::with_seed(21);
    let t0 = Instant::now();
    let real = tcp_key(1, 4000);
    let b = addr(1);
    assert!(e.adopt(t0, &real, b, false));
    assert!(e.confirm(t0, &real));
    let held = e.lookup(t0, &real).unwrap();
    assert_eq!(held.state, TcpState::Established);
    let counters: HashMap<Ipv4Addr, BackendCounters> =
        e.counters().into_iter().map(|((_, a), c)| (a, c)).collect();
    assert_eq!((counters[&b].total, counters[&b].packets), (1, 0));
    let mut now = t0;
    for _ in 0..20 {
        for _ in 0..1000 {
            let k = FlowKey {
                src: Ipv4Addr::from(rng.u32(..)),
                ..tcp_key(0, rng.u16(1024..))
            };
            e.adopt(now, &k, b, false);
        }
        now += Duration::from_millis(10);
        e.expire(now, 4096);
    }
    let st = e.table_stats();
    assert_eq!(st.embryonic.entries, 1000, "the half-open part is full");
    assert!(
        st.embryonic.pressure && st.embryonic.evicted >= 19_000,
        "{st:?}"
    );
    assert_eq!(st.established.entries, 1, "the confirmed flow stays");
    let ev = e.poll_event().expect("flood event");
    assert!(
        ev.message.starts_with("SYN flood suspected: "),
        "{}",
        ev.message
    );
    assert!(!e.confirm(now, &tcp_key(9, 9)), "unknown flow");
}

#[test]
fn adopted_udp_flows_follow_their_backend() {
    let mut e = engine(
        vec![svc(17, 53, Scheduler::Rr, vec![be(1, 1), be(2, 1)])],
        100,
    );
    let now = Instant::now();
    let k = udp_key(1, 1000);
    assert!(e.adopt(now, &k, addr(2), true));
    assert_eq!(e.lookup(now, &k).unwrap().state, TcpState::Udp);
    for _ in 0..3 {
        assert_eq!(backend_of(e.decide(now, &k, 0, 60)), addr(2));
    }
    let counters: HashMap<Ipv4Addr, BackendCounters> =
        e.counters().into_iter().map(|((_, a), c)| (a, c)).collect();
    assert_eq!(counters[&addr(2)].total, 1);
}
