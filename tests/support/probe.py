#!/usr/bin/env python3
"""Connection probe for duet's health tests; prints one JSON object.

series URL SECONDS PERIOD_MS FIRST_PORT
    opens a new HTTP connection every PERIOD_MS for SECONDS, the k-th from
    source port FIRST_PORT + k (the caller keeps ranges apart, and below the
    kernel's ephemeral range, so no two connections share a 4-tuple);
    prints a line "started", then {"events": [[unix_time, answer, port], ...]}, answer being the body (the
    node name) or "error: ..." (refused, timed out). Wall-clock times, so
    the test can relate them to the moment it stopped a server.
once URL PORT
    one request from source port PORT: {"answer": ...}
"""
import json, socket, sys, time
from urllib.parse import urlparse

def request(url, port, timeout=0.3):
    u = urlparse(url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(timeout)
    try:
        s.bind(("", port))
        s.connect((u.hostname, u.port or 80))
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % (u.path or "/", u.hostname)).encode())
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head else b"?"
        if status != b"200":
            return "error: status " + status.decode(errors="replace")
        return body.decode(errors="replace").strip()
    except Exception as e:
        return "error: " + str(e)[:60]
    finally:
        s.close()

def main():
    cmd = sys.argv[1]
    if cmd == "series":
        url, secs, period, port = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]) / 1000, int(sys.argv[5])
        events = []
        # Tells the caller the interpreter is up: the time that takes varies.
        print("started", flush=True)
        end = time.monotonic() + secs
        while time.monotonic() < end:
            start = time.monotonic()
            t = time.time()
            events.append([t, request(url, port), port])
            port += 1
            time.sleep(max(0, period - (time.monotonic() - start)))
        out = {"events": events}
    elif cmd == "once":
        out = {"answer": request(sys.argv[2], int(sys.argv[3]), timeout=1.0)}
    else:
        out = {"error": "unknown command " + cmd}
    print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
