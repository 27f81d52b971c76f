#!/usr/bin/env python3
"""A real client during a flood (tests/flood.rs); prints "started", then one
JSON object {"events": [[unix_time, ok, ms, error], ...]}.

tcp URL SECONDS PERIOD_MS
    a new HTTP connection every PERIOD_MS (one at a time), each given 3 s:
    the kernel's own SYN retransmission (after 1 s) may rescue it, as it
    would any real client's.
udp HOST PORT SECONDS PERIOD_MS
    a datagram every PERIOD_MS, answered within 2 s; resent every 500 ms
    meanwhile, as a DNS resolver does.

Wall-clock start times, so the test can split them into before, during and
after the flood.
"""
import http.client, json, socket, sys, time
from urllib.parse import urlparse


def tcp_once(u):
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=3.0)
    try:
        c.request("GET", u.path or "/", headers={"Connection": "close"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            return "status %d" % r.status
        return None
    except Exception as e:
        return str(e)[:60] or type(e).__name__
    finally:
        c.close()


def udp_once(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        end = time.monotonic() + 2.0
        while True:
            s.sendto(b"probe", (host, port))
            s.settimeout(min(0.5, max(0.01, end - time.monotonic())))
            try:
                s.recvfrom(2048)
                return None
            except socket.timeout:
                if time.monotonic() >= end:
                    return "no answer in 2 s"
    except Exception as e:
        return str(e)[:60]
    finally:
        s.close()


def main():
    cmd = sys.argv[1]
    if cmd == "tcp":
        u = urlparse(sys.argv[2])
        secs, period = float(sys.argv[3]), float(sys.argv[4]) / 1000
        once = lambda: tcp_once(u)
    elif cmd == "udp":
        host, port = sys.argv[2], int(sys.argv[3])
        secs, period = float(sys.argv[4]), float(sys.argv[5]) / 1000
        once = lambda: udp_once(host, port)
    else:
        print(json.dumps({"error": "unknown command " + cmd}))
        return
    print("started", flush=True)
    events = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        t0 = time.monotonic()
        wall = time.time()
        err = once()
        ms = (time.monotonic() - t0) * 1000
        events.append([wall, err is None, round(ms, 1), err])
        time.sleep(max(0, period - (time.monotonic() - t0)))
    print(json.dumps({"events": events}), flush=True)


if __name__ == "__main__":
    main()
