//! Two control loops under simulated time, their datagrams carried in
//! memory: the decisions the loop makes on signals, inputs and reports
//! (handover, failover, ping, flood events, the drain set), without
//! sockets, threads or the wall clock.
use super::*;
use crate::dataplane::Control;
use crate::election::Params;
use crate::forward::FloodEvent;
use crate::store::Store;
use std::collections::VecDeque;

use super::super::ctl::State;
use super::super::fixture::{Dir, CONFIG};
use super::super::inbox::{self, Notify};

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const STEP: Duration = Duration::from_millis(10);

struct Node {
    lp: ControlLoop<'static>,
    ctl: Arc<Ctl>,
    shared: Arc<Shared>,
    notify: Notify,
    inputs: Receiver<Input>,
    reports: Receiver<Report>,
    /// The loop returned false: it would end now.
    ended: bool,
}

struct Pair {
    nodes: [Node; 2],
    now: Instant,
    /// Datagrams in flight: (to, from, bytes).
    wire: VecDeque<(Ipv4Addr, Ipv4Addr, Vec<u8>)>,
    _dir: Dir,
}

fn node(cfg: &Arc<Config>, dir: &std::path::Path, idx: usize, now: Instant) -> Node {
    let me = *cfg.nodes[idx].address.get_ref();
    let peer = *cfg.nodes[1 - idx].address.get_ref();
    let priority = cfg.nodes[idx].priority;
    let cluster_id = u32::from(cfg.first_vip()) ^ (1 << 24);
    let keys = config::read_keys(cfg.cluster.key_file.get_ref()).unwrap();
    let election = Election::new(
        Params {
            me,
            peers: vec![peer],
            cluster_id,
            boot_id: 1000 + idx as u64,
            nonce_seed: 7 + idx as u64,
            priority,
            interval: Duration::from_millis(100),
            dead_after: Duration::from_secs(1),
            preempt: false,
            ping_configured: true,
        },
        now,
    );
    let state = State::starting(cfg, idx, BTreeSet::new(), 0, now);
    let shared = Shared::new(Control {
        holding: Holding::No,
        snapshot: Arc::new(crate::forward::Snapshot::default()),
        announce: 0,
    })
    .unwrap();
    let store = Store::open(&dir.join(format!("state{idx}"))).unwrap();
    let (notify, inputs) = inbox::channel();
    let ctl = Arc::new(Ctl::new(
        state,
        Some(store),
        shared.clone(),
        cfg.clone(),
        dir.join("duet.toml"),
        notify.clone(),
    ));
    let host = Box::leak(Box::new(HostSetup::untouched(cfg)));
    let link_index = super::super::netlink::link("lo").unwrap().index;
    let lp = ControlLoop::new(Parts {
        host,
        cfg: cfg.clone(),
        ctl: ctl.clone(),
        shared: shared.clone(),
        election,
        keys: Arc::new(RwLock::new(keys)),
        me,
        own_mac: [2, 0, 0, 0, 0, idx as u8 + 1],
        peers: vec![peer],
        cluster_id,
        checks: None,
        // Every MAC known, so the neighbour refresh has nothing to wait for.
        macs: HashMap::from([(A, [2, 0, 0, 0, 0, 1]), (B, [2, 0, 0, 0, 0, 2])]),
        link_index,
    });
    Node {
        lp,
        ctl,
        reports: shared.reports(),
        shared,
        notify,
        inputs,
        ended: false,
    }
}

impl Pair {
    fn new() -> Pair {
        let dir = Dir::new(CONFIG);
        let cfg = dir.config();
        let now = Instant::now();
        let nodes = [
            node(&cfg, dir.path(), 0, now),
            node(&cfg, dir.path(), 1, now),
        ];
        Pair {
            nodes,
            now,
            wire: VecDeque::new(),
            _dir: dir,
        }
    }

