# UDP sink: python3 udp_sink.py PORT — prints one JSON line per datagram
# {"from": ip, "to": ip, "data": text} and echoes it back from the address it was sent to
# (IP_PKTINFO / IPV6_PKTINFO), so connected clients accept the reply even when the
# namespace has several addresses.
import json, select, socket, struct, sys

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)

port = int(sys.argv[1])
socks = {}
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind((addr, port))
    socks[s] = fam
print(json.dumps({"ready": True}), flush=True)
while True:
    readable, _, _ = select.select(list(socks), [], [])
    for s in readable:
        fam = socks[s]
        data, ancdata, _, peer = s.recvmsg(65536, 256)
        to, reply_anc = None, []
        for level, kind, cdata in ancdata:
            if fam == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                ifindex, spec_dst, addr = struct.unpack("i4s4s", cdata[:12])
                to = socket.inet_ntop(socket.AF_INET, addr)
                reply_anc = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("i4s4s", 0, addr, bytes(4)))]
            elif fam == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                addr, ifindex = struct.unpack("16si", cdata[:20])
                to = socket.inet_ntop(socket.AF_INET6, addr)
                reply_anc = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("16si", addr, 0))]
        print(json.dumps({"from": peer[0], "to": to, "data": data.decode("utf-8", "replace")}), flush=True)
        try:
            s.sendmsg([data], reply_anc, 0, peer)
        except OSError as e:
            print(json.dumps({"reply_error": str(e)}), flush=True)
