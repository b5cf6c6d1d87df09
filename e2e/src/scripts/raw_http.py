# A raw HTTP/1 client for probes the usual clients refuse to send. One argument, a JSON
# object:
#   host, port   where the request is for
#   via          "direct" (connect to host:port; captured transparently in the pod),
#                "proxy" (send the payload to the explicit proxy 127.0.0.1:15080: use
#                absolute-form targets), or "connect" (CONNECT host:port on 15080, then
#                send the payload inside the tunnel)
#   tls          CA bundle path: TLS (ALPN http/1.1, SNI = host) to the target, else plain
#   payload      the bytes to send (Python string escapes: "\r\n", "\x00")
#   chunks       optional list of further payloads sent after `pause` seconds each
#   pause        seconds between chunks (default 0.3)
#   shutdown     close the write side after sending (plain only)
#   all          read until the connection closes (default: stop after one response)
# Prints one JSON line: {"status": first response line, "data": what came back (first 2000
# chars), "how": "answered" | "eof" | "reset" | "timeout", "error": send error or null}.
import json, socket, ssl, sys, time

spec = json.loads(sys.argv[1])


def raw(s):
    return s.encode().decode("unicode_escape").encode("latin-1")


host, port, via = spec["host"], int(spec["port"]), spec.get("via", "direct")
s = socket.create_connection(("127.0.0.1", 15080) if via in ("proxy", "connect") else (host, port), timeout=20)
pre = b""
if via == "connect":
    s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    while b"\r\n\r\n" not in pre:
        ch = s.recv(1)
        if not ch:
            break
        pre += ch
    if b" 200 " not in pre.split(b"\r\n", 1)[0]:
        print(json.dumps({"status": pre.split(b"\r\n", 1)[0].decode("latin-1"), "data": pre.decode("latin-1"), "how": "connect", "error": None}))
        sys.exit(0)
t = s
if spec.get("tls"):
    ctx = ssl.create_default_context(cafile=spec["tls"])
    ctx.set_alpn_protocols(["http/1.1"])
    t = ctx.wrap_socket(s, server_hostname=host)
error = None
try:
    t.sendall(raw(spec["payload"]))
    for more in spec.get("chunks", []):
        time.sleep(spec.get("pause", 0.3))
        t.sendall(raw(more))
    if spec.get("shutdown"):
        t.shutdown(socket.SHUT_WR)
except (BrokenPipeError, ConnectionResetError, ssl.SSLError) as e:
    error = type(e).__name__


def one_response(data):
    """Whether `data` holds a complete response with a Content-Length (or a 101 head)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if b" 101 " in head.split(b"\r\n", 1)[0]:
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


data, how = b"", "eof"
try:
    while True:
        chunk = t.recv(65536)
        if not chunk:
            break
        data += chunk
        if not spec.get("all") and one_response(data):
            how = "answered"
            break
except ConnectionResetError:
    how = "reset"
except socket.timeout:
    how = "timeout"
except ssl.SSLError:
    how = "tls-error"
print(json.dumps({"status": data.split(b"\r\n", 1)[0].decode("latin-1"), "data": data[:2000].decode("latin-1"), "how": how, "error": error}))
