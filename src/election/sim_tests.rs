//! Two election nodes over a simulated link (latency, seeded loss,
//! partitions), stepped to the next wake-up. Every heartbeat crosses the link
//! as bytes through `HeartbeatRepr::emit`/`parse`, like the real driver.
use super::*;
use crate::wire::heartbeat::HeartbeatRepr;

const KEY: &[u8] = b"duet simulated cluster key";
const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLUSTER: u32 = 1;
const INTERVAL: Duration = DEFAULT_INTERVAL;
const DEAD_AFTER: Duration = DEFAULT_DEAD_AFTER;
const LATENCY: Duration = Duration::from_millis(2);

fn params(me: Ipv4Addr, priority: u8) -> Params {
    let peer = if me == A { B } else { A };
    Params {
        me,
        peers: vec![peer],
        cluster_id: CLUSTER,
        boot_id: 1_000,
        nonce_seed: u64::from(u32::from(me)),
        priority,
        interval: INTERVAL,
        dead_after: DEAD_AFTER,
        preempt: false,
        ping_configured: false,
    }
}

struct Node {
    params: Params,
    el: Election,
    up: bool,
    events: Vec<(Instant, Event)>,
}

struct InFlight {
    at: Instant,
    to: usize,
    bytes: Vec<u8>,
}

struct Pair {
    nodes: [Node; 2],
    epoch: Instant,
    now: Instant,
    latency: Duration,
    loss: f64,
    rng: fastrand::Rng,
    partitioned: bool,
    in_flight: Vec<InFlight>,
    /// Every datagram ever emitted, delivered or not: `(to, bytes)`.
    wire_log: Vec<(usize, Vec<u8>)>,
}

impl Pair {
    /// Node 0 is A, node 1 is B; both start now.
    fn new(seed: u64, pa: Params, pb: Params) -> Pair {
        let epoch = Instant::now();
        let mk = |p: Params| Node {
            el: Election::new(p.clone(), epoch),
            params: p,
            up: true,
            events: Vec::new(),
        };
        Pair {
            nodes: [mk(pa), mk(pb)],
            epoch,
            now: epoch,
            latency: LATENCY,
            loss: 0.0,
            rng: fastrand::Rng::with_seed(seed),
            partitioned: false,
            in_flight: Vec::new(),
            wire_log: Vec::new(),
        }
    }

    fn default_pair(seed: u64) -> Pair {
        Pair::new(seed, params(A, 150), params(B, 100))
    }

    fn at(&self, offset: Duration) -> Instant {
        self.epoch + offset
    }

    fn el(&mut self, i: usize) -> &mut Election {
        &mut self.nodes[i].el
    }

    fn role(&self, i: usize) -> Role {
        self.nodes[i].el.role()
    }

    /// Crash: the node sends nothing more (what it had not yet handed to the
    /// link is lost), hears nothing, keeps no timers.
    fn stop(&mut self, i: usize) {
        while self.nodes[i].el.poll_transmit().is_some() {}
        self.flush();
        self.nodes[i].up = false;
    }

    /// (Re)start a node with a fresh machine, a boot id (lower or higher
    /// than before: it does not matter) and a new nonce seed, as a new
    /// process draws.
    fn restart(&mut self, i: usize, boot_id: u64) {
        let mut p = self.nodes[i].params.clone();
        p.boot_id = boot_id;
        p.nonce_seed = p.nonce_seed.wrapping_mul(31).wrapping_add(boot_id);
        self.nodes[i].el = Election::new(p.clone(), self.now);
        self.nodes[i].params = p;
        self.nodes[i].up = true;
        self.flush();
    }

    fn flush(&mut self) {
        for i in 0..2 {
            if !self.nodes[i].up {
                continue;
            }
            while let Some((dst, msg)) = self.nodes[i].el.poll_transmit() {
                let to = 1 - i;
                assert_eq!(dst, self.nodes[to].params.me, "sent to the configured peer");
                let mut bytes = Vec::new();
                msg.emit(KEY, &mut bytes);
                self.wire_log.push((to, bytes.clone()));
                if self.partitioned || self.rng.f64() < self.loss {
                    continue;
                }
                self.in_flight.push(InFlight {
                    at: self.now + self.latency,
                    to,
                    bytes,
                });
            }
            while let Some(ev) = self.nodes[i].el.poll_event() {
                self.nodes[i].events.push((self.now, ev));
            }
        }
    }

