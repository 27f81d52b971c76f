#!/usr/bin/env python3
"""Where the CPU goes in the new-connection case (see bench/PROFILE.md).

Builds the `make bench` topology and runs wrk with `Connection: close`
direct to the director and through the VIP (ROUNDS rounds of 8 s), printing
requests/s, the machine's busy share (/proc/stat) and the data-plane
thread's CPU share and context switches per request.

RPS=tun     also spreads duet0's receive work over all CPUs (RPS)
RPS=tunlan  does so on every veth of the topology as well
"""
import importlib.util
import os
import tempfile
from pathlib import Path

spec = importlib.util.spec_from_file_location("run", Path(__file__).with_name("run.py"))
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)

SECONDS = 8
ROUNDS = int(os.environ.get("ROUNDS", "2"))
TICK = os.sysconf("SC_CLK_TCK")


def machine_ticks():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v), v[3] + v[4]  # total, idle + iowait


def thread_stats(pid, tid):
    """CPU ticks, voluntary and involuntary context switches of one thread."""
    fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    ctx = {}
    for line in open(f"/proc/{pid}/task/{tid}/status"):
        if "ctxt_switches" in line:
            k, v = line.split(":")
            ctx[k] = int(v)
    return int(fields[11]) + int(fields[12]), ctx["voluntary_ctxt_switches"], ctx["nonvoluntary_ctxt_switches"]


def spread(t, namespaces):
    for ns in namespaces:
        t.run(ns, "sh -c 'for q in /sys/class/net/*/queues/rx-*/rps_cpus; do echo 3 > $q; done'")


def main():
    run.reap_stale()
    t = run.Topo(Path(tempfile.mkdtemp(prefix="duet-cpu-")))
    try:
        t.build()
        t.setup_nodes()
        for i in range(2):
            t.start_duet(i)
        d = t.wait_director(30)
        run.wait_for(lambda: t.run(t.client, f"curl -sf -m 1 http://{run.VIP}/", check=False), 10, "VIP")
        mode = os.environ.get("RPS", "")
        if mode == "tun":
            spread(t, t.ns)
        elif mode == "tunlan":
            spread(t, [t.lan, t.client] + t.ns)
        pid = t.duet_pid(d)
        tid = run.thread_id(pid, "duet-dataplane")
        hdr = "-H 'Connection: close'"
        for _ in range(ROUNDS):
            for name, url in (("direct", f"http://{run.NODES[d][1]}/"), ("duet", f"http://{run.VIP}/")):
                t.run(t.client, f"wrk -t2 -c50 -d1s {hdr} {url}", check=False, timeout=30)
                m0, s0 = machine_ticks(), thread_stats(pid, tid)
                out = t.run(t.client, f"wrk -t2 -c50 -d{SECONDS}s {hdr} {url}", check=False, timeout=60)
                m1, s1 = machine_ticks(), thread_stats(pid, tid)
                rps = run.parse_wrk(out)["req_per_s"]
                reqs = rps * SECONDS
                total, idle = m1[0] - m0[0], m1[1] - m0[1]
                print(f"{name:<6} {rps:>7.0f} req/s  machine busy {100 * (total - idle) / total:.0f} %  "
                      f"data-plane thread {100 * (s1[0] - s0[0]) / TICK / SECONDS:.0f} % of a core, "
                      f"{(s1[1] - s0[1]) / reqs:.2f} sleeps and {(s1[2] - s0[2]) / reqs:.2f} preemptions per request",
                      flush=True)
    finally:
        t.cleanup()


if __name__ == "__main__":
    main()
