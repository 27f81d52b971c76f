#!/usr/bin/env python3
"""Backend for tests/proxy.rs: answers every request with its name, the
peer address, which of its connections carried the request and the
request head it received, so a test can see what the proxy sent
(X-Forwarded-*, Connection) and how it reused connections.

GET /stats      -> JSON {peer address: connections accepted from it}
GET /hang       -> never answers (the proxy's response timeout)
GET /chunked    -> the usual body, chunked
GET /nolength   -> the usual body without a length, then close
GET /ws         -> with `Upgrade: echo`: 101, then every byte echoed
POST anything   -> length and sha256 of the body (Content-Length or chunked)
--close-reused  -> a connection's second request is met with a close
"""
import argparse, hashlib, http.server, json, socketserver, threading, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def setup(self):
        super().setup()
        srv = self.server
        with srv.lock:
            srv.next_conn += 1
            self.conn_id = srv.next_conn
            peer = self.client_address[0]
            srv.conns[peer] = srv.conns.get(peer, 0) + 1
        self.served = 0
    def _begin(self):
        self.served += 1
        if self.server.close_reused and self.served > 1:
            self.close_connection = True
            return False
        return True
    def _body(self, extra=""):
        head = "".join(f"{k}: {v}\n" for k, v in self.headers.items())
        return (f"name={self.server.node_name}\npeer={self.client_address[0]}\n"
                f"conn={self.conn_id}\npath={self.path}\n{extra}{head}").encode()
    def do_HEAD(self):
        if not self._begin():
            return
        body = self._body()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
    def do_GET(self):
        if not self._begin():
            return
        if self.path == "/stats":
            with self.server.lock:
                body = json.dumps(self.server.conns).encode()
        elif self.path == "/ws" and self.headers.get("Upgrade") == "echo":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            while True:
                d = self.connection.recv(4096)
                if not d:
                    break
                self.connection.sendall(d)
            self.close_connection = True
            return
        elif self.path == "/hang":
            time.sleep(3600)
            return
        else:
            body = self._body()
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
            return
        self.send_response(200)
        if self.path == "/nolength":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        if not self._begin():
            return
        h = hashlib.sha256()
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.read(2)
                h.update(data)
                n += len(data)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left > 0:
                b = self.rfile.read(min(left, 1 << 16))
                if not b:
                    break
                h.update(b)
                n += len(b)
                left -= len(b)
        body = self._body(f"len={n}\nsha256={h.hexdigest()}\n")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--port", type=int, default=8088)
ap.add_argument("--close-reused", action="store_true")
a = ap.parse_args()
s = Server(("0.0.0.0", a.port), Handler)
s.node_name = a.name
s.close_reused = a.close_reused
s.lock = threading.Lock()
s.conns = {}
s.next_conn = 0
s.serve_forever()
