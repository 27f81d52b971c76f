#!/usr/bin/env python3
"""Hostile LAN host for duet's fault tests; each command prints one JSON object.

arp-probe IFACE IP COUNT        send COUNT ARP requests for IP (100 ms apart) and
                                list every reply: {"replies": [mac, ...]}
arp-sniff IFACE,IFACE.. IP SECS count ARP frames whose sender IP is IP, per
                                interface (run in the bridge namespace on the
                                bridge ports): {"by_iface": {iface: n}}
arp-spoof IFACE IP MAC COUNT MS send COUNT gratuitous ARPs claiming IP at MAC
hb-capture IFACE SECS FILE      save UDP/694 payloads seen on IFACE (hex, one a line)
udp-send DST PORT FILE [MODE]   send each payload of FILE to DST:PORT; MODE
                                replay (as is), truncate (cut each at random),
                                flip (flip one bit), forge (random bytes of the
                                same length): {"sent": n}
udp-spoof DST PORT NSRC EACH   send EACH 100-byte junk datagrams from each of
                                NSRC forged source addresses 198.18.0.101.. :
                                {"sent": n}
garbage IFACE DSTMAC SECS IP    blast malformed frames at DSTMAC (truncated,
                                bad IPv4 headers, fragments, VLAN tags, odd
                                protocols, to IP): {"sent": n, "pps": r}
slowloris HOST PORT N SECS      hold N connections sending a header byte a
                                second: {"opened": n, "closed_by_server": k}
oversize HOST PORT              huge head, huge Content-Length, endless header:
                                {"answers": [...status lines...]}
"""
import json, os, random, select, socket, struct, sys, time

ETH_P_ALL = 0x0003


def mac_bytes(s):
    return bytes(int(x, 16) for x in s.split(":"))


def mac_str(b):
    return ":".join("%02x" % x for x in b)


def if_mac(iface):
    with open("/sys/class/net/%s/address" % iface) as f:
        return mac_bytes(f.read().strip())


def if_ip(iface):
    # First IPv4 address of iface, via SIOCGIFADDR.
    import fcntl
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", iface.encode()[:15]))
    return r[20:24]


def raw(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    return s


def arp_frame(op, src_mac, sender_mac, sender_ip, target_mac, target_ip, dst_mac):
    return (dst_mac + src_mac + b"\x08\x06" +
            struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) +
            sender_mac + sender_ip + target_mac + target_ip)


def parse_arp(f):
    if len(f) < 42 or f[12:14] != b"\x08\x06":
        return None
    op = struct.unpack("!H", f[20:22])[0]
    return op, f[22:28], f[28:32], f[38:42]


def arp_probe(iface, ip, count):
    s = raw(iface)
    s.setblocking(False)
    me, my_ip, tip = if_mac(iface), if_ip(iface), socket.inet_aton(ip)
    replies = []
    for _ in range(count):
        s.send(arp_frame(1, me, me, my_ip, b"\0" * 6, tip, b"\xff" * 6))
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            r, _, _ = select.select([s], [], [], max(0, end - time.monotonic()))
            if not r:
                continue
            f = s.recv(2048)
            a = parse_arp(f)
            if a and a[0] == 2 and a[2] == tip and f[0:6] == me:
                replies.append(mac_str(a[1]))
    return {"replies": replies}


def arp_sniff(ifaces, ip, secs):
    tip = socket.inet_aton(ip)
    socks = {}
    for i in ifaces.split(","):
        s = raw(i)
        s.setblocking(False)
        socks[s.fileno()] = (i, s)
    counts = {i: 0 for i in ifaces.split(",")}
    end = time.monotonic() + secs
    while time.monotonic() < end:
        r, _, _ = select.select([v[1] for v in socks.values()], [], [], max(0, end - time.monotonic()))
        for s in r:
            name = socks[s.fileno()][0]
            while True:
                try:
                    f, addr = s.recvfrom(2048)
                except BlockingIOError:
                    break
                if addr[2] == 4:  # PACKET_OUTGOING: sent towards the node, not by it
                    continue
                a = parse_arp(f)
                if a and a[2] == tip:
                    counts[name] += 1
    return {"by_iface": counts}


def arp_spoof(iface, ip, mac, count, ms):
    s = raw(iface)
    m, tip = mac_bytes(mac), socket.inet_aton(ip)
    for i in range(count):
        # Both flavours of gratuitous ARP: request and reply.
        s.send(arp_frame(1, m, m, tip, b"\0" * 6, tip, b"\xff" * 6))
        s.send(arp_frame(2, m, m, tip, b"\xff" * 6, tip, b"\xff" * 6))
        if i + 1 < count:
            time.sleep(ms / 1000)
    return {"sent": count * 2}


def hb_capture(iface, secs, path):
    s = raw(iface)
    s.setblocking(False)
    out = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], max(0, end - time.monotonic()))
        if not r:
            continue
        while True:
            try:
                f = s.recv(65536)
            except BlockingIOError:
                break
            if len(f) < 42 or f[12:14] != b"\x08\x00" or f[23] != 17:
                continue
            ihl = (f[14] & 15) * 4
            u = 14 + ihl
            dport = struct.unpack("!H", f[u + 2:u + 4])[0]
            ulen = struct.unpack("!H", f[u + 4:u + 6])[0]
            if dport == 694:
                out.append(f[u + 8:u + ulen].hex())
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")
    return {"captured": len(out)}