    fn next_wakeup(&self) -> Instant {
        let timers = self
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.el.poll_timeout());
        let arrivals = self.in_flight.iter().map(|d| d.at);
        timers.chain(arrivals).min().expect("some node is up")
    }

    /// Hand raw bytes to node `to` the way the driver does.
    fn deliver(&mut self, to: usize, bytes: &[u8]) {
        if !self.nodes[to].up {
            return;
        }
        let now = self.now;
        let el = &mut self.nodes[to].el;
        match HeartbeatRepr::parse(bytes, KEY) {
            Ok(msg) => {
                let _ = el.handle_heartbeat(now, &msg);
            }
            Err(_) => el.note_auth_failure(),
        }
    }

    fn step(&mut self) {
        self.flush();
        let t = self.next_wakeup();
        assert!(t >= self.now, "time only moves forward");
        self.now = t;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|d| d.at <= t);
        self.in_flight = later;
        for d in due {
            self.deliver(d.to, &d.bytes);
        }
        for i in 0..2 {
            if self.nodes[i].up && self.nodes[i].el.poll_timeout() <= t {
                self.nodes[i].el.handle_timeout(t);
            }
        }
        self.flush();
    }

    fn run_until(&mut self, deadline: Instant) {
        self.flush();
        while self.next_wakeup() <= deadline {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    fn directors(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| self.nodes[i].up && self.role(i) == Role::Director)
            .collect()
    }

    /// The first time at or after `since` that node `i` became `to`.
    fn became(&self, i: usize, to: Role, since: Instant) -> Option<(Instant, Reason)> {
        self.nodes[i].events.iter().find_map(|(t, e)| match e {
            Event::RoleChanged { to: r, reason, .. } if *r == to && *t >= since => {
                Some((*t, *reason))
            }
            _ => None,
        })
    }

    fn role_changes_since(&self, i: usize, since: Instant) -> usize {
        self.nodes[i]
            .events
            .iter()
            .filter(|(t, e)| *t >= since && matches!(e, Event::RoleChanged { .. }))
            .count()
    }

    fn announced_since(&self, i: usize, since: Instant) -> bool {
        self.nodes[i]
            .events
            .iter()
            .any(|(t, e)| *t >= since && *e == Event::Announce)
    }

    /// Run until settled with `i` the director, and return the time.
    fn settle_with_director(&mut self, i: usize) -> Instant {
        self.run_for(3 * DEAD_AFTER);
        assert_eq!(self.directors(), vec![i], "settled director");
        assert_eq!(self.role(1 - i), Role::Standby);
        self.now
    }
}

#[test]
fn simultaneous_start_elects_exactly_one_director_quickly() {
    for seed in 0..8 {
        let mut pair = Pair::default_pair(seed);
        pair.run_for(3 * DEAD_AFTER);
        assert_eq!(pair.directors(), vec![0], "seed {seed}");
        assert_eq!(pair.role(1), Role::Standby);
        // Each heard the other at once: decided by rank, not by timeout,
        // after the challenges crossed (first heartbeat, challenge, echo).
        let (t, reason) = pair.became(0, Role::Director, pair.epoch).unwrap();
        assert_eq!(reason, Reason::WonElection);
        assert!(
            t <= pair.at(3 * LATENCY),
            "became director at {:?}",
            t - pair.epoch
        );
        let (_, reason) = pair.became(1, Role::Standby, pair.epoch).unwrap();
        assert_eq!(reason, Reason::LostElection);
        assert_eq!(pair.role_changes_since(0, pair.epoch), 1);
        assert_eq!(pair.role_changes_since(1, pair.epoch), 1);
        assert_eq!(pair.el(0).term(), 1);
        assert_eq!(pair.el(1).term(), 1, "standby adopts the director's term");
        for (i, peer) in [(0, B), (1, A)] {
            let ups = pair.nodes[i]
                .events
                .iter()
                .filter(|(_, e)| *e == Event::PeerUp { peer })
                .count();
            assert_eq!(ups, 1);
        }
    }
}

#[test]
fn equal_priorities_tie_break_by_higher_address() {
    let mut pair = Pair::new(1, params(A, 100), params(B, 100));
    pair.run_for(3 * DEAD_AFTER);
    assert_eq!(pair.directors(), vec![1]);
}

#[test]
fn simultaneous_start_with_loss_elects_one_director() {
    for seed in 0..10 {
        let mut pair = Pair::default_pair(seed);
        pair.loss = 0.2;
        pair.run_for(3 * DEAD_AFTER);
        assert_eq!(pair.directors(), vec![0], "seed {seed}");
        assert_eq!(pair.role(1), Role::Standby, "seed {seed}");
    }
}

#[test]
fn staggered_start_first_node_directs_and_keeps_the_role() {
    // The better node (A) starts late: without preempt it must stay standby.
    let mut pair = Pair::default_pair(3);
    pair.stop(0);
    pair.run_for(Duration::from_secs(3));
    assert_eq!(pair.directors(), vec![1]);
    let (t, reason) = pair.became(1, Role::Director, pair.epoch).unwrap();
    assert_eq!(reason, Reason::NoDirectorHeard);
    assert_eq!(t, pair.at(DEAD_AFTER));

    let restart = pair.now;
    pair.restart(0, 2_000);
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.directors(), vec![1]);
    assert_eq!(pair.role(0), Role::Standby);
    assert_eq!(
        pair.became(0, Role::Standby, restart).unwrap().1,
        Reason::DirectorHeard
    );
    assert_eq!(pair.role_changes_since(1, restart), 0);
}

