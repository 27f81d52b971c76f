#!/usr/bin/env python3
"""Counts ARP frames announcing an address, seen on an interface.

arpwatch.py IFACE IP SECONDS -> {"announcements": n, "macs": [...]}
An announcement is an ARP frame whose sender IP is IP (gratuitous ARP or a
reply); used to prove a director re-announced the VIP.
"""
import json, socket, struct, sys, time

iface, ip, secs = sys.argv[1], socket.inet_aton(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0))
s.settimeout(0.2)
end = time.monotonic() + secs
n, macs = 0, set()
print("ready", file=sys.stderr, flush=True)
while time.monotonic() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if len(f) < 42:
        continue
    sha, spa = f[22:28], f[28:32]
    if spa == ip:
        n += 1
        macs.add(":".join("%02x" % b for b in sha))
print(json.dumps({"announcements": n, "macs": sorted(macs)}), flush=True)