    /// One turn of each loop as `run` makes it, with every datagram, input
    /// and report that arrived meanwhile.
    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        let inbound: Vec<_> = self.wire.drain(..).collect();
        for n in self.nodes.iter_mut().filter(|n| !n.ended) {
            if !n.lp.before_wait(now) {
                n.ended = true;
                continue;
            }
            let me = n.lp.p.me;
            for (_, from, bytes) in inbound.iter().filter(|(to, ..)| *to == me) {
                n.lp.on_datagram(now, bytes, SocketAddr::from((*from, 694)));
            }
            while let Ok(i) = n.inputs.try_recv() {
                n.lp.on_input(now, i);
            }
            while let Ok(r) = n.reports.try_recv() {
                n.lp.on_report(r);
            }
            n.lp.after_wait(now);
            for (to, bytes) in n.lp.outbox.drain(..) {
                self.wire.push_back((to, me, bytes));
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `f` holds, for at most `d`; false if it never did.
    fn until(&mut self, d: Duration, f: impl Fn(&Pair) -> bool) -> bool {
        let end = self.now + d;
        while self.now < end {
            if f(self) {
                return true;
            }
            self.step();
        }
        f(self)
    }

    fn role(&self, i: usize) -> Role {
        self.nodes[i].lp.p.election.role()
    }

    fn elected(&mut self) {
        assert!(
            self.until(Duration::from_secs(3), |p| p.role(0) == Role::Director
                && p.role(1) == Role::Standby),
            "no election: {:?} {:?}",
            self.role(0),
            self.role(1)
        );
        // The data plane is told, and the status report follows.
        assert!(self.nodes[0].shared.is_active());
        assert!(!self.nodes[1].shared.is_active());
        assert_eq!(self.nodes[0].ctl.lock().role, Role::Director);
    }

    fn events(&self, i: usize, kind: &str) -> Vec<String> {
        let store = self.nodes[i].ctl.store.as_ref().unwrap();
        store
            .events(100)
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.message)
            .collect()
    }
}

#[test]
fn the_higher_priority_loop_directs() {
    let mut p = Pair::new();
    p.elected();
    p.run_for(Duration::from_secs(2));
    assert_eq!((p.role(0), p.role(1)), (Role::Director, Role::Standby));
}

#[test]
fn a_failover_input_hands_the_role_over_once() {
    let mut p = Pair::new();
    p.elected();
    // Twice: the second, while the first is under way, changes nothing.
    p.nodes[0].notify.send(Input::Failover);
    p.nodes[0].notify.send(Input::Failover);
    assert!(p.until(Duration::from_secs(2), |p| p.role(1) == Role::Director));
    assert_eq!(p.role(0), Role::Standby);
    p.run_for(Duration::from_secs(2));
    assert_eq!((p.role(0), p.role(1)), (Role::Standby, Role::Director));
    assert!(p.events(0, "admin").iter().any(|m| m == "planned failover"));
    // Make-before-break: the old director forwarded until the successor
    // announced itself, or the grace ran out; it no longer does.
    assert!(!p.nodes[0].shared.is_active());
    assert!(p.nodes[1].shared.is_active());
}

#[test]
fn a_stop_waits_for_the_standby_to_confirm_the_table_then_leaves() {
    let mut p = Pair::new();
    p.elected();
    // A table to hand over, sent up to batch 5, which the standby's
    // heartbeats have not confirmed.
    p.nodes[0].shared.stats.lock().unwrap().connections = 5;
    p.nodes[0].shared.sync_status.lock().unwrap().position = 5;
    p.nodes[0].lp.on_signal(Signal::Term);
    // Not confirmed yet: still directing, well inside the sync wait.
    p.run_for(Duration::from_millis(200));
    assert_eq!(p.role(0), Role::Director);
    assert!(p.nodes[0].shared.is_active());
    // The sync thread's confirmation arrives as a report.
    p.nodes[0].shared.set_sync_caught_up(true);
    assert!(p.until(Duration::from_millis(100), |p| p.role(0) == Role::Leaving));
    assert!(p.until(Duration::from_secs(2), |p| p.role(1) == Role::Director));
    // No local connection on the VIP here: the leave ends the loop.
    assert!(p.until(Duration::from_secs(2), |p| p.nodes[0].ended));
}

#[test]
fn a_stop_on_the_standby_leaves_the_director_in_place() {
    let mut p = Pair::new();
    p.elected();
    p.nodes[1].lp.on_signal(Signal::Int);
    assert!(p.until(Duration::from_secs(2), |p| p.nodes[1].ended));
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.role(0), Role::Director);
}

#[test]
fn losing_the_ping_nodes_hands_the_role_over() {
    let mut p = Pair::new();
    p.elected();
    p.nodes[0].notify.send(Input::Ping(false));
    assert!(p.until(Duration::from_secs(3), |p| p.role(1) == Role::Director));
    assert_ne!(p.role(0), Role::Director);
    // Back: no preemption, the role stays where it went.
    p.nodes[0].notify.send(Input::Ping(true));
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.role(1), Role::Director);
}

#[test]
fn flood_reports_become_events() {
    let mut p = Pair::new();
    p.elected();
    let ev = FloodEvent {
        started: true,
        message: "SYN flood suspected: test".into(),
    };
    p.nodes[0].shared.report(Report::Flood(ev));
    p.step();
    assert_eq!(p.events(0, "flood"), ["SYN flood suspected: test"]);
}

#[test]
fn a_drain_reaches_the_peer_in_the_next_turns() {
    let mut p = Pair::new();
    p.elected();
    p.nodes[0].ctl.set_drain("web2", true).unwrap();
    assert!(p.until(Duration::from_millis(100), |p| {
        p.nodes[1].ctl.lock().drains.contains("web2")
    }));
    // The turn after the one that heard it builds the snapshot.
    p.step();
    // The snapshot both data planes forward by gives it no new flows.
    for n in &p.nodes {
        let snap = n.shared.snapshot();
        let web2 = snap.services[0]
            .backends
            .iter()
            .find(|b| b.name == "web2")
            .unwrap();
        assert_eq!(web2.weight, 0);
    }
}

#[test]
fn the_wait_ends_at_the_machines_deadlines() {
    let mut p = Pair::new();
    p.elected();
    let n = &mut p.nodes[0];
    // Directing: the next heartbeat is due within one send period.
    let d = n.lp.deadline();
    assert!(d <= p.now + Duration::from_millis(100), "{:?}", d - p.now);
    // A MAC missing: the neighbour table is read again soon.
    n.lp.p.macs.clear();
    n.lp.last_refresh = Some(p.now);
    assert!(n.lp.deadline() <= p.now + MISSING_MAC_PERIOD);
    // A notice about the link: it is looked at within LINK_NOTICE_DELAY,
    // not at the next periodic check.
    n.lp.last_link_check = Some(p.now);
    n.lp.link_notice = true;
    assert!(n.lp.deadline() <= p.now + LINK_NOTICE_DELAY);
    assert!(n.lp.watch_link(p.now + LINK_NOTICE_DELAY));
    assert!(!n.lp.link_notice);
    assert_eq!(n.lp.last_link_check, Some(p.now + LINK_NOTICE_DELAY));
}