#[test]
fn short_stagger_still_one_director() {
    for (seed, stagger_ms) in [(1, 50), (2, 300), (3, 700), (4, 999), (5, 1001)] {
        let mut pair = Pair::default_pair(seed);
        pair.loss = 0.2;
        pair.stop(1);
        pair.run_for(Duration::from_millis(stagger_ms));
        pair.restart(1, 1_000);
        pair.run_for(Duration::from_secs(5));
        assert_eq!(
            pair.directors().len(),
            1,
            "seed {seed} stagger {stagger_ms}"
        );
        let settled = pair.now;
        pair.run_for(Duration::from_secs(30));
        assert_eq!(pair.role_changes_since(0, settled), 0);
        assert_eq!(pair.role_changes_since(1, settled), 0);
    }
}

#[test]
fn silent_director_replaced_within_dead_after_plus_interval() {
    for (seed, loss) in [(1, 0.0), (2, 0.2), (3, 0.2), (4, 0.2)] {
        let mut pair = Pair::default_pair(seed);
        pair.loss = loss;
        pair.settle_with_director(0);
        let silenced = pair.now;
        pair.stop(0);
        pair.run_for(2 * DEAD_AFTER);
        let (t, reason) = pair.became(1, Role::Director, silenced).unwrap();
        assert_eq!(reason, Reason::PeerDead);
        assert!(
            t - silenced <= DEAD_AFTER + INTERVAL,
            "seed {seed}: took {:?}",
            t - silenced
        );
        assert!(pair.nodes[1]
            .events
            .iter()
            .any(|(_, e)| *e == Event::PeerLost { peer: A }));
        assert_eq!(pair.el(1).term(), 2);
    }
}

#[test]
fn no_flapping_at_20_percent_loss_for_10_minutes() {
    for seed in [11, 22, 33, 44] {
        let mut pair = Pair::default_pair(seed);
        pair.loss = 0.2;
        let settled = pair.settle_with_director(0);
        pair.run_for(Duration::from_secs(600));
        assert_eq!(pair.role_changes_since(0, settled), 0, "seed {seed}");
        assert_eq!(pair.role_changes_since(1, settled), 0, "seed {seed}");
        assert_eq!(pair.directors(), vec![0]);
        let c = pair.el(1).counters().clone();
        // ~6000 heartbeats each way, a fifth of them lost.
        assert!(c.received > 4_000 && c.received < 5_500, "{c:?}");
        assert_eq!(c.dropped_replay + c.dropped_auth, 0);
    }
}

#[test]
fn healed_partition_leaves_one_director_and_winner_announces() {
    for (seed, loss) in [(5, 0.0), (6, 0.2), (7, 0.2)] {
        let mut pair = Pair::default_pair(seed);
        pair.loss = loss;
        pair.settle_with_director(0);
        pair.partitioned = true;
        pair.run_for(Duration::from_secs(5));
        assert_eq!(pair.directors(), vec![0, 1], "split brain during partition");
        let b_term = pair.el(1).term();

        let healed = pair.now;
        pair.partitioned = false;
        pair.run_for(DEAD_AFTER);
        assert_eq!(pair.directors(), vec![0], "seed {seed}");
        let (_, reason) = pair.became(1, Role::Standby, healed).unwrap();
        assert_eq!(reason, Reason::HigherPriorityDirector);
        assert!(pair.announced_since(0, healed), "winner re-announces");
        assert!(!pair.announced_since(1, healed));
        assert_eq!(pair.role_changes_since(0, healed), 0);
        assert!(pair.el(0).term() > b_term, "winner's claim is the newest");
        assert_eq!(pair.el(1).term(), pair.el(0).term());

        let settled = pair.now;
        pair.run_for(Duration::from_secs(30));
        assert_eq!(pair.role_changes_since(0, settled), 0);
        assert_eq!(pair.role_changes_since(1, settled), 0);
    }
}

