# SO_ORIGINAL_DST reporter: python3 origdst.py PORT
# Listens on 0.0.0.0:PORT and [::]:PORT (v6only). For each connection prints a JSON line
# {"family": 4|6, "peer": ..., "orig_dst": "ip:port" | "[ip]:port" | null, "error": ...}
# and sends "origdst <orig_dst>\n" to the client, then closes.
import json, select, socket, struct, sys

SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST
port = int(sys.argv[1])


def original_dst(conn, fam):
    if fam == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        dport = struct.unpack("!H", raw[2:4])[0]
        return "%s:%d" % (socket.inet_ntop(socket.AF_INET, raw[4:8]), dport)
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    dport = struct.unpack("!H", raw[2:4])[0]
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw[8:24]), dport)


socks = {}
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    s.listen(128)
    socks[s] = fam
print(json.dumps({"ready": True}), flush=True)
while True:
    readable, _, _ = select.select(list(socks), [], [])
    for s in readable:
        conn, peer = s.accept()
        fam = socks[s]
        record = {"family": 4 if fam == socket.AF_INET else 6, "peer": peer[0]}
        try:
            record["orig_dst"] = original_dst(conn, fam)
        except OSError as e:
            record["orig_dst"] = None
            record["error"] = str(e)
        print(json.dumps(record), flush=True)
        try:
            conn.sendall(("origdst %s\n" % record["orig_dst"]).encode())
        except OSError:
            pass
        conn.close()
