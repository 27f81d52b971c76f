#!/usr/bin/env python3
"""The eBPF engine's background walk, measured alone: the data-plane
thread's CPU while the kernel's flow maps hold many flows and no packet
flows.

Builds the LAN of bench/run.py (namespaces db<pid>…, removed on exit),
runs the director with `engine = "ebpf"`, then leaves WALK_TCP closed TCP
flows (SYN, ACK, FIN each, crafted by bench/tcpflows.c, to a TCP service
on a port nothing listens on) and WALK_UDP UDP flows (two datagrams each,
bench/flood.c) in the kernel's maps, as a new-connection benchmark does,
and reads the `duet-dataplane` thread's utime+stime over WALK_SECONDS.
An idle window with empty maps comes first.

Environment: DUET_BIN (default target/release/duet), WALK_TCP (200000),
WALK_UDP (0), WALK_SECONDS (10), WALK_EXPIRE=1 (then wait for the closed
flows' FIN_WAIT timeout and check the kernel's maps empty out),
WALK_PERF=1 (a perf profile of the thread after the measured window, kept in
WALK_PERF_DATA if set),
WALK_REPEAT (measured windows with full maps, default 1),
WALK_OUT (a JSON file for the result). Prints one JSON line.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

TCP = int(os.environ.get("WALK_TCP", "200000"))
UDP = int(os.environ.get("WALK_UDP", "0"))
SECONDS = float(os.environ.get("WALK_SECONDS", "10"))
EXPIRE = os.environ.get("WALK_EXPIRE") == "1"
PERF = os.environ.get("WALK_PERF") == "1" and shutil.which("perf") is not None
TCP_PORT = 9001  # a TCP service whose backends have no listener
NPORTS = 1000
REPEAT = int(os.environ.get("WALK_REPEAT", "1"))

run.SKIP |= {"proxy"}
_conf = run.duet_conf


def duet_conf(addr, engine, heartbeat=run.HEARTBEAT_DEFAULT):
    return _conf(addr, engine, heartbeat) + f"""
