#!/usr/bin/env python3
"""`make bench`: duet against its baselines, side by side, in one run.

Builds a LAN in network namespaces (bridge, client 198.18.0.254, nodes
198.18.0.1 and .2 each running nginx, iperf3 and the real duet binary, VIP
198.18.0.100; HAProxy in TCP mode on the director node) and measures:

1. HTTP req/s (wrk) with new connections and with keep-alive: direct to one
   node, through the duet VIP, through HAProxy.
2. Bulk TCP throughput (iperf3, 1 and 8 streams): direct, and through duet on
   the peer path and on the local path (forced by draining the other node).
3. Forwarded packets/s and director CPU per packet under a bounded UDP flood
   of small frames (bench/flood.c) to a UDP service forwarded to the peer.
4. Client-visible failover gap for kill -9 of the director and for a planned
   switchover (`duet failover`), median of N.
5. Health detection time, director RSS with 0 and 100,000 tracked flows,
   image boot-to-first-heartbeat (when image/out exists).
6. Proxy mode: HTTP req/s and p99 latency (wrk, new connections and
   keep-alive) through a `mode = "proxy"` service on VIP:8090 (the nodes'
   nginx as backends), against HAProxy in HTTP mode and nginx `proxy_pass`
   (upstream keepalive) on the director node, over the same backends.
Plus the per-packet micro-benchmark (`cargo bench --bench forward`).
Parts 1-4 and 6 run once per engine of BENCH_ENGINES (default ebpf,userspace),
one after the other, each against baselines measured again beside it.

Writes bench/results.json and bench/RESULTS.md. Namespaces are named
db<pid>…, removed on exit (also on Ctrl-C), and stale ones of dead runs are
reaped at start. Durations: BENCH_SECONDS (per load case, default 8),
BENCH_FAILOVER_N (default 5), BENCH_CONNECTIONS (wrk concurrency, default 50),
BENCH_ROUNDS (interleaved HTTP rounds, default 3),
BENCH_FLOWS (default 100000), BENCH_SKIP (comma list of: http, bulk, pps,
rss, health, failover, micro, proxy).
"""
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DUET = Path(os.environ.get("DUET_BIN", ROOT / "target/release/duet")).resolve()
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
FAILOVER_N = int(os.environ.get("BENCH_FAILOVER_N", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "50"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
FLOWS = int(os.environ.get("BENCH_FLOWS", "100000"))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
# BENCH_ENGINES: the engines measured one after the other in this run, each
# against the same baselines (cluster.engine: auto, ebpf, userspace).
ENGINES = [e for e in os.environ.get("BENCH_ENGINES", "ebpf,userspace").split(",") if e]
# BENCH_NEW_FLOW_BUDGET: cluster.new_flow_budget (new flows a second duet decides;
# the eBPF engine schedules the rest in kernel). Unset: the default.
NEW_FLOW_BUDGET = os.environ.get("BENCH_NEW_FLOW_BUDGET", "")
# BENCH_PERF=1: record the director with `perf` during the UDP flood and the
# new-connection HTTP case (use an unstripped DUET_BIN to get symbols).
PERF = os.environ.get("BENCH_PERF") == "1" and shutil.which("perf") is not None
PROFILES = {}
PPS_FLOWS = 256
UDP_PORT = 9000
IPERF_PORT = 5201
HAPROXY_PORT = 8000
# Proxy mode (part 6): duet's proxy service on VIP:PROXY_PORT, the nodes'
# nginx also on NODE:PROXY_PORT as its backends (serve_local reaches the
# nodes on the service port); HAProxy in HTTP mode and nginx proxy_pass
# on the director's own address.
PROXY_PORT = 8090
HAPROXY_HTTP_PORT = 8001
NGINX_PROXY_PORT = 8002

VIP = "198.18.0.100"
CLIENT = "198.18.0.254"
NODES = [("web1", "198.18.0.1", 150), ("web2", "198.18.0.2", 100)]
VRID = 7
VMAC = "00:00:5e:00:01:%02x" % VRID
KEY = "duet-bench-key-0123456789abcdef"
TOKEN = "duet-bench-admin-token-42"
FLOOD_SRC = "198.19.0.0"  # benchmarking range, routed to the client on the nodes


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, check=True, timeout=None):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {cmd}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def reap_stale():
    """Removes namespaces of earlier bench runs whose process is gone."""
    for line in sh("ip netns list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"db(\d+)[a-z]", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            sh(f"ip netns pids {name} 2>/dev/null | xargs -r kill -9; ip netns del {name}", check=False)


class Topo:
    def __init__(self, work):
        self.p = f"db{os.getpid()}"
        self.work = work
        self.lan = self.p + "lan"
        self.client = self.p + "c"
        self.ns = [self.p + "n1", self.p + "n2"]
        self.made = []
        self.procs = {}  # name -> Popen
        self.engine = ENGINES[0]

    # --- namespaces -----------------------------------------------------
    def build(self):
        sh(f"ip netns add {self.lan}")
        self.made.append(self.lan)
        sh(f"ip -n {self.lan} link add br0 type bridge && ip -n {self.lan} link set br0 up "
           f"&& ip -n {self.lan} link set lo up")
        self.plug(self.client, CLIENT, "vc")
        for i, (_, addr, _) in enumerate(NODES):
            self.plug(self.ns[i], addr, f"vn{i + 1}")
            # Flood sources live in 198.19/16 behind the client.
            sh(f"ip -n {self.ns[i]} route add 198.19.0.0/16 via {CLIENT}")

    def plug(self, ns, addr, port):
        sh(f"ip netns add {ns}")
        self.made.append(ns)
        sh(f"ip link add {port} netns {self.lan} type veth peer name eth0 netns {ns}")
        sh(f"ip -n {self.lan} link set {port} master br0 up && ip -n {ns} link set lo up && "
           f"ip -n {ns} addr add {addr}/24 dev eth0 && ip -n {ns} link set eth0 up")
        # What anyone load-testing or running a proxy sets: without it HAProxy's
        # outgoing connections run out of ports in TIME_WAIT within seconds.
        sh(f"ip netns exec {ns} sysctl -qw net.ipv4.ip_local_port_range='1024 65000' "
           f"net.ipv4.tcp_tw_reuse=1")

    def cleanup(self):
        for name, p in list(self.procs.items()):
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()
        for ns in reversed(self.made):
            sh(f"ip netns pids {ns} 2>/dev/null | xargs -r kill -9; ip netns del {ns}", check=False)
        self.made.clear()

    def run(self, ns, cmd, check=True, timeout=None):
        return sh(f"ip netns exec {ns} {cmd}", check=check, timeout=timeout)

    def spawn(self, name, ns, args, stdout=None, env=None):
        out = stdout if stdout is not None else open(self.work / f"{name}.log", "ab")
        p = subprocess.Popen(["ip", "netns", "exec", ns] + args, stdout=out,
                             stderr=subprocess.STDOUT if stdout is None else subprocess.PIPE,
                             env=env)
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGKILL, timeout=10):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    # --- services -------------------------------------------------------
    def node_dir(self, i):
        return self.work / NODES[i][0]

    def setup_nodes(self):
        for i, (name, addr, prio) in enumerate(NODES):
            d = self.node_dir(i)
            (d / "www").mkdir(parents=True, exist_ok=True)
            (d / "state").mkdir(exist_ok=True)
            # The first line names the node; ~600 bytes like nginx's default page.
            (d / "www/index.html").write_text(name + "\n" + "x" * 600 + "\n")
            (d / "www/ldirector.html").write_text(f"Test Page {name}\n")
            (d / "key").write_text(KEY)
            (d / "token").write_text(TOKEN)
            (d / "nginx.conf").write_text(nginx_conf(d, addr))
            (d / "duet.toml").write_text(duet_conf(addr, self.engine))
            self.start_nginx(i)
            self.spawn(f"iperf3-{i}", self.ns[i], ["iperf3", "-s", "-p", str(IPERF_PORT)])
            # A UDP sink that never reads: flood packets are counted by the
            # kernel (InErrors) and trigger no ICMP replies.
            self.spawn(f"sink-{i}", self.ns[i], ["python3", "-c",
                       "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                       "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096);"
                       f"s.bind(('0.0.0.0',{UDP_PORT}));time.sleep(1e6)"])
        for i, (_, addr, _) in enumerate(NODES):
            wait_for(lambda: self.run(self.client, f"curl -sf -m 1 http://{addr}/", check=False),
                     10, f"nginx on {addr}")

    def start_nginx(self, i):
        d = self.node_dir(i)
        self.spawn(f"nginx-{i}", self.ns[i],
                   ["nginx", "-c", str(d / "nginx.conf"), "-p", str(d), "-e", str(d / "nginx-error.log")])

    def start_duet(self, i):
        d = self.node_dir(i)
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[i], str(DUET), "run", "-c", str(d / "duet.toml")],
                             cwd=d, stdout=open(d / "duet.log", "ab"), stderr=subprocess.STDOUT, env=env)
        self.procs[f"duet-{i}"] = p
        return p

    def duet_pid(self, i):
        p = self.procs.get(f"duet-{i}")
        return p.pid if p and p.poll() is None else None

    def status(self, i, timeout=1):
        addr = NODES[i][1]
        out = self.run(self.ns[i], f"curl -s -m {timeout} http://{addr}:8080/api/status", check=False)
        try:
            return json.loads(out)
        except ValueError:
            return None

    def role(self, i):
        s = self.status(i)
        return s.get("role") if s else None

    def wait_director(self, timeout=20):
        """Waits until exactly one running node is director and the other (if
        running) is standby; returns the director's index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            roles = [self.role(i) if self.duet_pid(i) else None for i in range(2)]
            dirs = [i for i in range(2) if roles[i] == "director"]
            ok = all(self.duet_pid(i) is None or roles[i] in ("director", "standby") for i in range(2))
            if len(dirs) == 1 and ok:
                return dirs[0]
            time.sleep(0.05)
        raise RuntimeError(f"no single director within {timeout}s: {roles}")

    def admin(self, i, *args):
        d = self.node_dir(i)
        return self.run(self.ns[i], f"{DUET} {' '.join(args)} -c {d / 'duet.toml'}", check=False)

    def start_haproxy(self, on):
        d = self.work / "haproxy"
        d.mkdir(exist_ok=True)
        cfg = d / "haproxy.cfg"
        cfg.write_text(haproxy_conf(NODES[on][1]))
        self.spawn("haproxy", self.ns[on], ["haproxy", "-f", str(cfg), "-db"])
        wait_for(lambda: self.run(self.client, f"curl -sf -m 1 http://{NODES[on][1]}:{HAPROXY_PORT}/",
                                  check=False), 10, "haproxy")

    def start_http_proxies(self, on):
        """HAProxy in HTTP mode and nginx proxy_pass on node `on` (part 6)."""
        addr = NODES[on][1]
        d = self.work / "proxies"
        d.mkdir(exist_ok=True)
        (d / "haproxy-http.cfg").write_text(haproxy_http_conf(addr))
        self.spawn("haproxy-http", self.ns[on], ["haproxy", "-f", str(d / "haproxy-http.cfg"), "-db"])
        (d / "nginx.conf").write_text(nginx_proxy_conf(d, addr))
        self.spawn("nginx-proxy", self.ns[on],
                   ["nginx", "-c", str(d / "nginx.conf"), "-p", str(d), "-e", str(d / "nginx-error.log")])
        for port in (HAPROXY_HTTP_PORT, NGINX_PROXY_PORT):
            wait_for(lambda: self.run(self.client, f"curl -sf -m 1 http://{addr}:{port}/", check=False),
                     10, f"proxy on {addr}:{port}")

    def stop_http_proxies(self):
        self.stop("haproxy-http")
        self.stop("nginx-proxy", signal.SIGQUIT)


def nginx_conf(d, addr):
    return f"""daemon off;
