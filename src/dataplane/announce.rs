//! Who the LAN thinks holds the VIPs: the ARP policy of the director, as a
//! machine without I/O driven by explicit time. All VIPs move together, so
//! one burst announces every one of them. It decides which ARP
//! frames are answered, when gratuitous ARPs go out (a burst at takeover,
//! then periodically, and in answer to another host's claim), and when a
//! stepping-down director sees its successor's announcement. The data-plane
//! thread sends what it says and counts.
pub use crate::handover::Holding;
use crate::wire::frame::{ArpInfo, Mac};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Gratuitous ARPs after a takeover: spaced so one lost frame is not fatal.
const BURST: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(700),
    Duration::from_millis(1500),
];
/// Re-announce well inside a switch's ~300 s MAC ageing.
const PERIOD: Duration = Duration::from_secs(60);
/// At most one answer to another host's claim this often, so a flood of
/// claims cannot make us one.
const CONFLICT_ANSWER: Duration = Duration::from_millis(100);
/// At most one warning about claims this often.
const CONFLICT_WARN: Duration = Duration::from_secs(5);

/// What to do about one ARP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpAction {
    Ignore,
    /// Answer a request for `vip` with the virtual MAC.
    Reply {
        vip: Ipv4Addr,
        to_mac: Mac,
        to_ip: Ipv4Addr,
    },
    /// Another host claims `vip`: re-announce now (`garp`, rate-limited)
    /// and warn the operator (`warn`, rate-limited). Counted either way.
    Conflict {
        vip: Ipv4Addr,
        garp: bool,
        warn: bool,
    },
    /// The successor announced the VIP with the virtual MAC: the switch
    /// has learnt it on the successor's port, so forwarding can stop.
    SuccessorAnnounced,
}

pub struct Announcer {
    vips: Vec<Ipv4Addr>,
    vmac: Mac,
    holding: Holding,
    due: Vec<Instant>,
    next_periodic: Instant,
    last_conflict_garp: Option<Instant>,
    last_conflict_warn: Option<Instant>,
}

impl Announcer {
    pub fn new(now: Instant, vips: Vec<Ipv4Addr>, vmac: Mac) -> Announcer {
        Announcer {
            vips,
            vmac,
            holding: Holding::No,
            due: Vec::new(),
            next_periodic: now + PERIOD,
            last_conflict_garp: None,
            last_conflict_warn: None,
        }
    }

    /// A change of role: taking over starts a burst; stepping down or
    /// leaving stops announcing.
    pub fn set_holding(&mut self, now: Instant, h: Holding) {
        match (self.holding, h) {
            (Holding::No, Holding::Directing | Holding::SteppingDown) => self.burst(now),
            (_, Holding::No | Holding::SteppingDown) => self.due.clear(),
            _ => {}
        }
        self.holding = h;
    }

    /// The VIPs changed (a reload): a VIP new while directing is announced
    /// at once, with the others.
    pub fn set_vips(&mut self, now: Instant, vips: Vec<Ipv4Addr>) {
        let added = vips.iter().any(|v| !self.vips.contains(v));
        self.vips = vips;
        if added && self.holding == Holding::Directing {
            self.burst(now);
        }
    }

    /// The addresses each gratuitous ARP goes out for.
    pub fn vips(&self) -> &[Ipv4Addr] {
        &self.vips
    }

    /// Asked to announce again (an operator, or the control plane after a
    /// peer came back): a fresh burst while directing.
    pub fn announce_again(&mut self, now: Instant) {
        if self.holding == Holding::Directing {
            self.burst(now);
        }
    }

    fn burst(&mut self, now: Instant) {
        self.due = BURST.iter().map(|d| now + *d).collect();
        self.next_periodic = now + PERIOD;
    }

    /// Whether a gratuitous ARP is due now; due ones are consumed (several
    /// overdue at once make one frame).
    pub fn poll_garp(&mut self, now: Instant) -> bool {
        if self.holding != Holding::Directing {
            return false;
        }
        let before = self.due.len();
        self.due.retain(|t| *t > now);
        let mut due = before > self.due.len();
        if now >= self.next_periodic {
            self.next_periodic = now + PERIOD;
            due = true;
        }
        due
    }

