#!/usr/bin/env bash
# Gateway load benchmark (issue 5). Not a test: it asserts nothing about speed.
#
#   gateway/bench/run.sh            # or: just bench-gateway
#
# Builds the release `palisade`, serves it on 127.0.0.1 only, and measures
#   * POST /v1/token:refresh           (sandbox JWT; each token a response returns
#                                       is presented once, as a sidecar does) — wrk
#   * GET  /v1/sandboxes/{id}/policy   (sandbox JWT, the sidecar's call) — wrk
#   * GET  /v1/policies/{name}         (admin token)               — wrk
#   * POST /v1/token:issue             (one-shot bootstrap tokens) — bench/issue.py
# and writes a table to stdout and JSON to $TARGET_DIR/bench/gateway.json.
# For the wrk scenarios it also reports the gateway's own CPU time per request
# (utime+stime from /proc, µs): on a machine shared with other work that figure
# moves much less than requests/s, and 1e6 / it is the per-core ceiling.
#
# Knobs (env): PALISADE_BIN (skip the build, use this binary), DURATION (wrk seconds, default 10), CONNECTIONS (default 32),
# ISSUE_N (bootstrap tokens to create+issue, default 1000), ISSUE_CONC (default 8),
# GATEWAY_CPUS / WRK_CPUS (taskset lists; default "0" / "1" when >= 2 CPUs, so the
# gateway figure is per core).
# Needs: wrk (apt install wrk), curl, python3, cargo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_DIR="$ROOT/gateway/bench"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT_DIR="$TARGET_DIR/bench"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
ISSUE_N="${ISSUE_N:-1000}"
ISSUE_CONC="${ISSUE_CONC:-8}"

for tool in wrk curl python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench-gateway: $tool not found in PATH; install it (wrk: apt-get install -y wrk)" >&2; exit 1; }
done

NCPU="$(nproc)"
if [ "$NCPU" -ge 2 ]; then
    GATEWAY_CPUS="${GATEWAY_CPUS:-0}"
    WRK_CPUS="${WRK_CPUS:-1}"
else
    GATEWAY_CPUS="${GATEWAY_CPUS:-0}"
    WRK_CPUS="${WRK_CPUS:-0}"
fi

if [ -n "${PALISADE_BIN:-}" ]; then
    BIN="$PALISADE_BIN"   # a prebuilt binary (e.g. to try the script itself)
else
    echo "building release palisade..." >&2
    (cd "$ROOT" && cargo build --release -q -p palisade-gateway --bin palisade)
    BIN="$TARGET_DIR/release/palisade"
fi

WORK="$(mktemp -d)"
chmod 700 "$WORK"
GW_PID=""
cleanup() {
    if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
API="http://127.0.0.1:$API_PORT"

umask 077
openssl rand -hex 32 > "$WORK/admin.token"
ADMIN_TOKEN="$(cat "$WORK/admin.token")"

# One principal per scenario sends every request: lift the per-principal limiter
# so the benchmark measures the gateway, not its 429 path.
PALISADE_LOG=warn taskset -c "$GATEWAY_CPUS" "$BIN" gateway serve --insecure-plaintext \
    --listen "127.0.0.1:$API_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --data-dir "$WORK/data" --admin-token-file "$WORK/admin.token" \
    --rate-limit-per-sec 10000000 --rate-limit-burst 10000000 \
    --max-concurrent-requests 4096 >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null

# Fixtures: a policy, a sandbox using it, and that sandbox's JWT.
printf 'apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: bench\nspec:\n  denyAll: true\n' > "$WORK/policy.yaml"
curl -fsS -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/yaml' \
    --data-binary @"$WORK/policy.yaml" "$API/v1/policies/bench" >/dev/null
CREATED="$(curl -fsS -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"bench","policy":"bench"}' "$API/v1/sandboxes")"
SANDBOX_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["sandbox"]["id"])' <<<"$CREATED")"
BOOTSTRAP="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bootstrapToken"])' <<<"$CREATED")"
JWT="$(curl -fsS -X POST -H "Authorization: Bearer $BOOTSTRAP" "$API/v1/token:issue" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

