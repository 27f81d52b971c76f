#!/usr/bin/env python3
"""Fake servers for tests/checks.rs, stdlib only: checksrv.py KIND PORT [--wrong].

smtp/pop/imap/ftp/nntp send their greeting (with --wrong, a refusal) and
answer QUIT; mysql sends a handshake packet (--wrong: an error packet);
pgsql answers SSLRequest with N (--wrong: E); dns answers every query with
A 198.18.0.20 (--wrong: SERVFAIL); udp echoes (--wrong: answers "nope").
Prints "ready" once listening."""
import socket
import struct
import sys
import threading

GREETINGS = {
    "smtp": (b"220 mail.test ESMTP\r\n", b"554 no service\r\n"),
    "ftp": (b"220 ftp.test ready\r\n", b"421 too many users\r\n"),
    "pop": (b"+OK POP3 ready\r\n", b"-ERR busy\r\n"),
    "imap": (b"* OK IMAP4rev1 ready\r\n", b"* BYE busy\r\n"),
    "nntp": (b"200 news.test ready\r\n", b"502 no permission\r\n"),
}


def tcp_server(port, handle):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, handle), daemon=True).start()


def serve(c, handle):
    try:
        c.settimeout(5)
        handle(c)
    except OSError:
        pass
    finally:
        c.close()


def banner(kind, wrong):
    def handle(c):
        c.sendall(GREETINGS[kind][1 if wrong else 0])
        if c.recv(512):
            c.sendall(b"221 bye\r\n")
    return handle


def mysql(wrong):
    def handle(c):
        if wrong:
            payload = b"\xff\x10\x04Too many connections"
        else:
            payload = b"\x0a8.0.36-fake\x00" + struct.pack("<I", 7) + b"abcdefgh\x00"
        c.sendall(struct.pack("<I", len(payload))[:3] + b"\x00" + payload)
        c.recv(512)
    return handle


def pgsql(wrong):
    def handle(c):
        if c.recv(8) == struct.pack(">II", 8, 80877103):
            c.sendall(b"E" if wrong else b"N")
    return handle


def dns_answer(q, wrong):
    qid, _flags, qd = struct.unpack(">HHH", q[:6])
    # Question: labels up to the zero byte, then type and class.
    end = q.index(b"\x00", 12) + 5
    question = q[12:end]
    rcode = 2 if wrong else 0
    an = 0 if wrong else 1
    head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, an, 0, 0)
    out = head + question
    if not wrong:
        out += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("198.18.0.20")
    return out


def udp_server(port, answer):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        try:
            s.sendto(answer(data), peer)
        except (ValueError, struct.error, OSError):
            pass


def main():
    kind, port = sys.argv[1], int(sys.argv[2])
    wrong = "--wrong" in sys.argv[3:]
    if kind in GREETINGS:
        tcp_server(port, banner(kind, wrong))
    elif kind == "mysql":
        tcp_server(port, mysql(wrong))
    elif kind == "pgsql":
        tcp_server(port, pgsql(wrong))
    elif kind == "dns":
        udp_server(port, lambda q: dns_answer(q, wrong))
    elif kind == "udp":
        udp_server(port, lambda d: b"nope" if wrong else d)
    else:
        sys.exit("unknown kind " + kind)


if __name__ == "__main__":
    main()
