#!/usr/bin/env python3
"""Client-side probe for `make bench` (runs in the client namespace).

probe URL SECONDS INTERVAL_MS TIMEOUT_MS
    Opens a new connection every INTERVAL_MS for SECONDS (each in its own
    thread, so a probe stuck in its timeout does not delay the next one and
    a gap is measured to INTERVAL_MS, not TIMEOUT_MS) and prints one JSON
    object: {"start": t0, "probes": [[t, node_or_null], ...]} where t is
    CLOCK_MONOTONIC (shared by all namespaces, so the harness can relate it
    to the moment it killed or stopped something) and node is the first line
    of the body (the node's name) or null for a failed request.
"""
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse


def one(host, port, path, timeout):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            return None
        return body.decode(errors="replace").split("\n", 1)[0].strip()
    except Exception:
        return None
    finally:
        c.close()


def main():
    url, secs = sys.argv[1], float(sys.argv[2])
    interval = float(sys.argv[3]) / 1000
    timeout = float(sys.argv[4]) / 1000
    u = urlparse(url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    start = time.monotonic()
    end = start + secs
    probes = []
    threads = []

    def run(slot):
        t = time.monotonic()
        slot.extend([round(t, 4), one(host, port, path, timeout)])

    t = start
    while t < end:
        slot = []
        probes.append(slot)
        th = threading.Thread(target=run, args=(slot,))
        th.start()
        threads.append(th)
        t += interval
        left = t - time.monotonic()
        if left > 0:
            time.sleep(left)
    for th in threads:
        th.join()
    print(json.dumps({"start": start, "probes": probes}), flush=True)


if __name__ == "__main__":
    main()