[[service]]
port = {TCP_PORT}
protocol = "tcp"
scheduler = "rr"
serve_local = true
"""


run.duet_conf = duet_conf


def dp(t, i):
    return (t.status(i, timeout=3) or {}).get("dataplane", {})


def on_cpu_ns(pid, tid):
    """The thread's time on CPU in ns (schedstat: finer than the clock
    ticks of utime+stime)."""
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def thread_cpu(pid, tid, seconds):
    """ms of CPU a second: utime+stime (clock ticks), and schedstat."""
    c0, s0, w0 = run.proc_cpu(pid, tid), on_cpu_ns(pid, tid), time.monotonic()
    time.sleep(seconds)
    c1, s1, w1 = run.proc_cpu(pid, tid), on_cpu_ns(pid, tid), time.monotonic()
    return round((c1 - c0) * 1000 / (w1 - w0), 1), round((s1 - s0) / 1e6 / (w1 - w0), 2)


def window(t, director, pid, tid, what):
    before = dp(t, director)
    ms, sched = thread_cpu(pid, tid, SECONDS)
    after = dp(t, director)
    r = {"dataplane_ms_per_s": ms, "dataplane_schedstat_ms_per_s": sched,
         "kernel_flows": [before.get("kernel_flows"), after.get("kernel_flows")],
         "connections": [before.get("connections"), after.get("connections")],
         "rx_packets": after.get("rx_packets", 0) - before.get("rx_packets", 0)}
    run.log(f"{what}: {r}")
    return r


def main():
    if os.geteuid() != 0:
        sys.exit("bench/walk.py needs root (network namespaces, AF_PACKET)")
    run.ENGINES[:] = ["ebpf"]
    run.reap_stale()
    work = Path(tempfile.mkdtemp(prefix="duet-walk-"))
    t = run.Topo(work)
    t.engine = "ebpf"

    def on_signal(sig, frame):
        raise SystemExit(f"interrupted by signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    res = {"duet": str(run.DUET), "tcp_flows": TCP, "udp_flows": UDP, "seconds": SECONDS}
    try:
        run.sh(f"gcc -O2 -o {work / 'flood'} {run.BENCH / 'flood.c'}")
        run.sh(f"gcc -O2 -o {work / 'tcpflows'} {run.BENCH / 'tcpflows.c'}")
        t.build()
        t.setup_nodes()
        for i in range(2):
            t.start_duet(i)
        director = t.wait_director(30)
        run.wait_for(lambda: dp(t, director).get("engine"), 10, "status")
        res["engine"] = dp(t, director).get("engine")
        if res["engine"] != "ebpf":
            raise RuntimeError(f"director runs {res['engine']}, not ebpf")
        pid = t.duet_pid(director)
        tid = run.thread_id(pid, "duet-dataplane")
        time.sleep(2)
        res["empty"] = window(t, director, pid, tid, "empty maps")
        mac = run.VMAC
        filled = time.monotonic()
        if TCP:
            nsrc = (TCP + NPORTS - 1) // NPORTS
            out = t.run(t.client, f"{work / 'tcpflows'} eth0 {mac} {run.FLOOD_SRC} {nsrc} 20000 {NPORTS} "
                                  f"{run.VIP} {TCP_PORT} 2000 10", timeout=300)
            res["tcp_fill"] = json.loads(out)
            run.log(f"tcp fill: {res['tcp_fill']}")
        if UDP:
            nsrc = (UDP + NPORTS - 1) // NPORTS
            f = run.flood(t, "198.19.128.0", nsrc, NPORTS, 50_000, 2 * nsrc * NPORTS, 120, mac=mac)
            res["udp_fill"] = f
            run.log(f"udp fill: {f}")
        res["fill_seconds"] = round(time.monotonic() - filled, 1)
        # A full walk of the maps counts them: wait until the count holds.
        last, deadline = -1, time.monotonic() + 40
        while time.monotonic() < deadline:
            time.sleep(7)  # longer than one full walk
            d = dp(t, director)
            n = d.get("kernel_flows") or 0
            run.log(f"kernel_flows {n}, connections {d.get('connections')}, "
                    f"kernel_scheduled {d.get('kernel_scheduled')}, drops {d.get('drops')}")
            if n > 0 and n == last:
                break
            last = n
        res["full"] = window(t, director, pid, tid, "full maps")
        for n in range(1, REPEAT):
            res[f"full{n}"] = window(t, director, pid, tid, f"full maps, again ({n})")
        ms = res["full"]["dataplane_schedstat_ms_per_s"] - res["empty"]["dataplane_schedstat_ms_per_s"]
        res["walk_ms_per_s"] = round(ms, 2)
        # The director's own account of its passes (debug level:
        # BENCH_RUST_LOG=info,duet::dataplane::ebpf=debug).
        log = (t.node_dir(director) / "duet.log").read_text(errors="replace").splitlines()
        res["passes"] = [ln.split("eBPF walk: ")[1] for ln in log if "eBPF walk: a pass over the TCP" in ln][-3:]
        if res["passes"]:
            run.log(f"last passes: {res['passes']}")
        if PERF:
            data = Path(os.environ.get("WALK_PERF_DATA", work / "perf.data"))
            run.sh(f"perf record -F 2999 -g -t {tid} -o {data} -- sleep 5", check=False)
            rep = run.sh(f"perf report -i {data} --no-children --percent-limit 1 --stdio "
                         f"-g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40", check=False)
            res["perf"] = rep.splitlines()
            print(rep, file=sys.stderr)
        if EXPIRE:
            # Closed flows last tcp_fin (120 s) after their FIN; a full
            # walk later the kernel no longer holds them.
            deadline = filled + 120 + 40
            while time.monotonic() < deadline:
                if (dp(t, director).get("kernel_flows") or 0) == 0 and time.monotonic() > filled + 120:
                    break
                time.sleep(1)
            d = dp(t, director)
            res["expired_after_s"] = round(time.monotonic() - filled, 1)
            res["after_expiry"] = {"kernel_flows": d.get("kernel_flows"), "connections": d.get("connections")}
            run.log(f"after expiry: {res['after_expiry']} at {res['expired_after_s']} s")
    finally:
        t.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    out = os.environ.get("WALK_OUT")
    if out:
        Path(out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