master_process on;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type text/html;
    server {{
        listen 80 backlog=4096;
        {f"listen {addr}:{PROXY_PORT} backlog=4096;" if "proxy" not in SKIP else ""}
        root {d}/www;
    }}
}}
"""


# Heartbeat timing of the default config and of the "fast" one an operator
# picks for sub-second failover (the kill -9 case is repeated with it).
HEARTBEAT_DEFAULT = ("100ms", "1s")
HEARTBEAT_FAST = ("50ms", "300ms")
# The tightest timing duet is built for: served again within 150 ms.
HEARTBEAT_FASTEST = ("20ms", "100ms")


def duet_conf(addr, engine, heartbeat=HEARTBEAT_DEFAULT):
    nodes = "".join(f"""
[[node]]
name = "{n}"
address = "{a}"
priority = {p}
""" for n, a, p in NODES)
    return f"""[cluster]
vip = "{VIP}"
interface = "eth0"
vrid = {VRID}
key_file = "key"
admin_token_file = "token"
status_listen = "{addr}:8080"
state_dir = "state"
engine = "{engine}"
{f"new_flow_budget = {int(NEW_FLOW_BUDGET)}" if NEW_FLOW_BUDGET else ""}
{nodes}
[heartbeat]
interval = "{heartbeat[0]}"
dead_after = "{heartbeat[1]}"

[[service]]
port = 80
protocol = "tcp"
scheduler = "rr"
serve_local = true
check = {{ kind = "http", request = "/ldirector.html", receive = "Test Page", interval = "1s", timeout = "500ms", rise = 2, fall = 2, quiescent = true }}

[[service]]
port = {IPERF_PORT}
protocol = "tcp"
scheduler = "rr"
serve_local = true

[[service]]
port = {UDP_PORT}
protocol = "udp"
scheduler = "rr"
serve_local = true
{PROXY_SERVICE if "proxy" not in SKIP else ""}"""


# What HAProxy and nginx are configured to do too: XFF added, idle
# keep-alive connections to the backends reused by any client.
PROXY_SERVICE = f"""
[[service]]
port = {PROXY_PORT}
mode = "proxy"
scheduler = "rr"
serve_local = true
"""


def haproxy_conf(addr):
    servers = "\n".join(f"    server {n} {a}:80" for n, a, _ in NODES)
    return f"""global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind {addr}:{HAPROXY_PORT}
    default_backend be
