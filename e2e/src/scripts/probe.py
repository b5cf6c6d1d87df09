# Network probe client; prints exactly one JSON line and exits 0 (the verdict is in the JSON).
#   probe.py tcp HOST PORT [TIMEOUT] [SEND]  connect, optionally send SEND, read once
#   probe.py udp HOST PORT [TIMEOUT]   connect, send, wait for a reply
#   probe.py icmp HOST [TIMEOUT]       unprivileged ICMP echo (needs ping_group_range)
# {"ok": bool, "stage": "socket|connect|send|recv|done", "errno": "ECONNREFUSED"|null,
#  "error": str|null, "recv": str}
import errno, json, socket, sys


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def out(ok, stage, err=None, recv=b""):
    name = None
    if isinstance(err, OSError) and err.errno is not None:
        name = errno.errorcode.get(err.errno, str(err.errno))
    elif isinstance(err, socket.timeout):
        name = "TIMEOUT"
    print(json.dumps({"ok": ok, "stage": stage, "errno": name,
                      "error": None if err is None else str(err),
                      "recv": recv.decode("utf-8", "replace")}), flush=True)
    sys.exit(0)


mode, host = sys.argv[1], sys.argv[2]
if mode == "icmp":
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    try:
        s = socket.socket(family(host), socket.SOCK_DGRAM,
                          socket.IPPROTO_ICMP if family(host) == socket.AF_INET else socket.IPPROTO_ICMPV6)
    except OSError as e:
        out(False, "socket", e)
    s.settimeout(timeout)
    kind = 8 if family(host) == socket.AF_INET else 128
    try:
        s.connect((host, 0))
        s.send(bytes([kind, 0, 0, 0, 0, 0, 0, 1]) + b"palisade")
    except (OSError, socket.timeout) as e:
        out(False, "send", e)
    try:
        data = s.recv(2048)
    except (OSError, socket.timeout) as e:
        out(False, "recv", e)
    out(True, "done", None, data[8:])

port = int(sys.argv[3])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
s = socket.socket(family(host), kind)
s.settimeout(timeout)
try:
    s.connect((host, port))
except (OSError, socket.timeout) as e:
    out(False, "connect", e)
if mode == "udp":
    try:
        s.send(b"palisade-probe\n")
    except (OSError, socket.timeout) as e:
        out(False, "send", e)
    try:
        data = s.recv(2048)
    except (OSError, socket.timeout) as e:
        out(False, "recv", e)
    out(True, "done", None, data)
if len(sys.argv) > 5:
    try:
        s.sendall(sys.argv[5].encode())
    except (OSError, socket.timeout) as e:
        out(False, "send", e)
try:
    data = s.recv(2048)
except socket.timeout:
    data = b""
except OSError as e:
    out(False, "recv", e)
out(True, "done", None, data)
