# The workload of the Podman e2e's agent container (e2e/tests/podman_pod.rs), run by the
# real `palisade-shim` in image localhost/palisade-e2e-agent (e2e/podman/agent-image).
#
#   agent.py report URL   print one line `PALISADE-E2E-REPORT {json}` about this process
#                         (ids, capability sets, no_new_privs, passwd entry, ServiceAccount
#                         token files anywhere in the file system, environment names) and
#                         the result of GET URL, then sleep until signalled
#   agent.py fetch URL [ADDR] [SNI]
#                         one HTTPS/HTTP GET (optionally to ADDR instead of the URL's
#                         host, TLS with server name SNI); prints one JSON line
#   agent.py udp ADDR PORT
#                         send one datagram to ADDR:PORT and wait briefly for a reply;
#                         prints one JSON line
#   agent.py paths PATH...
#                         whether each PATH exists / is readable; prints one JSON line
#
# Only standard library: the image has python3 and nothing else of note.
import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.parse

SKIP = {"/proc", "/sys", "/dev"}


def status_fields():
    wanted = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
              "NoNewPrivs", "Seccomp")
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = value.strip()
    return out


def passwd_lines_for(uid):
    """The lines of the image's /etc/passwd naming `uid` ([] when there is no file)."""
    try:
        with open("/etc/passwd") as f:
            return [l.strip() for l in f if l.split(":")[2:3] == [str(uid)]]
    except FileNotFoundError:
        return []
    except OSError as e:
        return ["cannot read /etc/passwd: %s" % e]


def getpwuid_name(uid):
    """What the C library says (through nss_wrapper when the shim preloaded it)."""
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def token_like_paths():
    """Every path that looks like a ServiceAccount token or its directory."""
    found = []
    for top in ("/var/run/secrets", "/run/secrets"):
        if os.path.exists(top):
            found.append(top)
    for dirpath, dirnames, filenames in os.walk("/", onerror=lambda e: None):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in SKIP]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            low = path.lower()
            if "serviceaccount" in low or name == "token" or low.endswith("/namespace"):
                found.append(path)
    return sorted(set(found))


def fetch(url, addr=None, sni=None, timeout=15.0):
    u = urllib.parse.urlsplit(url)
    host = u.hostname
    port = u.port or (443 if u.scheme == "https" else 80)
    target = addr or host
    res = {"url": url, "addr": addr, "sni": sni}
    try:
        sock = socket.create_connection((target, port), timeout=timeout)
    except OSError as e:
        res.update(ok=False, stage="connect", error=repr(e), errno=errname(e))
        return res
    try:
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
            sock = ctx.wrap_socket(sock, server_hostname=sni or host)
        path = (u.path or "/") + ("?" + u.query if u.query else "")
        sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                      "User-Agent: palisade-e2e-agent\r\n\r\n" % (path, host)).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError) as e:
        res.update(ok=False, stage="exchange", error=repr(e), errno=errname(e))
        return res
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    res.update(ok=True, stage="done", status=int(parts[1]) if len(parts) > 1 else 0,
               response_head=head.decode("latin-1"), body=body.decode("utf-8", "replace"))
    return res


def errname(e):
    import errno
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def udp(addr, port):
    res = {"addr": addr, "port": port}
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    try:
        sock.connect((addr, port))
        sock.send(b"palisade-e2e-udp")
        res["sent"] = True
        res["reply"] = sock.recv(2048).decode("utf-8", "replace")
    except OSError as e:
        res.update(error=repr(e), errno=errname(e))
    finally:
        sock.close()
    return res


def paths(names):
    out = {}
    for p in names:
        readable = False
        try:
            if os.path.isdir(p):
                os.listdir(p)
            else:
                open(p, "rb").close()
            readable = True
        except OSError:
            pass
        out[p] = {"exists": os.path.exists(p), "readable": readable}
    return out


def report(url):
    uid = os.getuid()
    rep = {
        "pid": os.getpid(),
        "uid": uid,
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "status": status_fields(),
        "passwd_file_exists": os.path.exists("/etc/passwd"),
        "passwd_lines_for_uid": passwd_lines_for(uid),
        "getpwuid": getpwuid_name(uid),
        "token_paths": token_like_paths(),
        "env_names": sorted(os.environ),
        "home": os.environ.get("HOME"),
        "user": os.environ.get("USER"),
        "ssl_cert_file": os.environ.get("SSL_CERT_FILE"),
        "fetch": fetch(url),
    }
    print("PALISADE-E2E-REPORT " + json.dumps(rep, sort_keys=True), flush=True)


def main():
    mode = sys.argv[1]
    if mode == "report":
        report(sys.argv[2])
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    elif mode == "fetch":
        args = sys.argv[2:] + [None, None]
        print(json.dumps(fetch(sys.argv[2], args[1], args[2])), flush=True)
    elif mode == "udp":
        print(json.dumps(udp(sys.argv[2], int(sys.argv[3]))), flush=True)
    elif mode == "paths":
        print(json.dumps(paths(sys.argv[2:])), flush=True)
    else:
        sys.exit("unknown mode %s" % mode)


if __name__ == "__main__":
    main()