#[test]
fn replayed_heartbeats_change_nothing_and_are_counted() {
    let mut pair = Pair::default_pair(8);
    pair.settle_with_director(0);
    // Record A's director heartbeats, then let A die and B take over.
    let recorded: Vec<Vec<u8>> = pair
        .wire_log
        .iter()
        .filter(|(to, _)| *to == 1)
        .map(|(_, b)| b.clone())
        .collect();
    pair.stop(0);
    pair.run_for(2 * DEAD_AFTER);
    assert_eq!(pair.directors(), vec![1]);

    let before_role_changes = pair.role_changes_since(1, pair.epoch);
    let before_peers = pair.el(1).peers();
    let before = pair.el(1).counters().clone();
    for bytes in &recorded {
        pair.deliver(1, bytes);
    }
    pair.run_for(DEAD_AFTER);
    let after = pair.el(1).counters().clone();
    assert_eq!(
        after.dropped_replay - before.dropped_replay,
        recorded.len() as u64
    );
    assert_eq!(after.received, before.received);
    assert_eq!(pair.role(1), Role::Director);
    assert_eq!(pair.role_changes_since(1, pair.epoch), before_role_changes);
    assert_eq!(pair.el(1).peers(), before_peers, "A stays dead");
    assert!(!pair.el(1).peers()[0].alive);

    // After A restarts with a new boot, its old boot's traffic is stale.
    pair.restart(0, 5_000);
    pair.run_for(DEAD_AFTER);
    let before = pair.el(1).counters().clone();
    for bytes in &recorded {
        pair.deliver(1, bytes);
    }
    let after = pair.el(1).counters().clone();
    assert_eq!(after.unverified - before.unverified, recorded.len() as u64);
    assert_eq!(pair.role(1), Role::Director);
    assert_eq!(pair.role(0), Role::Standby);
}

#[test]
fn forged_heartbeats_change_nothing_and_are_counted() {
    let mut pair = Pair::default_pair(9);
    pair.settle_with_director(0);
    let now = pair.now;
    let forged = HeartbeatRepr {
        cluster_id: CLUSTER,
        node: B,
        boot_id: u64::MAX,
        seq: u64::MAX,
        term: 1_000,
        priority: 255,
        effective_priority: 255,
        role: WireRole::Director,
        backends_up: 0,
        backends_total: 0,
        sync_pos: 0,
        challenge: 0,
        echo: 0,
    };
    let mut with_wrong_key = Vec::new();
    forged.emit(b"not the cluster key", &mut with_wrong_key);
    // A heartbeat from B that A would accept (right key, B's boot, a fresh
    // seq), with one bit flipped: director (2) becomes leaving (3).
    let mut genuine = Vec::new();
    HeartbeatRepr {
        seq: 1_000_000,
        boot_id: 1_000,
        ..forged.clone()
    }
    .emit(KEY, &mut genuine);
    assert!(HeartbeatRepr::parse(&genuine, KEY).is_ok());
    let mut flipped = genuine.clone();
    flipped[42] ^= 0x01;

    let before_term = pair.el(0).term();
    let before_peers = pair.el(0).peers();
    for bytes in [&with_wrong_key, &flipped] {
        pair.deliver(0, bytes);
    }
    assert_eq!(pair.el(0).counters().dropped_auth, 2);
    assert_eq!(pair.el(0).peers(), before_peers);
    assert_eq!(pair.el(0).term(), before_term);
    assert_eq!(pair.now, now);
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.directors(), vec![0]);
    assert_eq!(pair.role_changes_since(0, now), 0);
    assert_eq!(pair.role_changes_since(1, now), 0);
}

#[test]
fn leave_hands_over_within_one_interval_plus_latency() {
    let mut pair = Pair::default_pair(10);
    pair.settle_with_director(0);
    let left = pair.now;
    pair.el(0).leave(left);
    pair.run_for(INTERVAL + LATENCY);
    assert_eq!(pair.role(0), Role::Leaving);
    let (t, reason) = pair.became(1, Role::Director, left).expect("B took over");
    assert_eq!(reason, Reason::PeerLeaving);
    assert!(t - left <= INTERVAL + LATENCY);
    assert_eq!(pair.el(0).effective_priority(), 0);

    // A leaving node never takes the role back, even after B dies.
    pair.run_for(Duration::from_secs(2));
    pair.stop(1);
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.role(0), Role::Leaving);
    assert!(pair.directors().is_empty());
}

#[test]
fn standby_leaving_does_not_disturb_director() {
    let mut pair = Pair::default_pair(12);
    let settled = pair.settle_with_director(0);
    pair.el(1).leave(settled);
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.directors(), vec![0]);
    assert_eq!(pair.role_changes_since(0, settled), 0);
}

