#!/usr/bin/env python3
"""HTTP/1.1 client for tests/proxy.rs's keep-alive cases, on raw sockets so
the test sees exactly which requests shared a connection.

seq HOST PORT N [--path P] [--host H] [--method M] [--cookies] [--close]
    N requests one after another, reconnecting only when the proxy closes.
pipeline HOST PORT N
    N requests (paths /p0 .. /pN-1) in one write, then N responses read.
idle HOST PORT
    One request, then the time until the proxy closes the idle connection.
partial HOST PORT
    Half a request head, then what the proxy answers and after how long.
upgrade HOST PORT
    `Upgrade: echo` to /ws, then two lines sent and read back raw.
Prints one JSON object.
"""
import argparse, json, socket, time

class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=15)
        self.buf = b""
    def _more(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError
        self.buf += d
    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line
    def _exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
    def response(self, method="GET"):
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._more()
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for l in lines[1:]:
                k, v = l.split(":", 1)
                k = k.strip().lower()
                headers[k] = (headers[k] + ", " if k in headers else "") + v.strip()
            if 100 <= status < 200:
                continue
            break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower().endswith("chunked"):
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                body += self._exact(size)
                self._exact(2)
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:
            try:
                while True:
                    self._more()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return status, headers, body.decode("latin-1")

def request(method, path, host, extra=""):
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").encode()

def summary(r):
    status, headers, body = r
    fields = dict(l.split("=", 1) for l in body.splitlines() if "=" in l and ":" not in l.split("=", 1)[0])
    return {"status": status, "connection": headers.get("connection"),
            "set_cookie": headers.get("set-cookie"), "name": fields.get("name"),
            "conn": fields.get("conn"), "path": fields.get("path"), "body": body}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int, nargs="?", default=1)
    ap.add_argument("--path", default="/")
    ap.add_argument("--vhost")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--cookies", action="store_true")
    ap.add_argument("--close", action="store_true")
    ap.add_argument("--jar", help="a cookie to send from the first request")
    a = ap.parse_args()
    vhost = a.vhost or f"{a.host}:{a.port}"
    out = {"responses": [], "connections": 0}
    if a.mode == "seq":
        c, jar = None, a.jar
        for i in range(a.n):
            if c is None:
                c = Conn(a.host, a.port)
                out["connections"] += 1
            extra = f"Cookie: {jar}\r\n" if jar else ""
            if a.close:
                extra += "Connection: close\r\n"
            if a.method == "POST":
                extra += "Content-Length: 5\r\n"
            c.s.sendall(request(a.method, a.path, vhost, extra) + (b"hello" if a.method == "POST" else b""))
            s = summary(c.response(a.method))
            out["responses"].append(s)
            if a.cookies and s["set_cookie"]:
                jar = s["set_cookie"].split(";")[0]
            if (s["connection"] or "").lower() == "close":
                c.s.close()
                c = None
    elif a.mode == "pipeline":
        c = Conn(a.host, a.port)
        out["connections"] = 1
        c.s.sendall(b"".join(request("GET", f"/p{i}", vhost) for i in range(a.n)))
        for _ in range(a.n):
            out["responses"].append(summary(c.response()))
    elif a.mode == "idle":
        c = Conn(a.host, a.port)
        c.s.sendall(request("GET", a.path, vhost))
        out["responses"].append(summary(c.response()))
        start = time.monotonic()
        try:
            c._more()
            out["extra"] = True
        except (EOFError, ConnectionResetError):
            pass
        except socket.timeout:
            out["timeout"] = True
        out["closed_after"] = time.monotonic() - start
    elif a.mode == "partial":
        c = Conn(a.host, a.port)
        start = time.monotonic()
        c.s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        out["responses"].append(summary(c.response()))
        out["answered_after"] = time.monotonic() - start
    elif a.mode == "upgrade":
        c = Conn(a.host, a.port)
        c.s.sendall(request("GET", "/ws", vhost, "Upgrade: echo\r\nConnection: Upgrade\r\n"))
        while b"\r\n\r\n" not in c.buf:
            c._more()
        head, c.buf = c.buf.split(b"\r\n\r\n", 1)
        out["status"] = int(head.split()[1])
        out["head"] = head.decode("latin-1")
        for word in (b"ping\n", b"pong\n"):
            c.s.sendall(word)
            while word not in c.buf:
                c._more()
            c.buf = c.buf.split(word, 1)[1]
        out["echoed"] = True
    print(json.dumps(out))

main()