backend be
    balance roundrobin
{servers}
"""


def haproxy_http_conf(addr):
    servers = "\n".join(f"    server {n} {a}:{PROXY_PORT}" for n, a, _ in NODES)
    return f"""global
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind {addr}:{HAPROXY_HTTP_PORT}
    default_backend be
backend be
    balance roundrobin
{servers}
"""


def nginx_proxy_conf(d, addr):
    servers = "".join(f"        server {a}:{PROXY_PORT};\n" for _, a, _ in NODES)
    return f"""daemon off;
master_process on;
user root;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream nodes {{
{servers}        keepalive 64;
    }}
    server {{
        listen {addr}:{NGINX_PROXY_PORT} backlog=4096;
        location / {{
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def wait_for(f, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = f()
        if v:
            return v
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout}s")


# --- measurements -------------------------------------------------------------

def proc_cpu(pid, tid=None):
    """utime+stime of a process (or one of its threads) in seconds."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    f = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def thread_id(pid, comm):
    for t in Path(f"/proc/{pid}/task").iterdir():
        if (t / "comm").read_text().strip() == comm:
            return t.name
    return None


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


class Perf:
    """`perf record -g` of one process (or, pid "all", of the whole machine:
    with the eBPF engine the forwarding is in softirq, in no process) while a
    case runs; keeps the top of the report."""

    def __init__(self, name, pid, work):
        self.name, self.data, self.p = name, work / f"perf-{name}.data", None
        if PERF and pid:
            who = ["-a"] if pid == "all" else ["-p", str(pid)]
            self.p = subprocess.Popen(["perf", "record", "-F", "999", "-g", *who, "-o", str(self.data)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.p:
            return
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=60)
        rep = sh(f"perf report -i {self.data} --no-children --stdio --sort dso,sym 2>/dev/null", check=False)
        top = [ln.rstrip() for ln in rep.splitlines() if re.match(r"^\s+\d+\.\d+%", ln)][:30]
        rep = sh(f"perf report -i {self.data} --no-children --stdio --sort dso 2>/dev/null", check=False)
        dso = [ln.rstrip() for ln in rep.splitlines() if re.match(r"^\s+\d+\.\d+%", ln)][:8]
        PROFILES[self.name] = {"by_dso": dso, "top_symbols": top}


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["req_per_s"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Latency\s+([\d.]+\w+)", out)
    r["latency_avg"] = m.group(1) if m else None
    m = re.search(r"\s99%\s+([\d.]+\w+)", out)
    r["latency_p99"] = m.group(1) if m else None
    return r


def bench_http(t, director):
    targets = {
        "direct": f"http://{NODES[director][1]}/",
        "duet": f"http://{VIP}/",
        "haproxy": f"http://{NODES[director][1]}:{HAPROXY_PORT}/",
    }
    res = {"connections": CONNS, "threads": 2, "seconds": SECONDS, "rounds": ROUNDS,
           "direct_target": NODES[director][0], "haproxy_on": NODES[director][0]}
    res.update(wrk_rounds(t, "http", targets, profiled=("duet", "direct")))
    for mode in ("new_connection", "keepalive"):
        d = res[mode]
        d["ratio_duet_vs_direct"] = ratio(d["duet"]["req_per_s"], d["direct"]["req_per_s"])
        d["ratio_duet_vs_haproxy"] = ratio(d["duet"]["req_per_s"], d["haproxy"]["req_per_s"])
        d["ratio_haproxy_vs_direct"] = ratio(d["haproxy"]["req_per_s"], d["direct"]["req_per_s"])
        log(f"http {mode}: duet/direct {d['ratio_duet_vs_direct']}, duet/haproxy {d['ratio_duet_vs_haproxy']}")
    return res


def bench_proxy(t, director):
    """Part 6: the same wrk cases through three HTTP reverse proxies, all on
    the director, all round-robin over both nodes' nginx with kept backend
    connections."""
    addr = NODES[director][1]
    targets = {
        "duet": f"http://{VIP}:{PROXY_PORT}/",
        "haproxy_http": f"http://{addr}:{HAPROXY_HTTP_PORT}/",
        "nginx_proxy": f"http://{addr}:{NGINX_PROXY_PORT}/",
    }
    res = {"connections": CONNS, "threads": 2, "seconds": SECONDS, "rounds": ROUNDS,
           "proxies_on": NODES[director][0]}
    res.update(wrk_rounds(t, "proxy", targets, profiled=("duet",)))
    for mode in ("new_connection", "keepalive"):
        d = res[mode]
        d["ratio_duet_vs_haproxy_http"] = ratio(d["duet"]["req_per_s"], d["haproxy_http"]["req_per_s"])
        d["ratio_duet_vs_nginx_proxy"] = ratio(d["duet"]["req_per_s"], d["nginx_proxy"]["req_per_s"])
        log(f"proxy {mode}: duet/haproxy-http {d['ratio_duet_vs_haproxy_http']}, "
            f"duet/nginx {d['ratio_duet_vs_nginx_proxy']}")
    return res


def wrk_rounds(t, part, targets, profiled):
    """Each case runs ROUNDS times, interleaved across targets so that load
    from other processes hits all of them alike; the median counts."""
    res = {}
    for mode, hdr in (("new_connection", "-H 'Connection: close'"), ("keepalive", "")):
        runs = {name: [] for name in targets}
        for rnd in range(ROUNDS):
            for name, url in targets.items():
                if rnd == 0:
                    # A short warm-up fills ARP caches and accept queues.
                    t.run(t.client, f"wrk -t2 -c{CONNS} -d1s {hdr} {url}", check=False, timeout=30)
                    time.sleep(0.5)
                prof = (f"{part}_{mode}_{name}_{t.engine}" if name in profiled
                        and mode == "new_connection" and rnd == 0 else None)
                with Perf(prof, "all" if prof else None, t.work):
                    out = t.run(t.client, f"wrk -t2 -c{CONNS} -d{SECONDS:g}s --latency {hdr} {url}",
                                check=False, timeout=SECONDS + 60)
                r = parse_wrk(out)
                runs[name].append(r)
                log(f"{part} {mode:<14} {name:<12} round {rnd + 1}: {r['req_per_s']:>9.0f} req/s  "
                    f"(errors {r['socket_errors']}, non-2xx {r['non_2xx']}, p99 {r['latency_p99']})")
        res[mode] = {}
        for name, rs in runs.items():
            res[mode][name] = {
                "req_per_s": statistics.median(x["req_per_s"] for x in rs),
                "rounds_req_per_s": [x["req_per_s"] for x in rs],
                "socket_errors": sum(x["socket_errors"] for x in rs),
                "non_2xx": sum(x["non_2xx"] for x in rs),
                "latency_p99": [x["latency_p99"] for x in rs],
            }
    return res


def ratio(a, b):
    return round(a / b, 3) if b else None


def iperf(t, host, streams, reverse=False):
    secs = max(2, int(SECONDS))
    out = t.run(t.client, f"iperf3 -J -c {host} -p {IPERF_PORT} -P {streams} -t {secs} {'-R' if reverse else ''}",
                check=False, timeout=secs + 60)
    try:
        j = json.loads(out)
        return round(j["end"]["sum_received"]["bits_per_second"] / 1e9, 3)
    except (ValueError, KeyError):
        return None


def set_drain(t, director, name, on):
    t.admin(director, "drain" if on else "undrain", name)
    # The snapshot reaches the data plane within a control-loop tick.
    time.sleep(0.5)


def bench_bulk(t, director):
    peer = 1 - director
    dname, pname = NODES[director][0], NODES[peer][0]
    res = {"seconds": max(2, int(SECONDS)), "unit": "Gbit/s", "direction": "client to server (through the director)"}
    for streams in (1, 8):
        row = {}
        row["direct"] = iperf(t, NODES[peer][1], streams)
        set_drain(t, director, dname, True)
        row["duet_peer_path"] = iperf(t, VIP, streams)
        set_drain(t, director, dname, False)
        set_drain(t, director, pname, True)
        row["duet_local_path"] = iperf(t, VIP, streams)
        set_drain(t, director, pname, False)
        row["ratio_peer_path_vs_direct"] = ratio(row["duet_peer_path"] or 0, row["direct"] or 0)
        row["ratio_local_path_vs_direct"] = ratio(row["duet_local_path"] or 0, row["direct"] or 0)
        res[f"streams_{streams}"] = row
        log(f"bulk {streams} stream(s): {row}")
    return res


def udp_counted(t, i):
    """UDP datagrams that reached node i's stack (delivered, overflowed or no port)."""
    snmp = t.run(t.ns[i], "cat /proc/net/snmp")
    lines = [ln.split() for ln in snmp.splitlines() if ln.startswith("Udp:")]
    h, v = lines[0], lines[1]
    d = dict(zip(h[1:], map(int, v[1:])))
    return d["InDatagrams"] + d["NoPorts"] + d["InErrors"]


def flood(t, src, nsrc, nports, pps, count, seconds, length=60, mac=VMAC, dst=VIP):
    out = t.run(t.client, f"{t.work / 'flood'} eth0 {mac} {src} {nsrc} 20000 {nports} {dst} "
                          f"{UDP_PORT} {length} {pps:g} {count} {seconds:g}", timeout=seconds + 30)
    return json.loads(out)


def mac_of(t, i):
    out = t.run(t.ns[i], "cat /sys/class/net/eth0/address")
    return out.strip()


def bpf_prog_stats(pid):
    """run_cnt and run_time_ns summed per program type over the BPF
    programs duet holds (kernel.bpf_stats_enabled must be on): the kernel's
    own cost of the eBPF engine, which no process's CPU time shows."""
    out = {}
    fd_dir = Path(f"/proc/{pid}/fdinfo")
    for f in fd_dir.iterdir() if fd_dir.exists() else []:
        try:
            info = dict(ln.split(":", 1) for ln in f.read_text().splitlines() if ":" in ln)
        except OSError:
            continue
        if "prog_type" not in info or "run_cnt" not in info:
            continue
        kind = {"3": "tc", "1": "socket_filter"}.get(info["prog_type"].strip(), info["prog_type"].strip())
        c = out.setdefault(kind, [0, 0])
        c[0] += int(info["run_cnt"])
        c[1] += int(info["run_time_ns"])
    return out


def kernel_packets(t, i):
    s = t.status(i) or {}
    return s.get("dataplane", {}).get("kernel_packets", 0)


def bench_pps(t, director):
    peer = 1 - director
    dname = NODES[director][0]
    pid = t.duet_pid(director)
    tid = thread_id(pid, "duet-dataplane")
    set_drain(t, director, dname, True)  # every flow to the peer
    res = {"frame_bytes": 60, "flows": PPS_FLOWS, "runs": []}
    secs = max(2.0, SECONDS / 2)
    # The baseline: the same generator flat out at the peer's own address.
    before = udp_counted(t, peer)
    f = flood(t, "198.18.0.254", 1, PPS_FLOWS, 0, 50_000_000, secs, mac=mac_of(t, peer), dst=NODES[peer][1])
    time.sleep(0.5)
    res["direct"] = {"sent": f["sent"], "seconds": f["seconds"], "offered_pps": f["offered_pps"],
                     "delivered_pps": round((udp_counted(t, peer) - before) / f["seconds"])}
    log(f"pps direct: {res['direct']}")
    # The same hop done by the kernel's own IP forwarding on the director
    # node: what any forwarder in the director's place costs here. On veth
    # the sender's CPU also runs the receiver's softirq, so every hop a
    # frame takes slows the generator itself; this baseline pays the same.
    sysctls = ["net.ipv4.ip_forward", "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.eth0.send_redirects"]
    was = {k: t.run(t.ns[director], f"sysctl -n {k}").strip() for k in sysctls}
    for k, v in zip(sysctls, ("1", "0", "0")):
        t.run(t.ns[director], f"sysctl -qw {k}={v}")
    before = udp_counted(t, peer)
    f = flood(t, "198.18.0.254", 1, PPS_FLOWS, 0, 50_000_000, secs, mac=mac_of(t, director), dst=NODES[peer][1])
    time.sleep(0.5)
    res["routed"] = {"sent": f["sent"], "seconds": f["seconds"], "offered_pps": f["offered_pps"],
                     "delivered_pps": round((udp_counted(t, peer) - before) / f["seconds"])}
    for k, v in was.items():
        t.run(t.ns[director], f"sysctl -qw {k}={v}")
    log(f"pps routed through the director by the kernel: {res['routed']}")
    stats_was = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    # Offered: flat out, and a rate the director should sustain.
    for rate in (0, 100_000):
        before = udp_counted(t, peer)
        k0 = kernel_packets(t, director)
        b0 = bpf_prog_stats(pid)
        c0, tc0 = proc_cpu(pid), proc_cpu(pid, tid) if tid else 0
        with Perf(f"udp_flood_{rate or 'max'}", "all" if rate == 0 else None, t.work):
            f = flood(t, "198.18.0.254", 1, PPS_FLOWS, rate, 50_000_000, secs)
        time.sleep(0.5)
        delivered = udp_counted(t, peer) - before
        cpu = proc_cpu(pid) - c0
        tcpu = (proc_cpu(pid, tid) - tc0) if tid else None
        b1 = bpf_prog_stats(pid)
        progs = {k: (b1[k][0] - b0.get(k, [0, 0])[0], b1[k][1] - b0.get(k, [0, 0])[1]) for k in b1}
        run = {
            "offered_rate": "max" if rate == 0 else rate,
            "sent": f["sent"], "seconds": f["seconds"],
            "offered_pps": f["offered_pps"],
            "delivered": delivered,
            "delivered_pps": round(delivered / f["seconds"]),
            "delivery_ratio": ratio(delivered, f["sent"]),
            "director_cpu_s": round(cpu, 3),
            "director_cpu_ns_per_packet": round(cpu * 1e9 / delivered) if delivered else None,
            "dataplane_thread_cpu_s": round(tcpu, 3) if tcpu is not None else None,
            "dataplane_cpu_ns_per_packet": round(tcpu * 1e9 / delivered) if delivered and tcpu else None,
            # eBPF engine: frames forwarded in kernel, not by the thread.
            "kernel_packets": kernel_packets(t, director) - k0,
            # ... and what its program costs the kernel per run (the tc
            # program sees every frame).
            "bpf_ns_per_run": {k: round(ns / n) for k, (n, ns) in progs.items() if n},
            "bpf_runs": {k: n for k, (n, _) in progs.items()},
        }
        # Everything the director spent on a forwarded packet that is
        # measurable per process: its own CPU plus its programs' run time.
        tc_ns = sum(ns for _, ns in progs.values())
        run["director_total_ns_per_packet"] = round((cpu * 1e9 + tc_ns) / delivered) if delivered else None
        res["runs"].append(run)
        log(f"pps: {run}")
    set_drain(t, director, dname, False)
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text(stats_was)
    best = max(res["runs"], key=lambda r: r["delivered_pps"])
    res["forwarded_pps"] = best["delivered_pps"]
    res["ratio_vs_direct"] = ratio(best["delivered_pps"], res["direct"]["delivered_pps"])
    res["ratio_vs_routed"] = ratio(best["delivered_pps"], res["routed"]["delivered_pps"])
    res["director_cpu_ns_per_packet"] = best["director_cpu_ns_per_packet"]
    res["director_total_ns_per_packet"] = best["director_total_ns_per_packet"]
    return res


def bench_rss(t, director):
    pid = t.duet_pid(director)
    res = {"rss_kib_idle": rss_kib(pid), "connections_idle": conn_count(t, director)}
    # Distinct flows: FLOWS sources (address, port) in 198.19/16, paced so
    # none is lost on the way, in passes until the table holds them.
    nports = 1000
    nsrc = (FLOWS + nports - 1) // nports
    for _ in range(3):
        flood(t, FLOOD_SRC, nsrc, nports, 50_000, nsrc * nports, 60)
        time.sleep(1.0)
        if (conn_count(t, director) or 0) >= FLOWS:
            break
    res["flows_sent"] = nsrc * nports
    res["connections_tracked"] = conn_count(t, director)
    res["rss_kib_flows"] = rss_kib(pid)
    res["rss_kib_per_1k_flows"] = round((res["rss_kib_flows"] - res["rss_kib_idle"]) * 1000 /
                                        max(1, res["connections_tracked"] or 1), 1)
    log(f"rss: {res}")
    return res


def conn_count(t, i):
    s = t.status(i, timeout=3)
    if not s:
        return None
    for k in ("connections",):
        if k in s:
            return s[k]
        for sub in s.values():
            if isinstance(sub, dict) and k in sub:
                return sub[k]
    return None


def probe_bg(t, url, secs, interval_ms=20, timeout_ms=300):
    return subprocess.Popen(["ip", "netns", "exec", t.client, "python3", str(BENCH / "probe.py"), url,
                             str(secs), str(interval_ms), str(timeout_ms)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def probe_result(p):
    out, err = p.communicate(timeout=120)
    return json.loads(out)["probes"]


def max_gap_ms(probes, after):
    """Longest time between consecutive successful probes around `after`."""
    ok = [pt for pt, node in probes if node is not None and pt >= after - 1.0]
    gaps = [b - a for a, b in zip(ok, ok[1:])]
    return round(max(gaps) * 1000) if gaps else None


def restart_both(t, heartbeat):
    """Rewrites both configs with `heartbeat` timing and restarts both daemons."""
    for i, (_, addr, _) in enumerate(NODES):
        (t.node_dir(i) / "duet.toml").write_text(duet_conf(addr, t.engine, heartbeat))
        t.stop(f"duet-{i}", signal.SIGTERM)
    for i in range(len(NODES)):
        t.start_duet(i)
    return t.wait_director()


def bench_failover(t, director):
    kinds = ("kill9", "planned", "kill9_fast", "kill9_fastest")
    res = {"n": FAILOVER_N, "probe_interval_ms": 20, "fast_heartbeat": list(HEARTBEAT_FAST),
           "fastest_heartbeat": list(HEARTBEAT_FASTEST)}
    for kind in kinds:
        res[f"{kind}_gap_ms"] = []
        res[f"{kind}_failed_probes"] = []
    url = f"http://{VIP}/"
    for kind in kinds:
        if kind in ("kill9_fast", "kill9_fastest"):
            restart_both(t, HEARTBEAT_FAST if kind == "kill9_fast" else HEARTBEAT_FASTEST)
            time.sleep(1.0)
        for k in range(FAILOVER_N):
            d = t.wait_director()
            p = probe_bg(t, url, 5.0)
            time.sleep(1.5)
            tk = time.monotonic()
            if kind == "planned":
                t.admin(d, "failover")
            else:
                t.stop(f"duet-{d}", signal.SIGKILL)
            probes = probe_result(p)
            gap = max_gap_ms(probes, tk)
            failed = sum(1 for pt, n in probes if n is None and pt >= tk)
            res[f"{kind}_gap_ms"].append(gap)
            res[f"{kind}_failed_probes"].append(failed)
            log(f"failover {kind} #{k + 1}: director {NODES[d][0]}, gap {gap} ms, {failed} failed probes")
            if kind != "planned":
                t.start_duet(d)
            t.wait_director()
            time.sleep(1.0)
    for kind in kinds:
        v = [g for g in res[f"{kind}_gap_ms"] if g is not None]
        res[f"{kind}_gap_ms_median"] = statistics.median(v) if v else None
    return res


def bench_health(t, director):
    """Stops nginx on the peer; time until no new connection lands there."""
    peer = 1 - director
    pname = NODES[peer][0]
    url = f"http://{VIP}/"
    p = probe_bg(t, url, 8.0)
    time.sleep(1.0)
    tk = time.monotonic()
    t.stop(f"nginx-{peer}", signal.SIGTERM)
    marked = None
    while time.monotonic() - tk < 6.5:
        s = t.status(director)
        b = [x for x in (s or {}).get("backends", []) if x.get("name") == pname]
        if b and not b[0].get("healthy", True) and marked is None:
            marked = time.monotonic() - tk
        time.sleep(0.05)
    probes = probe_result(p)
    bad = [pt for pt, n in probes if pt >= tk and (n is None or n == pname)]
    last_bad = round((max(bad) - tk) * 1000) if bad else 0
    t.start_nginx(peer)
    window_end = probes[-1][0] if probes else tk
    res = {"check": "http, interval 1s, timeout 500ms, fall 2, rise 2",
           "client_visible_ms": last_bad,
           "still_failing_at_window_end": bool(bad) and window_end - max(bad) < 0.5,
           "window_ms": round((window_end - tk) * 1000),
           "status_unhealthy_ms": round(marked * 1000) if marked is not None else None,
           "failed_probes": len(bad),
           "bad_probes_ms": [round((pt - tk) * 1000) for pt in bad][:50],
           "bad_after_unhealthy": sum(1 for pt in bad if marked is not None and pt - tk > marked)}
    # Back up: time until the peer gets new connections again.
    t0 = time.monotonic()
    back = None
    while time.monotonic() - t0 < 10:
        s = t.status(director)
        b = [x for x in (s or {}).get("backends", []) if x.get("name") == pname]
        if b and b[0].get("healthy"):
            back = time.monotonic() - t0
            break
        time.sleep(0.05)
    res["recovery_ms"] = round(back * 1000) if back is not None else None
    log(f"health: {res}")
    return res


def bench_micro():
    log("micro-benchmark: cargo bench --bench forward")
    r = subprocess.run(["cargo", "bench", "--bench", "forward"], cwd=ROOT, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            j = json.loads(line[len("BENCH_JSON "):])
            log(f"micro: whole path {j['whole_path_ns']} ns/packet = {j['mpps_per_core']} Mpps/core")
            return j
    return {"error": (r.stderr or r.stdout)[-2000:]}


def boot_time():
    """Boots the two appliance VMs (image/vm-test.sh, boot checks only) and
    reads QEMU start -> daemon started -> first heartbeat of each."""
    if not (ROOT / "image/out/vmlinux").exists():
        return {"status": "not built", "note": "image/out has no image; run `make image` to include this figure"}
    env = dict(os.environ, VM_TEST_ONLY="boot", BOOT_TEST="0")
    try:
        r = subprocess.run(["bash", str(ROOT / "image/vm-test.sh")], env=env, capture_output=True,
                           text=True, timeout=400)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "note": "vm-test did not finish within 400 s"}
    vms = {}
    for line in r.stdout.splitlines():
        if line.startswith("BOOT "):
            _, name, *fields = line.split()
            vms[name] = {k: v for k, v in (f.split("=", 1) for f in fields)}
    try:
        worst = max(float(v["first_heartbeat_s"]) for v in vms.values())
    except (KeyError, ValueError):
        return {"status": "failed", "vms": vms, "output": (r.stdout + r.stderr)[-1000:]}
    log(f"boot: {vms}")
    return {"status": "ok", "seconds": worst, "vms": vms,
            "note": "s from QEMU start to the first heartbeat line, slower of the two VMs "
                    "(software emulation, -m 256M)"}


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    ver = lambda cmd: (sh(cmd + " 2>&1", check=False).strip().splitlines() or [""])[0]
    return {
        "hostname": platform.node(), "kernel": platform.release(), "cpu": cpu,
        "cores": os.cpu_count(), "mem_kib": int(mem), "loadavg_start": os.getloadavg(),
        "nginx": ver("nginx -v"), "haproxy": ver("haproxy -v"), "wrk": ver("wrk -v"),
        "iperf3": ver("iperf3 -v"), "rustc": ver("rustc -V"),
    }


def git_commit():
    c = sh(f"git -C {ROOT} rev-parse HEAD", check=False).strip()
    dirty = sh(f"git -C {ROOT} status --porcelain --untracked-files=no", check=False).strip()
    return c + ("-dirty" if dirty else "")


def main():
    if os.geteuid() != 0:
        sys.exit("make bench needs root (network namespaces, AF_PACKET)")
    if not DUET.exists():
        sys.exit(f"{DUET} missing: run `cargo build --release` first")
    reap_stale()
    started = time.monotonic()
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(),
        "settings": {"seconds": SECONDS, "failover_n": FAILOVER_N, "wrk_connections": CONNS,
                     "rounds": ROUNDS, "flows": FLOWS, "skip": sorted(SKIP), "duet": str(DUET),
                     "engines": ENGINES, "new_flow_budget": NEW_FLOW_BUDGET or "default"},
    }
    if "micro" not in SKIP:
        results["micro"] = bench_micro()
    work = Path(tempfile.mkdtemp(prefix="duet-bench-"))
    t = Topo(work)

    def on_signal(sig, frame):
        raise SystemExit(f"interrupted by signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sh(f"gcc -O2 -o {work / 'flood'} {BENCH / 'flood.c'}")
        t.build()
        t.setup_nodes()
        for i in range(2):
            t.start_duet(i)
        director = t.wait_director(30)
        log(f"director: {NODES[director][0]}")
        wait_for(lambda: t.run(t.client, f"curl -sf -m 1 http://{VIP}/", check=False), 10, "VIP")
        if "rss" not in SKIP:
            time.sleep(1.0)
            results["rss"] = bench_rss(t, director)
            # A clean table for what follows: restart both nodes.
            for i in range(2):
                t.stop(f"duet-{i}")
            for i in range(2):
                t.start_duet(i)
            director = t.wait_director(30)
            wait_for(lambda: t.run(t.client, f"curl -sf -m 1 http://{VIP}/", check=False), 10, "VIP")
        results["engines"] = {}
        for n, engine in enumerate(ENGINES):
            if n > 0:
                t.engine = engine
                t.stop("haproxy")
                t.stop_http_proxies()
                director = restart_both(t, HEARTBEAT_DEFAULT)
                wait_for(lambda: t.run(t.client, f"curl -sf -m 1 http://{VIP}/", check=False), 10, "VIP")
            running = wait_for(lambda: (t.status(director) or {}).get("dataplane", {}).get("engine"),
                               10, "status")
            log(f"engine {engine}: director {NODES[director][0]} runs {running}")
            e = results["engines"][engine] = {"running": running}
            t.start_haproxy(director)
            if "http" not in SKIP:
                e["http"] = bench_http(t, director)
            if "bulk" not in SKIP:
                e["bulk"] = bench_bulk(t, director)
            if "pps" not in SKIP:
                e["pps"] = bench_pps(t, director)
            if "proxy" not in SKIP:
                t.start_http_proxies(director)
                wait_for(lambda: t.run(t.client, f"curl -sf -m 1 http://{VIP}:{PROXY_PORT}/", check=False),
                         10, "duet proxy service")
                e["proxy"] = bench_proxy(t, director)
            if "health" not in SKIP and n == 0:
                time.sleep(2.5)  # nginx back up and checked healthy (rise 2)
                results["health"] = bench_health(t, director)
            if "failover" not in SKIP:
                e["failover"] = bench_failover(t, director)
                restart_both(t, HEARTBEAT_DEFAULT)
                director = t.wait_director()
        results["boot_to_first_heartbeat"] = boot_time()
        if PROFILES:
            results["profiles"] = PROFILES
    finally:
        t.cleanup()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_seconds"] = round(time.monotonic() - started)
    results["targets"] = targets(results)
    out = Path(os.environ.get("BENCH_OUT", BENCH))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(render_md(results))
    log(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} in {results['wall_seconds']} s")


def targets(r):
    """Issue 21's targets (and issue 15's for proxy mode), judged on this run
    for each engine."""
    out = {}
    for engine, e in r.get("engines", {}).items():
        t = out[engine] = {}
        h = e.get("http", {})
        nc, ka = h.get("new_connection"), h.get("keepalive")
        if nc:
            t["new_conn_vs_direct_ge_0.90"] = nc["ratio_duet_vs_direct"]
            t["new_conn_vs_haproxy_ge_1.5"] = nc["ratio_duet_vs_haproxy"]
        if ka:
            t["keepalive_vs_direct_ge_0.95"] = ka["ratio_duet_vs_direct"]
        b = e.get("bulk", {}).get("streams_8")
        if b:
            t["upload8_peer_vs_direct_ge_0.85"] = b["ratio_peer_path_vs_direct"]
            t["upload8_local_vs_direct_ge_0.95"] = b["ratio_local_path_vs_direct"]
        px = e.get("proxy", {})
        if px:
            t["proxy_keepalive_vs_haproxy_http_ge_1.0"] = px["keepalive"]["ratio_duet_vs_haproxy_http"]
            t["proxy_new_conn_vs_haproxy_http_ge_0.9"] = px["new_connection"]["ratio_duet_vs_haproxy_http"]
        p = e.get("pps")
        if p:
            t["udp_flood_vs_direct_ge_0.9"] = p.get("ratio_vs_direct")
            t["udp_flood_vs_routed_hop_ge_0.9"] = p.get("ratio_vs_routed")
            t["director_ns_per_packet_le_500"] = p.get("director_total_ns_per_packet")
    return out


def target_met(name, value):
    if value is None:
        return False
    bound = float(name.rsplit("_", 1)[1])
    return value <= bound if "_le_" in name else value >= bound


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3g}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"


def engine_sections(e):
    L = []
    h = e.get("http")
    if h:
        L += ["## 1. HTTP requests/s (nginx backend, small file)", "",
              f"wrk -t2 -c{h['connections']} -d{h['seconds']:g}s, median of {h['rounds']} interleaved rounds; "
              f"direct = node {h['direct_target']}, "
              f"HAProxy in TCP mode on {h['haproxy_on']} (the director) round-robin over both nodes; "
              "duet rr over both nodes.", "",
              "| mode | direct | duet VIP | HAProxy TCP | duet / direct | duet / HAProxy | HAProxy / direct |",
              "|---|---|---|---|---|---|---|"]
        for mode in ("new_connection", "keepalive"):
            d = h[mode]
            L.append(f"| {mode.replace('_', ' ')} | {fmt(d['direct']['req_per_s'])} | {fmt(d['duet']['req_per_s'])} | "
                     f"{fmt(d['haproxy']['req_per_s'])} | {fmt(d['ratio_duet_vs_direct'])} | "
                     f"{fmt(d['ratio_duet_vs_haproxy'])} | {fmt(d['ratio_haproxy_vs_direct'])} |")
        L += ["", "Errors (socket errors / non-2xx): " + ", ".join(
            f"{mode} {n} {h[mode][n]['socket_errors']}/{h[mode][n]['non_2xx']}"
            for mode in ("new_connection", "keepalive") for n in ("direct", "duet", "haproxy")), ""]
    b = e.get("bulk")
    if b:
        L += ["## 2. Bulk TCP throughput (iperf3, Gbit/s, client → server)", "",
              "| streams | direct | duet peer path | duet local path | peer / direct | local / direct |",
              "|---|---|---|---|---|---|"]
        for s in (1, 8):
            x = b[f"streams_{s}"]
            L.append(f"| {s} | {fmt(x['direct'])} | {fmt(x['duet_peer_path'])} | {fmt(x['duet_local_path'])} | "
                     f"{fmt(x['ratio_peer_path_vs_direct'])} | {fmt(x['ratio_local_path_vs_direct'])} |")
        L.append("")
    p = e.get("pps")
    if p:
        d = p.get("direct", {})
        rt = p.get("routed", {})
        L += ["## 3. Forwarded packets/s (UDP, 60-byte frames, director → peer)", "",
              f"Direct to the peer's own address, same generator: {fmt(d.get('delivered_pps'))} pps delivered "
              f"(offered {fmt(d.get('offered_pps'))}); through duet {fmt(p.get('forwarded_pps'))} "
              f"= {fmt(p.get('ratio_vs_direct'))} × direct.", "",
              f"The same hop by the kernel's IP forwarding on the director node (the frame to its own MAC, "
              f"to the peer's address): {fmt(rt.get('delivered_pps'))} pps delivered "
              f"(offered {fmt(rt.get('offered_pps'))}); duet = {fmt(p.get('ratio_vs_routed'))} × that. "
              "On veth the sending CPU runs the receivers' softirqs, so each hop a frame takes slows the "
              "generator itself: a forwarder's ceiling here is the routed hop, not direct.", "",
              "| offered | sent | offered pps | delivered pps | delivered | duet CPU ns/pkt | data-plane thread ns/pkt "
              "| BPF ns/run | duet + BPF ns/pkt |",
              "|---|---|---|---|---|---|---|---|---|"]
        for x in p["runs"]:
            bpf = ", ".join(f"{k} {v}" for k, v in x.get("bpf_ns_per_run", {}).items()) or "n/a"
            L.append(f"| {x['offered_rate']} | {fmt(x['sent'])} | {fmt(x['offered_pps'])} | {fmt(x['delivered_pps'])} | "
                     f"{fmt(x['delivery_ratio'])} | {fmt(x['director_cpu_ns_per_packet'])} | "
                     f"{fmt(x['dataplane_cpu_ns_per_packet'])} | {bpf} | {fmt(x.get('director_total_ns_per_packet'))} |")
        L.append("")
    f = e.get("failover")
    if f:
        L += ["## 4. Failover (client-visible gap, new connection every 20 ms)", "",
              "| event | median gap (ms) | all runs (ms) | failed probes per run |", "|---|---|---|---|",
              f"| kill -9 of the director | {fmt(f['kill9_gap_ms_median'])} | {f['kill9_gap_ms']} | {f['kill9_failed_probes']} |",
              f"| planned switchover (`duet failover`) | {fmt(f['planned_gap_ms_median'])} | {f['planned_gap_ms']} | "
              f"{f['planned_failed_probes']} |"]
        if "kill9_fast_gap_ms" in f:
            hb = f["fast_heartbeat"]
            L.append(f"| kill -9, heartbeat interval {hb[0]} / dead_after {hb[1]} | "
                     f"{fmt(f['kill9_fast_gap_ms_median'])} | {f['kill9_fast_gap_ms']} | {f['kill9_fast_failed_probes']} |")
        if "kill9_fastest_gap_ms" in f:
            hb = f["fastest_heartbeat"]
            L.append(f"| kill -9, heartbeat interval {hb[0]} / dead_after {hb[1]} | "
                     f"{fmt(f['kill9_fastest_gap_ms_median'])} | {f['kill9_fastest_gap_ms']} | "
                     f"{f['kill9_fastest_failed_probes']} |")
        L.append("")
    px = e.get("proxy")
    if px:
        names = (("duet", "duet proxy (VIP)"), ("haproxy_http", "HAProxy HTTP"),
                 ("nginx_proxy", "nginx proxy_pass"))
        L += ["## 6. Proxy mode: HTTP reverse proxies (nginx backends, small file)", "",
              f"wrk -t2 -c{px['connections']} -d{px['seconds']:g}s, median of {px['rounds']} interleaved rounds; "
              f"all three on {px['proxies_on']} (the director), round-robin over both nodes' nginx, "
              "adding X-Forwarded-For and reusing idle backend connections across clients "
              "(HAProxy `http-reuse always`, its default threads; nginx `keepalive 64`, "
              "`worker_processes auto`). duet is reached through the VIP (its data plane "
              "hands the packets to the local stack), the others on the node's address.", "",
              "| mode | " + " | ".join(f"{label} req/s" for _, label in names) +
              " | duet / HAProxy | duet / nginx | " + " | ".join(f"{label} p99" for _, label in names) + " |",
              "|---|" + "---|" * 8]
        for mode in ("new_connection", "keepalive"):
            d = px[mode]
            L.append(f"| {mode.replace('_', ' ')} | " +
                     " | ".join(fmt(d[n]['req_per_s']) for n, _ in names) +
                     f" | {fmt(d['ratio_duet_vs_haproxy_http'])} | {fmt(d['ratio_duet_vs_nginx_proxy'])} | " +
                     " | ".join(", ".join(str(x) for x in d[n]['latency_p99']) for n, _ in names) + " |")
        L += ["", "Errors (socket errors / non-2xx): " + ", ".join(
            f"{mode} {n} {px[mode][n]['socket_errors']}/{px[mode][n]['non_2xx']}"
            for mode in ("new_connection", "keepalive") for n, _ in names), ""]
    return L


def render_md(r):
    m = r["machine"]
    L = ["# duet benchmark results", "",
         f"Generated by `make bench` (bench/run.py) on {r['date']}, commit `{r['git_commit']}`.", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_kib'] // 1024} MiB, kernel {m['kernel']}; "
         f"load average at start {m['loadavg_start'][0]:.1f}, at end {m['loadavg_end'][0]:.1f} "
         "(the cores are shared with other work: absolute figures are noisy, ratios within one run less so).", "",
         f"Settings: {r['settings']['seconds']:g} s per load case, wrk {r['settings']['wrk_connections']} "
         f"connections / 2 threads, failover median of {r['settings']['failover_n']}. "
         "Everything runs in network namespaces on one host over veth + bridge.", ""]
    tg = r.get("targets", {})
    if tg:
        engines = list(tg)
        names = {"new_conn_vs_direct_ge_0.90": "new-connection req/s through the VIP ≥ 0.90 × direct",
                 "new_conn_vs_haproxy_ge_1.5": "new-connection req/s ≥ 1.5 × HAProxy TCP mode",
                 "keepalive_vs_direct_ge_0.95": "keep-alive req/s ≥ 0.95 × direct",
                 "upload8_peer_vs_direct_ge_0.85": "8-stream upload, peer path ≥ 0.85 × direct",
                 "upload8_local_vs_direct_ge_0.95": "8-stream upload, local path ≥ 0.95 × direct",
                 "udp_flood_vs_direct_ge_0.9": "UDP 60-byte flood to the peer: delivered ≥ 0.9 × direct",
                 "udp_flood_vs_routed_hop_ge_0.9": "the same, against the kernel routing the hop on the director "
                                                   "(not an issue target: this topology's ceiling)",
                 "director_ns_per_packet_le_500": "director CPU per forwarded packet ≤ 500 ns",
                 "proxy_keepalive_vs_haproxy_http_ge_1.0": "proxy mode keep-alive req/s ≥ 1.0 × HAProxy HTTP mode",
                 "proxy_new_conn_vs_haproxy_http_ge_0.9": "proxy mode new-connection req/s ≥ 0.9 × HAProxy HTTP mode"}
        L += ["## Targets (issue 21; proxy mode: issue 15)", "", "| target | " + " | ".join(engines) + " |",
              "|---|" + "---|" * len(engines)]
        for k, label in names.items():
            cells = []
            for e in engines:
                v = tg[e].get(k)
                cells.append("n/a" if v is None else f"{fmt(v)} {'(met)' if target_met(k, v) else '**(not met)**'}")
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L += ["", "Director CPU per packet: duet's own CPU time plus the run time of its BPF programs "
              "(kernel.bpf_stats_enabled), over the packets delivered; the kernel's transmit after "
              "`bpf_redirect` is not in it (no per-process figure has it).", ""]
    for engine, e in r.get("engines", {}).items():
        L += [f"# Engine: {engine} (running: {e.get('running')})", ""]
        L += engine_sections(e)
    L += ["## 5. Health, memory, boot", "", "| figure | value |", "|---|---|"]
    hh = r.get("health")
    if hh:
        still = hh.get("still_failing_at_window_end")
        L += [f"| health detection, client-visible (last failed/misrouted probe after nginx stop; {hh['check']}) | "
              f"{'≥ ' if still else ''}{fmt(hh['client_visible_ms'])} ms"
              f"{' (new connections still reached the stopped node at the end of the window: ' + str(hh.get('bad_after_unhealthy')) + ' failed probes after the status page said unhealthy)' if still else ''} |",
              f"| health detection, status page says unhealthy | {fmt(hh['status_unhealthy_ms'])} ms |",
              f"| health recovery after nginx restart (status healthy) | {fmt(hh['recovery_ms'])} ms |"]
    rs = r.get("rss")
    if rs:
        L += [f"| director RSS, idle ({fmt(rs['connections_idle'])} connections) | {fmt(rs['rss_kib_idle'])} KiB |",
              f"| director RSS with {fmt(rs['connections_tracked'])} tracked connections | {fmt(rs['rss_kib_flows'])} KiB |"]
    bt = r.get("boot_to_first_heartbeat", {})
    L.append(f"| image boot to first heartbeat | {bt.get('seconds', bt.get('status', 'n/a'))} "
             f"{bt.get('note', '')} |")
    L.append("")
    mi = r.get("micro")
    if mi and "cases" in mi:
        L += ["## Per-packet micro-benchmark (`cargo bench --bench forward`)", "",
              f"{mi.get('timing', '')}; {mi['flows']:,} flows in the table.", "",
              "| step | ns/packet |", "|---|---|",
              f"| parse (classify) | {mi['parse_ns']} |", f"| lookup (table hit, wlc) | {mi['lookup_ns']} |",
              f"| schedule (new flow, wlc) | {mi['schedule_ns']} |", f"| rewrite (MACs) | {mi['rewrite_ns']} |",
              f"| whole path, established flow | {mi['whole_path_ns']} ({mi['mpps_per_core']} Mpps/core) |",
              f"| whole path, new flow | {mi['whole_path_new_flow_ns']} ({mi['mpps_per_core_new_flows']} Mpps/core) |",
              f"| whole path, 1,000 established flows (table in cache) | {mi.get('whole_path_cached_ns')} "
              f"({mi.get('mpps_per_core_cached')} Mpps/core) |",
              "", "<details><summary>all cases</summary>", "", "| case | ns/op (CPU) | ns/op (wall) |", "|---|---|---|"]
        L += [f"| {c['name']} | {c['ns_per_op']} | {c.get('wall_ns_per_op', '')} |" for c in mi["cases"]]
        L += ["", "</details>", ""]
    L += [f"Run took {r['wall_seconds']} s. Raw figures: bench/results.json.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
