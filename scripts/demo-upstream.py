#!/usr/bin/env python3
"""The demo's upstream: an HTTPS server that answers every request with the
method, path and headers it received, as JSON (Authorization only as a
fingerprint), and logs the full headers on stderr. Run by scripts/demo inside a
network namespace the demo creates; it never listens anywhere else.

usage: demo-upstream.py ADDR PORT CERT KEY
"""
import hashlib
import http.server
import json
import ssl
import sys


class Echo(http.server.BaseHTTPRequestHandler):
    server_version = "palisade-demo-echo"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        # The demo shows what arrived here on the upstream's side (stderr);
        # the answer to the client carries only a fingerprint of the
        # Authorization header, so the agent never reads the credential back.
        sys.stderr.write(
            "upstream: %s %s — received headers: %s\n"
            % (self.command, self.path, json.dumps(dict(self.headers.items())))
        )
        sys.stderr.flush()
        shown = {}
        for k, v in self.headers.items():
            if k.lower() == "authorization":
                v = "<sha256:%s…>" % hashlib.sha256(v.encode()).hexdigest()[:12]
            shown[k] = v
        body = json.dumps(
            {"method": self.command, "path": self.path, "headers": shown}, indent=2
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, fmt, *args):
        pass


def main():
    addr, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    server = http.server.ThreadingHTTPServer((addr, port), Echo)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
