# DNS smuggling attempts against the policy DNS server; prints one JSON line, exits 0.
#   dns_smuggle.py SERVER PORT NAME MODE MARK [--tcp]
# MODE: clean | answer | authority | additional | trailing | edns-option
# The query asks NAME A; MARK is the data the attacker wants carried to the resolver,
# placed (as a TXT record under the owner name "MARK.denied.test", as trailing bytes, or
# as an EDNS option) where MODE says.
# {"rcode": int|null, "answers": int, "error": str|null}
import json, socket, struct, sys

server, port, name, mode, mark = sys.argv[1:6]
tcp = "--tcp" in sys.argv[6:]


def qname(n):
    out = b""
    for label in n.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def txt_record(owner, text):
    data = bytes([len(text)]) + text.encode()
    return qname(owner) + struct.pack("!HHIH", 16, 1, 0, len(data)) + data


def opt_record(option_data=None):
    rdata = b""
    if option_data is not None:
        rdata = struct.pack("!HH", 65001, len(option_data)) + option_data
    return b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(rdata)) + rdata


an = ns = ar = b""
counts = [1, 0, 0, 0]
owner = mark + ".denied.test"
if mode == "answer":
    an, counts[1] = txt_record(owner, mark), 1
elif mode == "authority":
    ns, counts[2] = txt_record(owner, mark), 1
elif mode == "additional":
    ar, counts[3] = txt_record(owner, mark) + opt_record(), 2
elif mode == "edns-option":
    ar, counts[3] = opt_record(mark.encode()), 1
msg = struct.pack("!HHHHHH", 0x5151, 0x0100, *counts) + qname(name) + struct.pack("!HH", 1, 1)
msg += an + ns + ar
if mode == "trailing":
    msg += mark.encode()

fam = socket.AF_INET6 if ":" in server else socket.AF_INET
try:
    if tcp:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((server, int(port)))
        s.sendall(struct.pack("!H", len(msg)) + msg)
        head = s.recv(2)
        want = struct.unpack("!H", head)[0]
        reply = b""
        while len(reply) < want:
            chunk = s.recv(want - len(reply))
            if not chunk:
                break
            reply += chunk
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((server, int(port)))
        s.send(msg)
        reply = s.recv(65535)
    rcode = reply[3] & 0x0F
    answers = struct.unpack("!H", reply[6:8])[0]
    print(json.dumps({"rcode": rcode, "answers": answers, "error": None}), flush=True)
except OSError as e:
    print(json.dumps({"rcode": None, "answers": 0, "error": str(e)}), flush=True)
