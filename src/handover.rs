//! Who forwards for the VIPs while the director role moves: the one place
//! that answers "does this node forward", as a machine without I/O driven
//! by explicit time.
//!
//! * **Planned handovers** (SIGTERM, `duet failover`): a director with a
//!   live standby and flows to hand over first gives connection sync up to
//!   [`SYNC_WAIT`] to confirm the table, so a takeover breaks nothing;
//!   anyone else goes at once. [`Action::Proceed`] says when.
//! * **Make-before-break step-down**: a director that loses the role keeps
//!   forwarding, silent on ARP, until the data plane sees its successor's
//!   gratuitous ARP (proof the LAN moved the virtual MAC; a heartbeat saying
//!   "director" is not) or [`STEP_DOWN_GRACE`] passes.
//!
//! The driver feeds role changes, sync confirmation and the successor's
//! announcement, calls [`Handover::handle_timeout`] by
//! [`Handover::poll_timeout`], and applies [`Handover::poll_action`].
use crate::election::Role;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A former director forwards at most this long after losing the role.
pub const STEP_DOWN_GRACE: Duration = Duration::from_millis(300);
/// A planned handover waits at most this long for the standby to confirm
/// the connection table before going ahead anyway.
pub const SYNC_WAIT: Duration = Duration::from_millis(500);

/// This node's part in holding the VIPs: what the data plane is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Holding {
    /// Not directing: the VIPs' traffic and ARP are someone else's.
    #[default]
    No,
    Directing,
    /// Handing over: still forwarding, no longer announcing, waiting for
    /// the successor's announcement.
    SteppingDown,
}

