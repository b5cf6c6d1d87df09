# Escape attempts of a capability-less agent; prints exactly one JSON line and exits 0
# (the verdict is in the JSON, same shape as probe.py):
#   escape.py udp|tcp HOST PORT [options]
#     --sport N        bind this source port first (SO_REUSEADDR)
#     --dev IF         SO_BINDTODEVICE IF (no privilege needed since Linux 5.7)
#     --unicast-if IF  IP_UNICAST_IF / IPV6_UNICAST_IF IF
#     --scope IF       IPv6 scope id IF (link-local destinations)
#     --timeout S      socket timeout (default 2)
#     --payload TEXT   what to send (default "palisade-escape")
# {"ok": bool, "stage": "socket|bind|connect|send|recv|done", "errno": str|null,
#  "error": str|null, "recv": str}
import argparse, errno, json, socket, struct, sys

IP_UNICAST_IF = 50
IPV6_UNICAST_IF = 76

p = argparse.ArgumentParser()
p.add_argument("proto", choices=["udp", "tcp"])
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("--sport", type=int)
p.add_argument("--dev")
p.add_argument("--unicast-if")
p.add_argument("--scope")
p.add_argument("--timeout", type=float, default=2.0)
p.add_argument("--payload", default="palisade-escape")
a = p.parse_args()


def out(ok, stage, err=None, recv=b""):
    name = None
    if isinstance(err, socket.timeout):
        name = "TIMEOUT"
    elif isinstance(err, OSError) and err.errno is not None:
        name = errno.errorcode.get(err.errno, str(err.errno))
    print(json.dumps({"ok": ok, "stage": stage, "errno": name,
                      "error": None if err is None else str(err),
                      "recv": recv.decode("utf-8", "replace")}), flush=True)
    sys.exit(0)


v6 = ":" in a.host
fam = socket.AF_INET6 if v6 else socket.AF_INET
try:
    s = socket.socket(fam, socket.SOCK_DGRAM if a.proto == "udp" else socket.SOCK_STREAM)
except OSError as e:
    out(False, "socket", e)
s.settimeout(a.timeout)
try:
    if a.dev:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.dev.encode())
    if a.unicast_if:
        index = socket.if_nametoindex(a.unicast_if)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_IF, struct.pack("I", index))
        else:
            # IPv4 wants the index in network byte order.
            s.setsockopt(socket.IPPROTO_IP, IP_UNICAST_IF, struct.pack("!I", index))
    if a.sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if v6 else "0.0.0.0", a.sport))
except OSError as e:
    out(False, "bind", e)
dest = (a.host, a.port)
if v6:
    dest = (a.host, a.port, 0, socket.if_nametoindex(a.scope) if a.scope else 0)
try:
    s.connect(dest)
except (OSError, socket.timeout) as e:
    out(False, "connect", e)
try:
    s.send(a.payload.encode())
except (OSError, socket.timeout) as e:
    out(False, "send", e)
try:
    data = s.recv(2048)
except (OSError, socket.timeout) as e:
    out(False, "recv", e)
out(True, "done", None, data)