    /// When `poll_garp` next has something to say.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.holding != Holding::Directing {
            return None;
        }
        Some(
            self.due
                .iter()
                .copied()
                .min()
                .map_or(self.next_periodic, |d| d.min(self.next_periodic)),
        )
    }

    pub fn on_arp(&mut self, now: Instant, a: &ArpInfo) -> ArpAction {
        match self.holding {
            Holding::No => ArpAction::Ignore,
            // Our own ARP frames never come back to us: a VIP announced
            // with the virtual MAC is the successor's.
            Holding::SteppingDown
                if self.vips.contains(&a.sender_ip) && a.sender_mac == self.vmac =>
            {
                ArpAction::SuccessorAnnounced
            }
            Holding::SteppingDown => ArpAction::Ignore,
            Holding::Directing if self.vips.contains(&a.sender_ip) && a.sender_mac != self.vmac => {
                let garp = Self::due(&mut self.last_conflict_garp, now, CONFLICT_ANSWER);
                let warn = Self::due(&mut self.last_conflict_warn, now, CONFLICT_WARN);
                ArpAction::Conflict {
                    vip: a.sender_ip,
                    garp,
                    warn,
                }
            }
            Holding::Directing
                if a.op == 1
                    && self.vips.contains(&a.target_ip)
                    && !self.vips.contains(&a.sender_ip) =>
            {
                ArpAction::Reply {
                    vip: a.target_ip,
                    to_mac: a.sender_mac,
                    to_ip: a.sender_ip,
                }
            }
            Holding::Directing => ArpAction::Ignore,
        }
    }

    fn due(last: &mut Option<Instant>, now: Instant, every: Duration) -> bool {
        if last.is_some_and(|t| now.duration_since(t) < every) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
    const VMAC: Mac = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
    const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 9];
    const OTHER_MAC: Mac = [2, 0, 0, 0, 0, 0x33];

    fn arp(op: u16, sender_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> ArpInfo {
        ArpInfo {
            op,
            sender_mac,
            sender_ip,
            target_ip,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn which_frames_are_answered() {
        let request = arp(1, CLIENT_MAC, CLIENT, VIP);
        let claim = arp(2, OTHER_MAC, VIP, VIP);
        let successor = arp(1, VMAC, VIP, VIP);
        let reply = ArpAction::Reply {
            vip: VIP,
            to_mac: CLIENT_MAC,
            to_ip: CLIENT,
        };
        let first_conflict = ArpAction::Conflict {
            vip: VIP,
            garp: true,
            warn: true,
        };
        let cases: Vec<(&str, Holding, ArpInfo, ArpAction)> = vec![
            (
                "request while directing",
                Holding::Directing,
                request,
                reply,
            ),
            (
                "a reply for the VIP is not a request",
                Holding::Directing,
                arp(2, CLIENT_MAC, CLIENT, VIP),
                ArpAction::Ignore,
            ),
            (
                "request for the second VIP",
                Holding::Directing,
                arp(1, CLIENT_MAC, CLIENT, VIP2),
                ArpAction::Reply {
                    vip: VIP2,
                    to_mac: CLIENT_MAC,
                    to_ip: CLIENT,
                },
            ),
            (
                "another MAC claims the second VIP",
                Holding::Directing,
                arp(2, OTHER_MAC, VIP2, VIP2),
                ArpAction::Conflict {
                    vip: VIP2,
                    garp: true,
                    warn: true,
                },
            ),
            (
                "the successor's announcement of the second VIP",
                Holding::SteppingDown,
                arp(1, VMAC, VIP2, VIP2),
                ArpAction::SuccessorAnnounced,
            ),
            (
                "request for another address",
                Holding::Directing,
                arp(1, CLIENT_MAC, CLIENT, Ipv4Addr::new(10, 0, 0, 1)),
                ArpAction::Ignore,
            ),
            (
                "request while not directing",
                Holding::No,
                request,
                ArpAction::Ignore,
            ),
            (
                "request while stepping down: the successor answers",
                Holding::SteppingDown,
                request,
                ArpAction::Ignore,
            ),
            (
                "another MAC claims the VIP",
                Holding::Directing,
                claim,
                first_conflict,
            ),
            (
                "a probe for the VIP from another MAC is a claim too",
                Holding::Directing,
                arp(1, OTHER_MAC, VIP, VIP),
                first_conflict,
            ),
            (
                "the successor's announcement",
                Holding::SteppingDown,
                successor,
                ArpAction::SuccessorAnnounced,
            ),
            (
                "another MAC's claim while stepping down is not the successor",
                Holding::SteppingDown,
                claim,
                ArpAction::Ignore,
            ),
            (
                "a claim while not directing",
                Holding::No,
                claim,
                ArpAction::Ignore,
            ),
        ];
        let t0 = Instant::now();
        for (name, holding, frame, want) in cases {
            let mut a = Announcer::new(t0, vec![VIP, VIP2], VMAC);
            if holding == Holding::SteppingDown {
                a.set_holding(t0, Holding::Directing);
            }
            a.set_holding(t0, holding);
            assert_eq!(a.on_arp(t0, &frame), want, "{name}");
        }
    }

    #[test]
    fn a_vip_added_while_directing_is_announced_at_once_with_the_others() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, vec![VIP], VMAC);
        a.set_holding(t0, Holding::Directing);
        let mut t = t0;
        while t < t0 + ms(2_000) {
            a.poll_garp(t);
            t += ms(10);
        }
        assert_eq!(a.poll_timeout(), Some(t0 + ms(60_000)), "burst over");
        // Taking one off announces nothing; adding one starts a burst, and
        // every GARP names both.
        a.set_vips(t, vec![VIP]);
        assert_eq!(a.poll_timeout(), Some(t0 + ms(60_000)));
        a.set_vips(t, vec![VIP, VIP2]);
        assert_eq!(a.poll_timeout(), Some(t));
        assert!(a.poll_garp(t));
        assert_eq!(a.vips(), [VIP, VIP2]);
        // Not directing: nothing to announce, whatever the VIPs.
        let mut idle = Announcer::new(t0, vec![VIP], VMAC);
        idle.set_vips(t0, vec![VIP, VIP2]);
        assert_eq!(idle.poll_timeout(), None);
        assert!(!idle.poll_garp(t0));
    }

    #[test]
    fn conflicts_are_answered_and_warned_at_their_rates() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, vec![VIP], VMAC);
        a.set_holding(t0, Holding::Directing);
        let claim = arp(2, OTHER_MAC, VIP, VIP);
        let at = |a: &mut Announcer, t: Duration| a.on_arp(t0 + t, &claim);
        let c = |garp, warn| ArpAction::Conflict {
            vip: VIP,
            garp,
            warn,
        };
        assert_eq!(at(&mut a, ms(0)), c(true, true));
        assert_eq!(at(&mut a, ms(50)), c(false, false));
        assert_eq!(at(&mut a, ms(100)), c(true, false));
        assert_eq!(at(&mut a, ms(4_999)), c(true, false));
        assert_eq!(at(&mut a, ms(5_000)), c(false, true));
        assert_eq!(at(&mut a, ms(5_100)), c(true, false));
    }

    #[test]
    fn a_takeover_announces_in_a_burst_then_every_minute() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, vec![VIP], VMAC);
        assert!(!a.poll_garp(t0 + ms(120_000)), "not directing");
        assert_eq!(a.poll_timeout(), None);
        let t1 = t0 + ms(1000);
        a.set_holding(t1, Holding::Directing);
        // Polled every 10 ms for two minutes: when did it announce?
        let mut sent = Vec::new();
        let mut t = t1;
        while t < t1 + ms(125_000) {
            if a.poll_garp(t) {
                sent.push(t.duration_since(t1).as_millis() as u64);
            }
            t += ms(10);
        }
        assert_eq!(sent, vec![0, 100, 300, 700, 1500, 60_000, 120_000]);
        assert_eq!(a.poll_timeout(), Some(t1 + ms(180_000)));
    }

    #[test]
    fn overdue_announcements_make_one_frame_and_deadlines_are_exact() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, vec![VIP], VMAC);
        a.set_holding(t0, Holding::Directing);
        assert_eq!(a.poll_timeout(), Some(t0));
        assert!(a.poll_garp(t0));
        assert_eq!(a.poll_timeout(), Some(t0 + ms(100)));
        // A stalled thread wakes late: one frame for the three overdue.
        assert!(a.poll_garp(t0 + ms(800)));
        assert!(!a.poll_garp(t0 + ms(800)));
        assert_eq!(a.poll_timeout(), Some(t0 + ms(1500)));
    }

    #[test]
    fn stepping_down_stops_announcing_and_again_restarts_a_burst() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, vec![VIP], VMAC);
        a.set_holding(t0, Holding::Directing);
        assert!(a.poll_garp(t0));
        a.set_holding(t0 + ms(50), Holding::SteppingDown);
        assert!(!a.poll_garp(t0 + ms(100)), "announcing while handing over");
        assert_eq!(a.poll_timeout(), None);
        a.announce_again(t0 + ms(200));
        assert!(!a.poll_garp(t0 + ms(200)), "again while stepping down");
        a.set_holding(t0 + ms(300), Holding::No);
        a.set_holding(t0 + ms(400), Holding::Directing);
        assert!(a.poll_garp(t0 + ms(400)), "a new takeover bursts");
        // Asked again mid-burst: the burst starts over from now.
        assert!(a.poll_garp(t0 + ms(500)));
        a.announce_again(t0 + ms(550));
        assert!(a.poll_garp(t0 + ms(550)));
        assert!(!a.poll_garp(t0 + ms(600)));
        assert!(a.poll_garp(t0 + ms(650)));
    }
}