impl Holding {
    /// Whether frames for the VIPs are forwarded here.
    pub fn forwards(self) -> bool {
        self != Holding::No
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planned {
    Leave,
    Failover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go ahead with the planned handover; `confirmed` is false when the
    /// standby did not confirm the table within [`SYNC_WAIT`].
    Proceed { kind: Planned, confirmed: bool },
    /// Tell the data plane.
    Hold(Holding),
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    kind: Planned,
    deadline: Instant,
    wait_for_sync: bool,
    confirmed: bool,
    /// Our sync position when it began.
    sent: u64,
}

#[derive(Debug, Default)]
pub struct Handover {
    holding: Holding,
    grace_until: Option<Instant>,
    pending: Option<Pending>,
    actions: VecDeque<Action>,
}

impl Handover {
    pub fn new() -> Handover {
        Handover::default()
    }

    pub fn holding(&self) -> Holding {
        self.holding
    }

    /// A planned handover is under way.
    pub fn planned(&self) -> bool {
        self.pending.is_some()
    }

    /// Starts a planned handover. `table_to_hand_over`: this node directs,
    /// a live standby exists and the table holds flows, so sync gets
    /// [`SYNC_WAIT`] to catch up; `sent` is our sync position now. False
    /// when one is already under way.
    pub fn begin(
        &mut self,
        now: Instant,
        kind: Planned,
        table_to_hand_over: bool,
        sent: u64,
    ) -> bool {
        if self.pending.is_some() {
            return false;
        }
        self.pending = Some(Pending {
            kind,
            deadline: if table_to_hand_over {
                now + SYNC_WAIT
            } else {
                now
            },
            wait_for_sync: table_to_hand_over,
            confirmed: false,
            sent,
        });
        true
    }

    /// The sync position the standby must report to confirm the table,
    /// while a planned handover waits for it.
    pub fn awaited_sync(&self) -> Option<u64> {
        self.pending
            .filter(|p| p.wait_for_sync && !p.confirmed)
            .map(|p| p.sent)
    }

    /// The standby confirmed the table (an ack after the reset, or its
    /// heartbeat's position reached [`Handover::awaited_sync`]).
    pub fn handle_synced(&mut self, now: Instant) {
        if let Some(p) = self.pending.as_mut() {
            p.confirmed = true;
            p.deadline = p.deadline.min(now);
        }
    }

    /// A role change from the election.
    pub fn handle_role(&mut self, now: Instant, from: Role, to: Role) {
        if to == Role::Director {
            self.grace_until = None;
            self.hold(Holding::Directing);
        } else if from == Role::Director && self.holding.forwards() {
            self.grace_until = Some(now + STEP_DOWN_GRACE);
            self.hold(Holding::SteppingDown);
        }
    }

    /// The data plane saw the successor announce a VIP with the virtual MAC.
    pub fn handle_successor_announced(&mut self) {
        if self.holding == Holding::SteppingDown {
            self.grace_until = None;
            self.hold(Holding::No);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.grace_until.is_some_and(|t| now >= t) {
            self.grace_until = None;
            self.hold(Holding::No);
        }
        if let Some(p) = self.pending.filter(|p| now >= p.deadline) {
            self.pending = None;
            self.actions.push_back(Action::Proceed {
                kind: p.kind,
                confirmed: p.confirmed || !p.wait_for_sync,
            });
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.grace_until, self.pending.map(|p| p.deadline)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn hold(&mut self, h: Holding) {
        if self.holding != h {
            self.holding = h;
            self.actions.push_back(Action::Hold(h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(h: &mut Handover) -> Vec<Action> {
        std::iter::from_fn(|| h.poll_action()).collect()
    }

    /// Runs `h` on simulated time from `t` to `t + span` in 10 ms steps,
    /// as a driver that wakes by `poll_timeout` at the latest would; the
    /// actions with their time since `t`.
    fn run(h: &mut Handover, t: Instant, span: Duration) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        let mut now = t;
        while now <= t + span {
            h.handle_timeout(now);
            for a in drain(h) {
                out.push((now.duration_since(t).as_millis() as u64, a));
            }
            now += ms(10);
        }
        out
    }

    #[test]
    fn winning_directs_and_losing_steps_down_until_the_successor_announces() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        assert_eq!(h.holding(), Holding::No);
        h.handle_role(t0, Role::Starting, Role::Director);
        assert_eq!(drain(&mut h), [Action::Hold(Holding::Directing)]);
        h.handle_role(t0, Role::Director, Role::Standby);
        assert_eq!(drain(&mut h), [Action::Hold(Holding::SteppingDown)]);
        assert!(h.holding().forwards());
        assert_eq!(h.poll_timeout(), Some(t0 + STEP_DOWN_GRACE));
        h.handle_successor_announced();
        assert_eq!(drain(&mut h), [Action::Hold(Holding::No)]);
        assert_eq!(h.poll_timeout(), None);
        // A late announcement changes nothing.
        h.handle_successor_announced();
        assert!(drain(&mut h).is_empty());
    }

    #[test]
    fn a_silent_successor_ends_forwarding_after_the_grace() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        h.handle_role(t0, Role::Starting, Role::Director);
        h.handle_role(t0 + ms(1000), Role::Director, Role::Standby);
        drain(&mut h);
        let acts = run(&mut h, t0 + ms(1000), ms(1000));
        assert_eq!(acts, [(300, Action::Hold(Holding::No))]);
    }

    #[test]
    fn regaining_the_role_while_stepping_down_keeps_forwarding() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        h.handle_role(t0, Role::Starting, Role::Director);
        h.handle_role(t0, Role::Director, Role::Standby);
        h.handle_role(t0 + ms(100), Role::Standby, Role::Director);
        assert_eq!(
            drain(&mut h),
            [
                Action::Hold(Holding::Directing),
                Action::Hold(Holding::SteppingDown),
                Action::Hold(Holding::Directing)
            ]
        );
        assert!(
            run(&mut h, t0 + ms(100), ms(1000)).is_empty(),
            "no grace left running"
        );
        h.handle_successor_announced();
        assert_eq!(
            h.holding(),
            Holding::Directing,
            "only a stepping-down node stops"
        );
    }

    #[test]
    fn a_standby_that_never_directed_has_nothing_to_step_down_from() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        h.handle_role(t0, Role::Starting, Role::Standby);
        h.handle_role(t0, Role::Standby, Role::Leaving);
        assert!(drain(&mut h).is_empty());
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn a_planned_handover_waits_for_sync_then_goes_confirmed() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        assert!(h.begin(t0, Planned::Failover, true, 42));
        assert!(!h.begin(t0, Planned::Leave, true, 43), "one at a time");
        assert_eq!(h.awaited_sync(), Some(42));
        assert_eq!(h.poll_timeout(), Some(t0 + SYNC_WAIT));
        h.handle_timeout(t0 + ms(100));
        assert!(drain(&mut h).is_empty());
        h.handle_synced(t0 + ms(120));
        assert_eq!(h.awaited_sync(), None);
        h.handle_timeout(t0 + ms(120));
        assert_eq!(
            drain(&mut h),
            [Action::Proceed {
                kind: Planned::Failover,
                confirmed: true
            }]
        );
        assert!(!h.planned());
    }

    #[test]
    fn an_unconfirmed_table_goes_after_the_wait_and_says_so() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        h.begin(t0, Planned::Leave, true, 7);
        let acts = run(&mut h, t0, ms(1000));
        assert_eq!(
            acts,
            [(
                500,
                Action::Proceed {
                    kind: Planned::Leave,
                    confirmed: false
                }
            )]
        );
    }

    #[test]
    fn nothing_to_hand_over_goes_at_once() {
        let t0 = Instant::now();
        let mut h = Handover::new();
        h.begin(t0, Planned::Leave, false, 0);
        assert_eq!(h.awaited_sync(), None);
        assert_eq!(h.poll_timeout(), Some(t0));
        h.handle_timeout(t0);
        assert_eq!(
            drain(&mut h),
            [Action::Proceed {
                kind: Planned::Leave,
                confirmed: true
            }]
        );
    }
}