#[test]
fn failover_hands_over_within_one_interval_plus_latency() {
    for (seed, loss) in [(13, 0.0), (14, 0.2)] {
        let mut pair = Pair::default_pair(seed);
        pair.loss = loss;
        pair.settle_with_director(0);
        let at = pair.now;
        let old_term = pair.el(0).term();
        assert!(pair.el(0).failover(at));
        assert_eq!(pair.role(0), Role::Standby);
        pair.run_for(DEAD_AFTER);
        let (t, reason) = pair.became(1, Role::Director, at).expect("B took over");
        assert_eq!(reason, Reason::PeerHandoff);
        if loss == 0.0 {
            assert!(t - at <= INTERVAL + LATENCY, "took {:?}", t - at);
        }
        let (_, reason) = pair.became(0, Role::Standby, at).unwrap();
        assert_eq!(reason, Reason::AdminFailover);

        // The better node does not snatch the role back (no preempt).
        let settled = pair.now;
        pair.run_for(Duration::from_secs(30));
        assert_eq!(pair.directors(), vec![1], "seed {seed}");
        assert_eq!(pair.role_changes_since(0, settled), 0);
        assert_eq!(pair.role_changes_since(1, settled), 0);
        assert_eq!(pair.el(1).term(), old_term + 1);
        assert_eq!(pair.el(0).term(), old_term + 1);
    }
}

#[test]
fn failover_refused_without_live_eligible_standby() {
    let mut pair = Pair::default_pair(15);
    pair.settle_with_director(0);
    let now = pair.now;
    assert!(!pair.el(1).failover(now), "a standby cannot fail over");
    pair.stop(1);
    pair.run_for(2 * DEAD_AFTER);
    let now = pair.now;
    assert!(!pair.el(0).failover(now));
    assert_eq!(pair.role(0), Role::Director);
}

fn restarted_better_node(preempt: bool) -> Pair {
    let mut pa = params(A, 150);
    let mut pb = params(B, 100);
    pa.preempt = preempt;
    pb.preempt = preempt;
    let mut pair = Pair::new(16, pa, pb);
    pair.settle_with_director(0);
    pair.stop(0);
    pair.run_for(2 * DEAD_AFTER);
    assert_eq!(pair.directors(), vec![1]);
    pair.restart(0, 2_000);
    pair
}

#[test]
fn without_preempt_restarted_better_node_stays_standby() {
    let mut pair = restarted_better_node(false);
    let restarted = pair.now;
    pair.run_for(Duration::from_secs(30));
    assert_eq!(pair.directors(), vec![1]);
    assert_eq!(pair.role(0), Role::Standby);
    assert_eq!(pair.role_changes_since(1, restarted), 0);
}

#[test]
fn with_preempt_restarted_better_node_takes_over() {
    let mut pair = restarted_better_node(true);
    let restarted = pair.now;
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.directors(), vec![0]);
    assert_eq!(
        pair.became(0, Role::Director, restarted).unwrap().1,
        Reason::Preempt
    );
    assert_eq!(
        pair.became(1, Role::Standby, restarted).unwrap().1,
        Reason::HigherPriorityDirector
    );
    assert!(pair.announced_since(0, restarted));
    let settled = pair.now;
    pair.run_for(Duration::from_secs(30));
    assert_eq!(pair.role_changes_since(0, settled), 0);
    assert_eq!(pair.role_changes_since(1, settled), 0);
}

fn with_ping(priority_a: u8) -> Pair {
    let mut pa = params(A, priority_a);
    pa.ping_configured = true;
    Pair::new(17, pa, params(B, 100))
}

#[test]
fn ping_failure_keeps_node_from_ever_directing() {
    let mut pair = with_ping(150);
    let start = pair.now;
    pair.el(0).set_ping_ok(start, false);
    pair.run_for(3 * DEAD_AFTER);
    assert_eq!(
        pair.directors(),
        vec![1],
        "the worse but eligible node directs"
    );
    assert_eq!(pair.el(0).effective_priority(), 0);
    pair.stop(1);
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.role(0), Role::Standby);
    assert!(pair.became(0, Role::Director, start).is_none());

    // Alone from the start, too.
    let mut pair = with_ping(150);
    let start = pair.now;
    pair.el(0).set_ping_ok(start, false);
    pair.stop(1);
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.role(0), Role::Standby);
    assert_eq!(
        pair.became(0, Role::Standby, start).unwrap().1,
        Reason::PingLost
    );
}

#[test]
fn director_losing_ping_hands_over_and_may_return_only_by_preempt() {
    let mut pair = with_ping(150);
    pair.settle_with_director(0);
    let lost = pair.now;
    pair.el(0).set_ping_ok(lost, false);
    pair.run_for(INTERVAL + LATENCY);
    assert_eq!(pair.directors(), vec![1]);
    assert_eq!(
        pair.became(0, Role::Standby, lost).unwrap().1,
        Reason::PingLost
    );
    let recovered = pair.now;
    pair.el(0).set_ping_ok(recovered, true);
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.directors(), vec![1], "no preempt: B keeps the role");
}

#[test]
fn ping_lost_director_without_eligible_peer_keeps_role() {
    let mut pair = with_ping(150);
    pair.settle_with_director(0);
    pair.stop(1);
    pair.run_for(2 * DEAD_AFTER);
    let lost = pair.now;
    pair.el(0).set_ping_ok(lost, false);
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.role(0), Role::Director, "better than nobody");
}