def udp_send(dst, port, path, mode):
    rng = random.Random(7)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        p = bytearray(bytes.fromhex(line))
        if mode == "truncate":
            p = p[: rng.randrange(0, len(p))]
        elif mode == "flip":
            i = rng.randrange(len(p))
            p[i] ^= 1 << rng.randrange(8)
        elif mode == "forge":
            # Keep the plausible header, randomise the rest (MAC included).
            p = p[:8] + bytearray(rng.randbytes(len(p) - 8))
        s.sendto(bytes(p), (dst, int(port)))
        n += 1
        time.sleep(0.002)
    return {"sent": n}


def udp_spoof(dst, port, nsrc, each):
    # IPPROTO_RAW implies IP_HDRINCL: the source address is ours to write.
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    d = socket.inet_aton(dst)
    payload = b"DUET" + bytes(96)
    n = 0
    for k in range(each):
        for i in range(nsrc):
            src = bytes([198, 18, 0, 101 + i % 150])
            if nsrc > 150:
                src = bytes([198, 18, 0, 101 + i % 150])
            udp = struct.pack("!HHHH", 10000 + i, port, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0, src, d)
            s.sendto(ip + udp, (dst, 0))
            n += 1
        time.sleep(0.01)
    return {"sent": n}


def garbage(iface, dst, secs, ip):
    s = raw(iface)
    rng = random.Random(42)
    d, me, vip = mac_bytes(dst), if_mac(iface), socket.inet_aton(ip)
    templates = []
    for _ in range(512):
        kind = rng.randrange(8)
        if kind == 0:  # truncated Ethernet/IPv4
            f = d + me + b"\x08\x00" + rng.randbytes(rng.randrange(0, 19))
        elif kind == 1:  # bad IPv4 version / IHL
            hdr = bytes([rng.choice([0x40, 0x41, 0x4f, 0x65, 0x00])]) + rng.randbytes(11) + b"\xc6\x12\x00\x42" + vip
            f = d + me + b"\x08\x00" + hdr + rng.randbytes(rng.randrange(0, 40))
        elif kind == 2:  # non-first fragment to the VIP
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, 1, 0x0010, 64, 6, 0, b"\xc6\x12\x00\x42", vip)
            f = d + me + b"\x08\x00" + hdr + rng.randbytes(40)
        elif kind == 3:  # VLAN tagged
            f = d + me + b"\x81\x00" + rng.randbytes(rng.randrange(4, 60))
        elif kind == 4:  # to the VIP with an unsupported protocol
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, rng.choice([1, 47, 50, 132]), 0, b"\xc6\x12\x00\x42", vip)
            f = d + me + b"\x08\x00" + hdr + rng.randbytes(20)
        elif kind == 5:  # TCP to the VIP cut inside the TCP header
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 22, 1, 0, 64, 6, 0, b"\xc6\x12\x00\x42", vip)
            f = d + me + b"\x08\x00" + hdr + rng.randbytes(2)
        elif kind == 6:  # malformed ARP
            f = d + me + b"\x08\x06" + rng.randbytes(rng.randrange(0, 40))
        else:  # pure noise with a random ethertype
            f = d + me + rng.randbytes(rng.randrange(2, 200))
        if len(f) < 14:
            f = f + b"\0" * (14 - len(f))
        templates.append(f)
    n = 0
    t0 = time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        for f in templates:
            try:
                s.send(f)
                n += 1
            except OSError:
                pass
    el = time.monotonic() - t0
    return {"sent": n, "pps": int(n / el)}


def slowloris(host, port, n, secs):
    conns = []
    for _ in range(n):
        try:
            c = socket.create_connection((host, port), timeout=1)
            c.setblocking(False)
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            conns.append(c)
        except OSError:
            pass
    opened = len(conns)
    closed = 0
    end = time.monotonic() + secs
    while time.monotonic() < end and conns:
        alive = []
        for c in conns:
            try:
                c.send(b"X-a: b\r\n")
                alive.append(c)
            except OSError:
                closed += 1
                c.close()
        conns = alive
        time.sleep(1)
    for c in conns:
        c.close()
    return {"opened": opened, "closed_by_server": closed}


def oversize(host, port):
    answers = []
    cases = [
        b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
        b"POST /api/failover HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"GET /" + b"x" * 100000 + b" HTTP/1.1\r\n\r\n",
        b"POST /api/backends/web1/drain HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]
    for req in cases:
        try:
            c = socket.create_connection((host, port), timeout=5)
            try:
                c.sendall(req)
            except OSError:
                pass
            c.settimeout(5)
            data = b""
            try:
                while True:
                    b = c.recv(4096)
                    if not b:
                        break
                    data += b
            except OSError:
                pass
            answers.append(data.split(b"\r\n")[0].decode(errors="replace"))
            c.close()
        except OSError as e:
            answers.append("error: %s" % e)
    return {"answers": answers}


def main():
    a = sys.argv[1:]
    cmd = a[0]
    if cmd == "arp-probe":
        out = arp_probe(a[1], a[2], int(a[3]))
    elif cmd == "arp-sniff":
        out = arp_sniff(a[1], a[2], float(a[3]))
    elif cmd == "arp-spoof":
        out = arp_spoof(a[1], a[2], a[3], int(a[4]), float(a[5]))
    elif cmd == "hb-capture":
        out = hb_capture(a[1], float(a[2]), a[3])
    elif cmd == "udp-send":
        out = udp_send(a[1], a[2], a[3], a[4] if len(a) > 4 else "replay")
    elif cmd == "udp-spoof":
        out = udp_spoof(a[1], int(a[2]), int(a[3]), int(a[4]))
    elif cmd == "garbage":
        out = garbage(a[1], a[2], float(a[3]), a[4])
    elif cmd == "slowloris":
        out = slowloris(a[1], int(a[2]), int(a[3]), float(a[4]))
    elif cmd == "oversize":
        out = oversize(a[1], int(a[2]))
    else:
        raise SystemExit("unknown command " + cmd)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
