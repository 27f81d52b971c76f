//! Issue 21: the eBPF engine leaves nothing forwarding behind it, on both
//! ways the kernel attaches a tc program: a TCX link (kernels ≥ 6.6, this
//! machine), which goes with the process, and a netlink filter (kernels
//! before 6.6, the appliance's 6.1; forced here with DUET_TC_ATTACH), which
//! outlives a killed duet, stops forwarding by its lease (checked on the
//! program itself by the BPF_PROG_TEST_RUN tests) and is removed at the
//! next start.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// Programs attached to the TCX ingress of `ns`'s eth0 (BPF_PROG_QUERY;
/// there is no bpftool here).
fn tcx_programs(c: &Cluster, ns: &str) -> u32 {
    let py = r#"
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
attr = ctypes.create_string_buffer(72)
# target_ifindex, attach_type = BPF_TCX_INGRESS (46)
struct.pack_into('II', attr, 0, socket.if_nametoindex('eth0'), 46)
if libc.syscall(321, 16, attr, 72) != 0:
    raise SystemExit('BPF_PROG_QUERY: errno %d' % ctypes.get_errno())
print(struct.unpack_from('I', attr, 24)[0])
"#;
    let o = c.exec(ns, &format!("python3 -c \"{}\"", py.replace('"', "\\\"")));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "query: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.trim().parse().expect("a count")
}

/// duet's netlink tc filters on `ns`'s eth0 ingress.
fn netlink_filters(c: &Cluster, ns: &str) -> usize {
    let o = c.exec(ns, "tc filter show dev eth0 ingress");
    // One line per filter ("... bpf chain 0 handle 0x1 duet_tc
    // direct-action ... name duet_tc tag ...").
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("duet_tc"))
        .count()
}

fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serves(c: &Cluster, n: u32) {
    let v = c.client(&format!("count http://{VIP}/ {n}"));
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
}

#[test]
fn tcx_link_goes_with_a_killed_duet() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    serves(&c, 20);
    let ns = c.nodes[d].ns.clone();
    assert_eq!(c.status(d).unwrap()["dataplane"]["engine"], "ebpf");
    assert_eq!(tcx_programs(&c, &ns), 1, "duet's program on eth0");
    assert_eq!(netlink_filters(&c, &ns), 0);
    c.kill9(d);
    poll(
        "TCX link gone after kill -9",
        Duration::from_secs(5),
        || tcx_programs(&c, &ns) == 0,
    );
    c.wait_one_director(Duration::from_secs(5));
    serves(&c, 20);
}