#[test]
fn service_down_director_hands_over_without_preempt() {
    // 150 halves to 75: below B (100) in one case, still above B (50) in the
    // other; a healthy peer takes over either way and nothing flaps.
    for b_priority in [100, 50] {
        let mut pair = Pair::new(18, params(A, 150), params(B, b_priority));
        pair.settle_with_director(0);
        let down = pair.now;
        pair.el(0).set_service_ok(down, false);
        assert_eq!(pair.el(0).effective_priority(), 75);
        pair.run_for(INTERVAL + LATENCY);
        assert_eq!(pair.directors(), vec![1], "B {b_priority}");
        assert_eq!(
            pair.became(0, Role::Standby, down).unwrap().1,
            Reason::ServiceDown
        );
        assert_eq!(
            pair.became(1, Role::Director, down).unwrap().1,
            Reason::PeerHandoff
        );
        let settled = pair.now;
        pair.run_for(Duration::from_secs(30));
        assert_eq!(pair.role_changes_since(0, settled), 0);
        assert_eq!(pair.role_changes_since(1, settled), 0);
    }
}

#[test]
fn service_down_director_keeps_role_when_peer_also_down() {
    let mut pair = Pair::default_pair(19);
    pair.settle_with_director(0);
    let now = pair.now;
    pair.el(1).set_service_ok(now, false);
    pair.run_for(Duration::from_secs(1));
    let now = pair.now;
    pair.el(0).set_service_ok(now, false);
    pair.run_for(Duration::from_secs(10));
    assert_eq!(pair.directors(), vec![0]);
}

// ---- direct checks on one machine ----

fn heartbeat_from(node: Ipv4Addr, boot_id: u64, seq: u64, role: WireRole) -> HeartbeatRepr {
    HeartbeatRepr {
        cluster_id: CLUSTER,
        node,
        boot_id,
        seq,
        term: 0,
        priority: 100,
        effective_priority: 100,
        role,
        backends_up: 1,
        backends_total: 2,
        sync_pos: 9,
        challenge: 0,
        echo: 0,
    }
}

/// The challenge `el` last put to its peer in a heartbeat.
fn last_challenge(el: &mut Election) -> u64 {
    let mut c = 0;
    while let Some((_, hb)) = el.poll_transmit() {
        c = hb.challenge;
    }
    c
}

/// Make `el` accept boot `boot_id` of B: its first heartbeat draws a
/// challenge, which the second (seq `seq`) echoes.
fn verified(el: &mut Election, now: Instant, boot_id: u64, seq: u64) {
    let first = heartbeat_from(B, boot_id, seq - 1, WireRole::Standby);
    assert_eq!(el.handle_heartbeat(now, &first), Err(Drop::Stale));
    let nonce = last_challenge(el);
    assert_ne!(nonce, 0, "an unverified boot is challenged");
    let answer = HeartbeatRepr {
        echo: nonce,
        ..heartbeat_from(B, boot_id, seq, WireRole::Standby)
    };
    assert_eq!(el.handle_heartbeat(now, &answer), Ok(()));
}

#[test]
fn drops_are_classified_and_counted() {
    let t0 = Instant::now();
    let mut el = Election::new(params(A, 150), t0);
    verified(&mut el, t0, 10, 5);
    let ok = heartbeat_from(B, 10, 5, WireRole::Standby);
    let cases = [
        (
            HeartbeatRepr {
                cluster_id: 2,
                ..ok.clone()
            },
            Drop::WrongCluster,
        ),
        (heartbeat_from(A, 10, 6, WireRole::Standby), Drop::SelfEcho),
        (
            heartbeat_from(Ipv4Addr::new(198, 18, 0, 9), 10, 6, WireRole::Standby),
            Drop::UnknownPeer,
        ),
        (ok.clone(), Drop::Replay),
        (heartbeat_from(B, 10, 4, WireRole::Standby), Drop::Replay),
        (heartbeat_from(B, 9, 99, WireRole::Director), Drop::Stale),
    ];
    for (msg, want) in &cases {
        assert_eq!(el.handle_heartbeat(t0, msg), Err(*want), "{msg:?}");
    }
    el.note_auth_failure();
    let c = el.counters();
    assert_eq!(c.received, 1);
    assert_eq!(c.dropped_wrong_cluster, 1);
    assert_eq!(c.dropped_self_echo, 1);
    assert_eq!(c.dropped_unknown_peer, 1);
    assert_eq!(c.dropped_replay, 2);
    // The first heartbeat of boot 10 (before its answer) and boot 9.
    assert_eq!(c.unverified, 2);
    assert_eq!(c.dropped_auth, 1);
    assert_eq!((c.challenges_sent, c.boots_verified), (2, 1));
    // Next seq of the same boot is accepted; another boot, newer or older,
    // only once it answered a challenge.
    assert_eq!(
        el.handle_heartbeat(t0, &heartbeat_from(B, 10, 6, WireRole::Standby)),
        Ok(())
    );
    assert_eq!(
        el.handle_heartbeat(t0, &heartbeat_from(B, 11, 1, WireRole::Standby)),
        Err(Drop::Stale)
    );
    let peer = &el.peers()[0];
    assert_eq!((peer.boot_id, peer.sync_pos, peer.backends_up), (10, 9, 1));
    verified(&mut el, t0, 3, 2);
    let peer = &el.peers()[0];
    assert_eq!(peer.boot_id, 3);
}

