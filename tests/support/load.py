#!/usr/bin/env python3
"""Constant client load with a timestamp per failure; prints one JSON object.

load.py URL SECONDS [PERIOD_MS [TIMEOUT_MS]]
  -> {"ok": n, "failed": k, "failures": [[unix_time_s, "error"], ...]}

One new connection every PERIOD_MS (default 20), TIMEOUT_MS (default 300)
timeout each, like
client.py's `gap`, but failures carry wall-clock start times so the test can
line them up with the faults it injected.
"""
import http.client, json, sys, time
from urllib.parse import urlparse


def main():
    url, secs = sys.argv[1], float(sys.argv[2])
    period = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.02
    timeout = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.3
    u = urlparse(url)
    end = time.monotonic() + secs
    ok = 0
    failures = []
    while time.monotonic() < end:
        t0 = time.monotonic()
        wall = time.time()
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        try:
            c.request("GET", u.path or "/", headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise Exception("status %d" % r.status)
            ok += 1
        except Exception as e:
            failures.append([wall, str(e)[:60]])
        finally:
            c.close()
        time.sleep(max(0, period - (time.monotonic() - t0)))
    print(json.dumps({"ok": ok, "failed": len(failures), "failures": failures}), flush=True)


if __name__ == "__main__":
    main()
