# An HTTP/1 upstream that reports exactly what reached it, one JSON line per event:
#   {"event": "request", "conn": n, "port": p, "line": "GET /x HTTP/1.1", "headers": {...}}
#   {"event": "body", "conn": n, "complete": bool, "length": bytes, "data": first 200 chars}
#   {"event": "switched", "conn": n, "protocol": "h2c"}
#   {"event": "closed", "conn": n, "port": p, "bytes": total received}
# Header names are lower-cased; repeated headers are joined with ", ".
# It WOULD switch protocols: a request offering `Upgrade` (h2c, websocket, anything) is
# answered 101 naming the first offered protocol, and for h2c the HTTP/2 server preface
# (an empty SETTINGS frame) follows — what a real h2c server does. Other requests get
# `200 sink ok` (keep-alive). Bodies are read by Content-Length or chunked framing; a body
# that ends early or has broken chunk framing is reported with "complete": false.
# argv: plain_port tls_port cert key  (tls_port 0 = no TLS listener)
import json, socket, ssl, sys, threading

plain_port, tls_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()
counter = [0]


def emit(**kw):
    with lock:
        print(json.dumps(kw), flush=True)


class Conn:
    def __init__(self, sock, n):
        self.sock, self.n, self.buf, self.total = sock, n, b"", 0

    def fill(self):
        try:
            data = self.sock.recv(65536)
        except (OSError, ssl.SSLError):
            data = b""
        self.total += len(data)
        self.buf += data
        return bool(data)

    def line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 65536 or not self.fill():
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def take(self, n):
        while len(self.buf) < n:
            if not self.fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_body(c, headers):
    """(complete, body bytes)."""
    if "transfer-encoding" in headers:
        body = b""
        while True:
            size = c.line()
            if size is None:
                return False, body
            try:
                n = int(size.split(b";")[0], 16)
            except ValueError:
                return False, body
            if n == 0:
                while True:
                    t = c.line()
                    if t is None:
                        return False, body
                    if t == b"":
                        return True, body
            data = c.take(n)
            if data is None:
                return False, body + c.buf
            body += data
            if c.take(2) != b"\r\n":
                return False, body
    n = int(headers.get("content-length", "0") or 0)
    data = c.take(n)
    if data is None:
        return False, c.buf
    return True, data


def handle(sock, port):
    with lock:
        counter[0] += 1
        n = counter[0]
    c = Conn(sock, n)
    try:
        while True:
            line = c.line()
            if line is None or line == b"":
                break
            headers = {}
            while True:
                h = c.line()
                if h is None:
                    break
                if h == b"":
                    break
                name, _, value = h.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip()
                headers[name] = headers[name] + ", " + value if name in headers else value
            emit(event="request", conn=n, port=port, line=line.decode("latin-1"), headers=headers)
            complete, body = read_body(c, headers)
            if body or not complete:
                emit(event="body", conn=n, complete=complete, length=len(body),
                     data=body[:200].decode("latin-1"))
            if not complete:
                break
            if "upgrade" in headers:
                proto = headers["upgrade"].split(",")[0].strip()
                sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                              "Upgrade: %s\r\n\r\n" % proto).encode())
                if proto.lower() == "h2c":
                    sock.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                emit(event="switched", conn=n, protocol=proto)
                while c.fill():
                    pass
                break
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nsink ok\n")
    except (OSError, ssl.SSLError):
        pass
    finally:
        emit(event="closed", conn=n, port=port, bytes=c.total)
        try:
            sock.close()
        except OSError:
            pass


def serve(port, ctx):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(64)
    while True:
        s, _ = srv.accept()

        def run(s=s):
            if ctx is not None:
                try:
                    s = ctx.wrap_socket(s, server_side=True)
                except (OSError, ssl.SSLError):
                    s.close()
                    return
            handle(s, port)

        threading.Thread(target=run, daemon=True).start()


if tls_port:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    threading.Thread(target=serve, args=(tls_port, ctx), daemon=True).start()
serve(plain_port, None)
