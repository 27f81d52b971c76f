#!/usr/bin/env python3
"""Backend for tests/proxy.rs: answers every request with its name, the
peer address and the request head it received, so a test can see what the
proxy sent (X-Forwarded-*, Connection)."""
import argparse, http.server, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        head = "".join(f"{k}: {v}\n" for k, v in self.headers.items())
        body = f"name={self.server.node_name}\npeer={self.client_address[0]}\n{head}".encode()
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
a = ap.parse_args()
s = Server(("0.0.0.0", a.port), Handler)
s.node_name = a.name
s.serve_forever()