#[test]
fn netlink_filter_fails_safe_and_is_removed_at_start() {
    let mut c = Cluster::new(Opts {
        duet_env: vec![("DUET_TC_ATTACH", "netlink")],
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    serves(&c, 20);
    let ns = c.nodes[d].ns.clone();
    assert_eq!(tcx_programs(&c, &ns), 0);
    assert_eq!(netlink_filters(&c, &ns), 1, "a netlink filter");
    // The data plane publishes its figures a few times a second.
    poll(
        "the netlink-attached program forwards",
        Duration::from_secs(3),
        || {
            c.status(d)
                .is_some_and(|s| s["dataplane"]["kernel_packets"].as_u64().unwrap_or(0) > 0)
        },
    );
    // kill -9: the filter stays (as on a 6.1 kernel) ...
    c.kill9(d);
    assert_eq!(netlink_filters(&c, &ns), 1, "a stale filter, as on 6.1");
    let other = 1 - d;
    c.wait_role(other, "director", Duration::from_secs(5))
        .expect("the peer takes over");
    serves(&c, 20);
    // ... and the next start removes it before attaching its own.
    c.start_duet(d);
    poll("restarted node up", Duration::from_secs(10), || {
        c.role(d).is_some()
    });
    assert_eq!(netlink_filters(&c, &ns), 1, "one filter, not two");
    assert!(
        c.log(d).contains("removed a stale duet tc filter"),
        "start-up cleanup not logged"
    );
    serves(&c, 20);
    // A clean exit takes its filter away.
    c.signal(d, "TERM");
    assert!(c.wait_exit(d, Duration::from_secs(10)), "duet did not exit");
    assert_eq!(netlink_filters(&c, &ns), 0, "filter left after exit");
}

/// A new connection's handshake ACK, request and close stay in kernel: the
/// director's user space sees only the SYN of each (it used to see the ACK
/// and the FIN as well).
#[test]
fn handshake_ack_and_data_are_forwarded_in_kernel() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let dp = |c: &Cluster| {
        let s = c.status(d).unwrap();
        let dp = &s["dataplane"];
        let n = |k: &str| dp[k].as_u64().unwrap_or(0);
        (n("rx_packets") - n("kernel_packets"), n("kernel_packets"))
    };
    let (user0, kernel0) = dp(&c);
    let n = 200;
    serves(&c, n);
    // Status is published a few times a second.
    std::thread::sleep(Duration::from_millis(600));
    let (user1, kernel1) = dp(&c);
    let (user, kernel) = (user1 - user0, kernel1 - kernel0);
    assert!(
        kernel >= u64::from(n),
        "{kernel} frames forwarded in kernel for {n} connections"
    );
    assert!(
        user * 2 < u64::from(n) * 3,
        "{user} frames through user space for {n} connections (the SYN only: ~{n})"
    );
}

/// Issue 21 with the flood issue's rule: past `cluster.new_flow_budget` the
/// kernel schedules new connections itself. With a budget of one a second
/// nearly every connection is scheduled in kernel; duet must still adopt
/// each (counted per backend, synced to the peer) so that a kill -9
/// takeover keeps them, and the split still spans both nodes.
#[test]
fn kernel_scheduled_flows_are_adopted_synced_and_survive_a_takeover() {
    let mut c = Cluster::new(Opts {
        cluster: "new_flow_budget = 1".into(),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    let peer = 1 - d;
    let dl = start_downloads(&c, 20, 2_000_000, 200_000);
    // Every download held by the director's engine, and by the peer's
    // from sync (the status is published a few times a second).
    let held = |i: usize| {
        c.status(i)
            .and_then(|s| s["dataplane"]["connections"].as_u64())
            .unwrap_or(0)
    };
    poll("director holds 20 flows", Duration::from_secs(15), || {
        held(d) >= 20
    });
    poll(
        "peer holds 20 synced flows",
        Duration::from_secs(15),
        || held(peer) >= 20,
    );
    let s = c.status(d).unwrap();
    assert_eq!(s["dataplane"]["engine"], "ebpf");
    let scheduled = s["dataplane"]["kernel_scheduled"].as_u64().unwrap_or(0);
    assert!(
        scheduled >= 15,
        "{scheduled} of 20 SYNs scheduled in kernel: {s}"
    );
    let per_backend: Vec<(String, u64, u64)> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_string(),
                b["total_connections"].as_u64().unwrap_or(0),
                b["active_connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let total: u64 = per_backend.iter().map(|b| b.1).sum();
    let active: u64 = per_backend.iter().map(|b| b.2).sum();
    eprintln!("kernel-scheduled: {scheduled} SYNs; per backend {per_backend:?}");
    assert!(total >= 20, "adopted flows not counted: {per_backend:?}");
    assert!(active >= 20, "adopted flows not active: {per_backend:?}");
    assert!(
        per_backend.iter().all(|b| b.1 > 0),
        "the kernel's hash used one node only: {per_backend:?}"
    );
    c.kill9(d);
    let (intact, bad) = finish_downloads(dl);
    eprintln!("kill -9 with kernel-scheduled flows: {intact}/20 downloads intact");
    assert_eq!(intact, 20, "downloads broken by the takeover: {bad:?}");
    assert_eq!(c.role(peer).as_deref(), Some("director"));
    serves(&c, 20);
}
