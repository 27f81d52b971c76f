#!/usr/bin/env python3
"""Test web server for duet's netns tests: a real HTTP server on a node.

GET /            -> the node name (one line)
GET /ldirector.html -> "Test Page <name>" (health-check target)
GET /bytes?n=N&rate=R -> N deterministic bytes, optionally paced to R bytes/s
POST /sha256     -> sha256 hex of the request body
UDP (--udp PORT) -> every datagram is answered with the node name
"""
import argparse, hashlib, http.server, socket, socketserver, sys, threading, time
from urllib.parse import urlparse, parse_qs

def pattern(n):
    # Deterministic content so clients can compute the expected sha256.
    block = bytes(range(256)) * 256  # 64 KiB
    full, rest = divmod(n, len(block))
    return block, full, rest

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def _send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        u = urlparse(self.path)
        name = self.server.node_name
        if u.path == "/":
            return self._send(200, (name + "\n").encode())
        if u.path == "/ldirector.html":
            body = self.server.check_body.replace("{name}", name)
            return self._send(200, body.encode())
        if u.path == "/bytes":
            q = parse_qs(u.query)
            n = int(q.get("n", ["0"])[0])
            rate = float(q.get("rate", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.send_header("X-Node", name)
            self.end_headers()
            block, full, rest = pattern(n)
            start = time.monotonic()
            sent = 0
            try:
                for chunk in [block] * full + [block[:rest]]:
                    step = 16384 if rate else len(chunk)
                    for i in range(0, len(chunk), step):
                        part = chunk[i:i + step]
                        self.wfile.write(part)
                        sent += len(part)
                        if rate:
                            ahead = sent / rate - (time.monotonic() - start)
                            if ahead > 0:
                                time.sleep(ahead)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self._send(404, b"not found\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left > 0:
            b = self.rfile.read(min(left, 1 << 16))
            if not b:
                break
            h.update(b)
            left -= len(b)
        self._send(200, (h.hexdigest() + " " + self.server.node_name + "\n").encode())

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

def udp_loop(port, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(2048)
        try:
            s.sendto(name.encode(), addr)
        except OSError:
            # A forged source may be unreachable: that must not end the loop.
            pass

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--udp", type=int)
    ap.add_argument("--check-body", default="Test Page {name}")
    a = ap.parse_args()
    if a.udp:
        threading.Thread(target=udp_loop, args=(a.udp, a.name), daemon=True).start()
    srv = Server((a.bind, a.port), Handler)
    srv.node_name = a.name
    srv.check_body = a.check_body
    print("ready", flush=True)
    srv.serve_forever()

if __name__ == "__main__":
    main()
