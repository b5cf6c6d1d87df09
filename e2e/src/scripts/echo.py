# TCP echo server: python3 echo.py PORT — listens on 0.0.0.0 and [::] (v6only).
import socket, sys, threading

port = int(sys.argv[1])


def serve(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def accept_loop(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


socks = []
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    s.listen(128)
    socks.append(s)
print("ready", flush=True)
threads = [threading.Thread(target=accept_loop, args=(s,), daemon=True) for s in socks]
for t in threads:
    t.start()
for t in threads:
    t.join()
