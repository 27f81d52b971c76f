//! Issue 13: the LAN link goes away under a running duet. Carrier loss:
//! no spinning, heartbeats go on, one director after the link returns.
//! Interface deletion: no spinning, and the process exits non-zero with a
//! clear message so systemd or PID 1 starts it again.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_millis(ticks * 1000 / hz.max(1)))
}

/// Share of one core each duet used over `window`.
fn cpu_shares(c: &Cluster, window: Duration) -> Vec<f64> {
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .filter_map(|n| n.duet.as_ref().map(|d| d.id()))
        .collect();
    let before: Vec<Duration> = pids.iter().map(|p| cpu_time(*p).unwrap()).collect();
    let t = Instant::now();
    std::thread::sleep(window);
    let wall = t.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| (cpu_time(*p).unwrap_or(b) - b).as_secs_f64() / wall)
        .collect()
}

#[test]
fn carrier_loss_does_not_spin_and_heals_to_one_director() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(10));
    let port = format!("vn{}", d + 1);
    must(&format!("ip -n {} link set {port} down", c.lan));
    // The director's eth0 has no carrier now.
    std::thread::sleep(Duration::from_millis(1500));
    let shares = cpu_shares(&c, Duration::from_secs(3));
    eprintln!("CPU share of a core while the link is gone: {shares:?}");
    let log = c.log(d);
    assert!(
        log.contains("lost carrier"),
        "carrier loss not logged:\n{log}"
    );
    assert!(
        log.matches("lost carrier").count() == 1,
        "carrier loss logged more than once"
    );
    must(&format!("ip -n {} link set {port} up", c.lan));
    let one = c.wait_one_director(Duration::from_secs(10));
    // The link is checked once a second: the line may follow the election.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.log(d).contains("carrier back") {
        assert!(Instant::now() < deadline, "{}", c.log(d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = c.client(&format!("count http://{VIP}/ 10"));
    eprintln!("after healing: director web{}, {v}", one + 1);
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
    for s in shares {
        assert!(s < 0.05, "a duet used {:.1} % of a core", s * 100.0);
    }
}

#[test]
fn interface_deletion_exits_with_a_clear_message() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(10));
    let ns = c.nodes[d].ns.clone();
    must(&format!("ip -n {ns} link del eth0"));
    let t = Instant::now();
    let mut child = c.nodes[d].duet.take().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "duet did not exit after its interface was deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("exit {status} {:?} after the deletion", t.elapsed());
    assert!(!status.success(), "exit status should say it failed");
    let log = c.log(d);
    assert!(
        log.contains("interface eth0 is gone"),
        "no clear message:\n{log}"
    );
    // The other node carries on alone.
    let other = 1 - d;
    c.wait_role(other, "director", Duration::from_secs(5))
        .expect("the peer did not take over");
}
