#!/usr/bin/env python3
"""token:issue throughput for gateway/bench/run.sh.

A bootstrap token is one-shot, so wrk cannot replay it: create N sandboxes
(not timed as part of issue), then exchange every bootstrap token exactly once
over C keep-alive connections and time that. Prints one JSON line.

usage: issue.py API_URL ADMIN_TOKEN_FILE N C
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def conn(api):
    u = urllib.parse.urlsplit(api)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def run(api, tokens, conc, make_request):
    """Run make_request(conn, item) over conc threads; return (latencies_s, errors, wall_s)."""
    lat, errors, lock = [], [0], threading.Lock()
    chunks = [tokens[i::conc] for i in range(conc)]

    def worker(items):
        c = conn(api)
        mine, bad = [], 0
        for item in items:
            t0 = time.perf_counter()
            try:
                ok = make_request(c, item)
            except (OSError, http.client.HTTPException):
                ok = False
                c.close()
                c = conn(api)
            mine.append(time.perf_counter() - t0)
            bad += 0 if ok else 1
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(ch,)) for ch in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.perf_counter() - t0


def pct(sorted_lat, p):
    if not sorted_lat:
        return 0.0
    return sorted_lat[min(len(sorted_lat) - 1, int(len(sorted_lat) * p / 100))] * 1000


def summary(name, lat, errors, wall):
    lat = sorted(lat)
    return {
        "name": name,
        "tool": "python http.client",
        "requests": len(lat),
        "duration_s": round(wall, 3),
        "rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(pct(lat, 50), 3),
        "p90_ms": round(pct(lat, 90), 3),
        "p99_ms": round(pct(lat, 99), 3),
        "max_ms": round(lat[-1] * 1000, 3) if lat else 0.0,
        "errors": errors,
    }


def main():
    api, token_file, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    admin = open(token_file).read().strip()
    bootstraps = []
    blk = threading.Lock()

    def create(c, i):
        body = json.dumps({"name": f"issue-{i}"})
        c.request("POST", "/v1/sandboxes", body=body, headers={
            "Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 201:
            return False
        with blk:
            bootstraps.append(json.loads(data)["bootstrapToken"])
        return True

    def issue(c, bootstrap):
        c.request("POST", "/v1/token:issue", body=b"", headers={
            "Authorization": f"Bearer {bootstrap}", "Content-Length": "0"})
        r = c.getresponse()
        data = r.read()
        return r.status == 200 and "token" in json.loads(data)

    lat, err, wall = run(api, list(range(n)), conc, create)
    print(json.dumps(summary("sandbox_create", lat, err, wall)))
    lat, err, wall = run(api, bootstraps, conc, issue)
    print(json.dumps(summary("token_issue", lat, err, wall)))


if __name__ == "__main__":
    main()
