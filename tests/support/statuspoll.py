#!/usr/bin/env python3
"""Polls URL (a duet /api/status) every INTERVAL_MS for SECONDS, one fresh
connection each, and reports the latencies and the peer's heartbeat age:
{"polls", "ok", "failed", "median_ms", "p95_ms", "max_ms",
 "heard_median_ms", "heard_max_ms", "errors": [first few]}.

usage: statuspoll.py URL SECONDS INTERVAL_MS
"""
import json, sys, time, urllib.request

url, secs, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) / 1000
lat, heard, errors = [], [], []
failed = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
        lat.append((time.monotonic() - t) * 1000)
        peers = json.loads(body).get("peers") or [{}]
        h = peers[0].get("last_heard_ms")
        if h is not None:
            heard.append(h)
    except Exception as e:  # a refusal, reset, timeout or 503 all count
        failed += 1
        if len(errors) < 5:
            errors.append(str(e))
    time.sleep(max(0.0, interval - (time.monotonic() - t)))


def pct(v, p):
    if not v:
        return None
    v = sorted(v)
    return round(v[min(len(v) - 1, int(len(v) * p))], 1)


print(json.dumps({"polls": len(lat) + failed, "ok": len(lat), "failed": failed,
                  "median_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95),
                  "max_ms": pct(lat, 1.0), "heard_median_ms": pct(heard, 0.5),
                  "heard_max_ms": pct(heard, 1.0), "errors": errors}), flush=True)