# CPU time (clock ticks, user+system) the gateway process has used so far.
gateway_ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
CLK_TCK="$(getconf CLK_TCK)"

# wrk scenario: name method path token
run_wrk() {
    local name="$1" method="$2" path="$3" token="$4" t0 t1
    t0="$(gateway_ticks)"
    BENCH_NAME="$name" BENCH_METHOD="$method" BENCH_TOKEN="$token" \
        taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -s "$BENCH_DIR/request.lua" "$API$path" >"$WORK/$name.wrk" 2>&1
    t1="$(gateway_ticks)"
    grep '^BENCH_JSON ' "$WORK/$name.wrk" | sed 's/^BENCH_JSON //' \
        | python3 -c 'import json, sys
ticks, hz = int(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:
    r = json.loads(line)
    r["gateway_cpu_s"] = round(ticks / hz, 2)
    r["cpu_us_per_request"] = round(ticks / hz / r["requests"] * 1e6, 1) if r["requests"] else None
    print(json.dumps(r))' "$((t1 - t0))" "$CLK_TCK" >>"$WORK/results.jsonl"
}

: >"$WORK/results.jsonl"
echo "wrk: ${DURATION}s, $CONNECTIONS connections, gateway on CPU(s) $GATEWAY_CPUS, wrk on CPU(s) $WRK_CPUS" >&2
BENCH_CHAIN=1 run_wrk token_refresh POST /v1/token:refresh "$JWT"
run_wrk sandbox_policy_get GET "/v1/sandboxes/$SANDBOX_ID/policy" "$JWT"
run_wrk policy_get_admin GET /v1/policies/bench "$ADMIN_TOKEN"

echo "token:issue: creating $ISSUE_N sandboxes, then issuing each bootstrap token once ($ISSUE_CONC connections)" >&2
taskset -c "$WRK_CPUS" python3 "$BENCH_DIR/issue.py" "$API" "$WORK/admin.token" "$ISSUE_N" "$ISSUE_CONC" \
    >>"$WORK/results.jsonl"

# The gateway's own count of 5xx answers over the whole run.
SERVER_ERRORS="$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk '/^palisade_gateway_requests_total\{/ && /status_class="5xx"/ {s+=$NF} END {print s+0}')"

mkdir -p "$OUT_DIR"
python3 - "$WORK/results.jsonl" "$OUT_DIR/gateway.json" "$GATEWAY_CPUS" "$WRK_CPUS" "$NCPU" "$DURATION" "$CONNECTIONS" "$SERVER_ERRORS" <<'PY'
import json, os, subprocess, sys, datetime
src, dst, gw_cpus, wrk_cpus, ncpu, duration, conns, server_errors = sys.argv[1:]
results = [json.loads(l) for l in open(src) if l.strip()]
load = open("/proc/loadavg").read().split()[:3]
doc = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "host_cpus": int(ncpu),
    "gateway_cpus": gw_cpus,
    "client_cpus": wrk_cpus,
    "loadavg_at_end": [float(x) for x in load],
    "wrk_duration_s": int(duration),
    "wrk_connections": int(conns),
    "gateway_5xx_total": float(server_errors),
    "scenarios": results,
}
json.dump(doc, open(dst, "w"), indent=2)
print(f"{'scenario':<22} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>7} {'CPU us/req':>11}")
for r in results:
    cpu = r.get("cpu_us_per_request")
    cpu = f"{cpu:>11.1f}" if cpu is not None else f"{'-':>11}"
    print(f"{r['name']:<22} {r['rps']:>11.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['requests']:>9} {r['errors']:>7} {cpu}")
print(f"gateway on CPU(s) {gw_cpus} of {ncpu}; load average at end {' '.join(load)}; gateway 5xx: {server_errors}")
print(f"JSON: {dst}")
PY