#[test]
fn own_address_and_duplicates_in_peer_list_are_ignored() {
    let t0 = Instant::now();
    let mut p = params(A, 150);
    p.peers = vec![B, A, B];
    let mut el = Election::new(p, t0);
    assert_eq!(el.peers().len(), 1);
    let mut dsts = Vec::new();
    while let Some((dst, _)) = el.poll_transmit() {
        dsts.push(dst);
    }
    assert_eq!(dsts, vec![B]);
}

#[test]
fn heartbeats_carry_state_and_strictly_increasing_seq() {
    let t0 = Instant::now();
    let mut el = Election::new(params(A, 150), t0);
    el.set_health_summary(3, 2);
    el.set_sync_pos(77);
    let (dst, first) = el.poll_transmit().expect("a first heartbeat at once");
    assert_eq!(dst, B);
    assert_eq!(first.role, WireRole::Starting);
    assert!(el.poll_transmit().is_none());
    assert_eq!(el.poll_timeout(), t0 + INTERVAL);

    el.handle_timeout(t0 + INTERVAL);
    let (_, second) = el.poll_transmit().unwrap();
    assert!(second.seq > first.seq);
    assert_eq!((second.backends_up, second.backends_total), (2, 2));
    assert_eq!(second.sync_pos, 77);
    assert_eq!(second.priority, 150);
    assert_eq!(el.counters().sent, 2);

    // Alone, the start deadline makes us director, with an extra heartbeat.
    let mut t = t0 + INTERVAL;
    while el.role() == Role::Starting {
        t = el.poll_timeout();
        el.handle_timeout(t);
    }
    assert_eq!(t, t0 + DEAD_AFTER);
    assert_eq!(el.role(), Role::Director);
    let mut last = second.seq;
    let mut directors = 0;
    while let Some((_, hb)) = el.poll_transmit() {
        assert!(hb.seq > last);
        last = hb.seq;
        directors += usize::from(hb.role == WireRole::Director);
    }
    assert_eq!(directors, 1, "stale queued heartbeats are replaced");
    assert_eq!(
        el.poll_event(),
        Some(Event::RoleChanged {
            from: Role::Starting,
            to: Role::Director,
            term: 1,
            reason: Reason::NoDirectorHeard
        })
    );
}

#[test]
fn role_and_reason_display() {
    assert_eq!(Role::Director.to_string(), "director");
    assert_eq!(
        serde_json::to_string(&Role::Standby).unwrap(),
        "\"standby\""
    );
    assert_eq!(Reason::PeerDead.to_string(), "peer dead");
    assert_eq!(Drop::Replay.to_string(), "replayed sequence number");
}

// ---- boots that do not grow: challenge and response ----

#[test]
fn node_restarted_with_a_lower_boot_id_rejoins_after_the_challenge() {
    for (restarted, boot) in [(1, 3), (0, 3), (1, 1_000)] {
        let mut pair = Pair::default_pair(40);
        pair.settle_with_director(0);
        let verified_before = pair.el(1 - restarted).counters().boots_verified;
        // Its clock or boot counter went back (or repeated): the old rule
        // dropped such a boot as stale for as long as the peer ran.
        pair.stop(restarted);
        pair.run_for(Duration::from_millis(300));
        pair.restart(restarted, boot);
        let back = pair.now;
        let other = 1 - restarted;
        // Heard again within a few round trips, not after dead_after.
        while pair.el(other).peers()[0].boot_id != boot {
            pair.run_for(LATENCY);
            assert!(pair.now - back <= 4 * LATENCY, "boot {boot} not accepted");
        }
        pair.run_for(3 * DEAD_AFTER);
        assert_eq!(pair.directors(), vec![0], "node {restarted} boot {boot}");
        assert_eq!(pair.role(1), Role::Standby);
        let peer = &pair.el(other).peers()[0];
        assert!(peer.alive);
        assert_eq!(peer.boot_id, boot);
        assert_eq!(
            pair.el(other).counters().boots_verified,
            verified_before + 1
        );
    }
}

