#!/usr/bin/env python3
"""A user-space netem: relays Ethernet frames between two interfaces with
random loss and delay/jitter, in both directions.

The test kernel has no sch_netem (nor act_gact, nor nft queue), so the fault
tests cut a node's bridge port out of the bridge and put this relay in the
gap:  node eth0 <-veth-> A  [netem.py]  B <-veth-> bridge.

    netem.py A B --loss 0.2 --delay-ms 100 --jitter-ms 100 [--seed N]

Delay is uniform in [delay-jitter, delay+jitter] per frame, so frames
reorder, as with `tc netem delay 100ms 100ms`. Frames whose L4 checksum was
left to offload (TP_STATUS_CSUMNOTREADY) get it completed here, or the far
end would drop them. Segmentation offloads must be off on the hosts whose
traffic crosses the relay (the harness does that). Runs until killed;
SIGTERM/SIGINT print a JSON summary on stdout.

With --stall-file F the relay appends to F a line for each time it ran
more than 20 ms late (took a frame from its socket that long after the
kernel received it, sent one after its due time, or woke from its wait), with the lateness in ms; one line per episode and each worse one. A test can tell
a relay that was starved of CPU (a link that went silent for that long)
from a fault of the node under test.
"""
import argparse, heapq, json, random, select, signal, socket, struct, sys, time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_CSUMNOTREADY = 1 << 3
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35  # also SCM_TIMESTAMPNS; Python names neither


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def fix_l4_checksum(frame):
    """Recompute the TCP/UDP checksum of an untagged IPv4 frame."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    total = struct.unpack("!H", frame[16:18])[0]
    l4 = 14 + ihl
    end = min(len(frame), 14 + total)
    if proto == 6:
        off = 16
    elif proto == 17:
        off = 6
    else:
        return frame
    if end - l4 < off + 2:
        return frame
    f = bytearray(frame)
    f[l4 + off : l4 + off + 2] = b"\0\0"
    pseudo = bytes(f[26:34]) + struct.pack("!BBH", 0, proto, end - l4)
    c = csum(pseudo + bytes(f[l4:end]))
    if proto == 17 and c == 0:
        c = 0xFFFF
    f[l4 + off : l4 + off + 2] = struct.pack("!H", c)
    return bytes(f)


def open_if(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((name, 0))
    s.setblocking(False)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stall-file")
    args = ap.parse_args()
    episode = [0.0, 0.0]  # when the last line was written, its lateness

    def late_by(seconds):
        ms = seconds * 1000.0
        if not args.stall_file or ms <= 20.0:
            return
        t = time.monotonic()
        if t - episode[0] > 0.2 or ms > episode[1]:
            episode[:] = [t, ms]
            with open(args.stall_file, "a") as f:
                f.write("%.1f\n" % ms)

    rng = random.Random(args.seed)
    socks = {args.a: open_if(args.a), args.b: open_if(args.b)}
    other = {args.a: socks[args.b], args.b: socks[args.a]}
    stats = {"relayed": 0, "lost": 0, "fixed_csum": 0, "send_errors": 0}
    pending = []  # heap of (due, seq, sock, frame)
    seq = 0
    stop = []

    def on_signal(*_):
        stop.append(1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("ready", file=sys.stderr, flush=True)
    fds = {s.fileno(): name for name, s in socks.items()}
    while not stop:
        now = time.monotonic()
        timeout = 0.05
        if pending:
            timeout = max(0.0, min(timeout, pending[0][0] - now))
        try:
            ready, _, _ = select.select(list(socks.values()), [], [], timeout)
        except InterruptedError:
            continue
        late_by(time.monotonic() - now - timeout)
        for s in ready:
            name = fds[s.fileno()]
            while True:
                try:
                    data, anc, _flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(64) + socket.CMSG_SPACE(16))
                except BlockingIOError:
                    break
                except InterruptedError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                for lvl, typ, cdata in anc:
                    if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(cdata) >= 16:
                        sec, nsec = struct.unpack("qq", cdata[:16])
                        late_by(time.time() - (sec + nsec / 1e9))
                    if lvl == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= 4:
                        status = struct.unpack("I", cdata[:4])[0]
                        if status & TP_STATUS_CSUMNOTREADY:
                            data = fix_l4_checksum(data)
                            stats["fixed_csum"] += 1
                if rng.random() < args.loss:
                    stats["lost"] += 1
                    continue
                d = args.delay_ms + rng.uniform(-args.jitter_ms, args.jitter_ms)
                seq += 1
                heapq.heappush(pending, (time.monotonic() + max(0.0, d) / 1000.0, seq, other[name], data))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            due, _, out, data = heapq.heappop(pending)
            late_by(now - due)
            try:
                out.send(data)
                stats["relayed"] += 1
            except OSError:
                stats["send_errors"] += 1
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
