#!/usr/bin/env python3
"""Client side of duet's netns tests; prints one JSON object.

count URL N            -> {"names": {node: count}, "errors": k}   (N new connections)
get URL                -> {"body": "..."} or {"error": "..."}
download URL N         -> {"sha256": ..., "expected": ..., "bytes": n, "node": ...}
upload URL N           -> {"sha256": ..., "expected": ..., "node": ...}
udp HOST PORT          -> {"answer": "..."}
gap URL SECONDS        -> probes a new connection every 20 ms; {"ok": n, "failed": k, "max_gap_ms": g, "failures": [...]}
"""
import hashlib, http.client, json, socket, sys, time
from urllib.parse import urlparse

def conn(url, timeout):
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout), (u.path or "/") + (("?" + u.query) if u.query else "")

def get(url, timeout=2.0):
    c, path = conn(url, timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()

def expected_sha(n):
    block = bytes(range(256)) * 256
    h = hashlib.sha256()
    full, rest = divmod(n, len(block))
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
    return h.hexdigest()

def main():
    cmd = sys.argv[1]
    out = {}
    if cmd == "count":
        url, n = sys.argv[2], int(sys.argv[3])
        names, errors = {}, []
        for _ in range(n):
            try:
                st, body = get(url)
                key = body.decode().strip() if st == 200 else "status-%d" % st
                names[key] = names.get(key, 0) + 1
            except Exception as e:
                errors.append(str(e))
        out = {"names": names, "errors": len(errors), "error_samples": errors[:5]}
    elif cmd == "get":
        try:
            st, body = get(sys.argv[2])
            out = {"status": st, "body": body.decode(errors="replace")}
        except Exception as e:
            out = {"error": str(e)}
    elif cmd == "download":
        url, n = sys.argv[2], int(sys.argv[3])
        c, path = conn(url, 30)
        h = hashlib.sha256()
        total = 0
        node = None
        try:
            c.request("GET", path)
            r = c.getresponse()
            node = r.getheader("X-Node")
            while True:
                b = r.read(1 << 16)
                if not b:
                    break
                h.update(b)
                total += len(b)
            out = {"sha256": h.hexdigest(), "expected": expected_sha(n), "bytes": total, "node": node}
        except Exception as e:
            out = {"error": str(e), "bytes": total, "node": node}
    elif cmd == "upload":
        url, n = sys.argv[2], int(sys.argv[3])
        block = bytes(range(256)) * 256
        full, rest = divmod(n, len(block))
        def body():
            for _ in range(full):
                yield block
            yield block[:rest]
        c, path = conn(url, 30)
        try:
            c.request("POST", path, body=body(), headers={"Content-Length": str(n)})
            r = c.getresponse()
            sha, node = r.read().decode().split()
            out = {"sha256": sha, "expected": expected_sha(n), "node": node}
        except Exception as e:
            out = {"error": str(e)}
    elif cmd == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        try:
            s.sendto(b"hello", (sys.argv[2], int(sys.argv[3])))
            out = {"answer": s.recvfrom(2048)[0].decode()}
        except Exception as e:
            out = {"error": str(e)}
    elif cmd == "gap":
        url, secs = sys.argv[2], float(sys.argv[3])
        end = time.monotonic() + secs
        ok = failed = 0
        last_ok = time.monotonic()
        max_gap = 0.0
        failures = []
        while time.monotonic() < end:
            t = time.monotonic()
            try:
                st, _ = get(url, timeout=0.3)
                if st != 200:
                    raise Exception("status %d" % st)
                ok += 1
                max_gap = max(max_gap, t - last_ok)
                last_ok = t
            except Exception as e:
                failed += 1
                failures.append(str(e)[:60])
            time.sleep(max(0, 0.02 - (time.monotonic() - t)))
        out = {"ok": ok, "failed": failed, "max_gap_ms": int(max_gap * 1000), "failures": failures[:5]}
    print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