#[test]
fn replayed_old_boot_and_replayed_answers_are_rejected() {
    let mut pair = Pair::default_pair(41);
    pair.settle_with_director(0);
    // Everything A's first boot sent to B, answers to B's challenges included.
    let boot1: Vec<Vec<u8>> = pair
        .wire_log
        .iter()
        .filter(|(to, _)| *to == 1)
        .map(|(_, b)| b.clone())
        .collect();
    assert!(boot1
        .iter()
        .any(|b| HeartbeatRepr::parse(b, KEY).unwrap().echo != 0));
    // A restarts with a lower boot id and is accepted again.
    pair.stop(0);
    pair.run_for(Duration::from_millis(200));
    let restart_mark = pair.wire_log.len();
    pair.restart(0, 5);
    pair.run_for(3 * DEAD_AFTER);
    assert_eq!(pair.el(1).peers()[0].boot_id, 5);
    let log_mark = pair.wire_log.len();
    pair.run_for(DEAD_AFTER);
    let boot5: Vec<Vec<u8>> = pair.wire_log[restart_mark..log_mark]
        .iter()
        .filter(|(to, _)| *to == 1)
        .map(|(_, b)| b.clone())
        .collect();

    // Replays of the higher old boot: not accepted, whatever they echo.
    let peers = pair.el(1).peers();
    let before = pair.el(1).counters().clone();
    for b in &boot1 {
        pair.deliver(1, b);
    }
    let after = pair.el(1).counters().clone();
    assert_eq!(after.received, before.received);
    assert_eq!(after.unverified - before.unverified, boot1.len() as u64);
    assert_eq!(pair.el(1).peers(), peers);

    // Replays of the current boot's answer: replays by sequence number.
    let before = pair.el(1).counters().clone();
    for b in &boot5 {
        pair.deliver(1, b);
    }
    let after = pair.el(1).counters().clone();
    assert_eq!(after.received, before.received);
    assert_eq!(
        after.dropped_replay - before.dropped_replay,
        boot5.len() as u64
    );

    // Kill A for good and restart B: a fresh B has no window at all, and
    // all of A's recorded traffic, answers included, echoes nonces of B's
    // earlier process. A stays dead and B directs.
    pair.stop(0);
    pair.restart(1, 77);
    for b in boot1.iter().chain(&boot5) {
        pair.deliver(1, b);
    }
    pair.run_for(DEAD_AFTER / 2);
    for b in boot1.iter().chain(&boot5) {
        pair.deliver(1, b);
    }
    pair.run_for(2 * DEAD_AFTER);
    assert_eq!(pair.el(1).counters().received, 0);
    assert!(!pair.el(1).peers()[0].alive);
    assert_eq!(pair.directors(), vec![1]);
}

#[test]
fn a_replayed_challenge_does_not_disturb_a_live_pair() {
    let mut pair = Pair::default_pair(42);
    pair.settle_with_director(0);
    let old: Vec<Vec<u8>> = pair
        .wire_log
        .iter()
        .filter(|(to, _)| *to == 1)
        .map(|(_, b)| b.clone())
        .collect();
    pair.stop(0);
    pair.run_for(Duration::from_millis(100));
    pair.restart(0, 2);
    pair.run_for(3 * DEAD_AFTER);
    let settled = pair.now;
    // Old-boot traffic replayed again and again while both run: B
    // challenges, A answers in its ongoing boot, nothing else happens.
    for _ in 0..20 {
        for b in old.iter().take(5) {
            pair.deliver(1, b);
        }
        pair.run_for(INTERVAL);
    }
    pair.run_for(3 * DEAD_AFTER);
    assert_eq!(pair.directors(), vec![0]);
    assert_eq!(pair.role_changes_since(0, settled), 0);
    assert_eq!(pair.role_changes_since(1, settled), 0);
    assert!(pair.el(1).peers()[0].alive);
    assert_eq!(pair.el(1).peers()[0].boot_id, 2);
}

#[test]
fn peer_sync_position_from_heartbeats() {
    let mut pair = Pair::default_pair(43);
    pair.settle_with_director(0);
    let stream = (5 << 20) | 1;
    let sent = crate::sync::position(stream, 12);
    pair.el(0).set_sync_pos(sent);
    pair.el(1).set_sync_pos(crate::sync::position(stream, 11));
    pair.run_for(2 * INTERVAL);
    assert_eq!(pair.el(1).peers()[0].sync_pos, sent, "director's position");
    assert!(!pair.el(0).peer_synced_to(sent));
    pair.el(1).set_sync_pos(crate::sync::position(stream, 12));
    pair.run_for(2 * INTERVAL);
    assert!(pair.el(0).peer_synced_to(sent));
    // A dead peer confirms nothing.
    pair.stop(1);
    pair.run_for(2 * DEAD_AFTER);
    assert!(!pair.el(0).peer_synced_to(sent));
}
