//! Ping nodes (heartbeat's `ipfail`): a node that cannot reach any of them
//! must not direct. One thread sends ICMP echoes on a raw socket and records
//! when each target last answered; the control loop hears each change of
//! the verdict.
use crate::health::icmp::{is_reply_from, open_socket, send_echo};
use rustix::net::RecvFlags;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inbox::{Input, Notify};

pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pinger {
    /// Probes every `period`; unreachable once no target answered for
    /// `lost_after`, which must be shorter than the heartbeat's dead time
    /// so a cut link is seen as "no gateway" before "no peer".
    pub fn start(
        targets: Vec<Ipv4Addr>,
        period: Duration,
        lost_after: Duration,
        notify: Notify,
    ) -> std::io::Result<Pinger> {
        let fd = open_socket(Duration::from_millis(50))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("duet-ping".into())
            .spawn(move || run(fd, targets, period, lost_after, notify, st))?;
        Ok(Pinger {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    fd: OwnedFd,
    targets: Vec<Ipv4Addr>,
    period: Duration,
    lost_after: Duration,
    notify: Notify,
    stop: Arc<AtomicBool>,
) {
    let id = (std::process::id() & 0xffff) as u16;
    let start = Instant::now();
    let mut last_reply: Option<Instant> = None;
    let mut seq: u16 = 0;
    let mut next_send = start;
    let mut buf = [0u8; 1500];
    // None until the first `lost_after` has passed or a target answered.
    let mut reachable: Option<bool> = None;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_send {
            next_send = now + period;
            seq = seq.wrapping_add(1);
            for t in &targets {
                send_echo(&fd, *t, id, seq);
            }
        }
        if let Ok((n, _)) = rustix::net::recv(&fd, &mut buf, RecvFlags::empty()) {
            if n > 0 && is_reply_from(&buf[..n], &targets, id) {
                last_reply = Some(Instant::now());
            }
        }
        let now = Instant::now();
        if let Some(ok) =
            verdict(now, start, last_reply, lost_after).filter(|v| reachable != Some(*v))
        {
            reachable = Some(ok);
            let what = if ok { "reachable" } else { "unreachable" };
            log::info!("ping nodes {targets:?} {what}");
            notify.send(Input::Ping(ok));
        }
    }
}

/// Reachable while some target answered within `lost_after`; unreachable
/// once none has for that long; unknown (None) before the first
/// `lost_after` since `start` has passed without an answer.
fn verdict(
    now: Instant,
    start: Instant,
    last_reply: Option<Instant>,
    lost_after: Duration,
) -> Option<bool> {
    match last_reply {
        Some(t) if now.duration_since(t) < lost_after => Some(true),
        _ if now.duration_since(start) < lost_after => None,
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_over_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let lost = Duration::from_millis(500);
        // (now, last reply) → verdict
        let cases = [
            (0, None, None),
            (499, None, None),
            (500, None, Some(false)),
            (100, Some(50), Some(true)),
            (549, Some(50), Some(true)),
            (550, Some(50), Some(false)),
            (2000, Some(1800), Some(true)),
        ];
        for (now, reply, want) in cases {
            assert_eq!(
                verdict(ms(now), t0, reply.map(ms), lost),
                want,
                "at {now} ms, last reply {reply:?}"
            );
        }
    }
}
