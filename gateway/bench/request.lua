-- wrk script for gateway/bench/run.sh: one authenticated request, repeated.
-- BENCH_NAME, BENCH_METHOD and BENCH_TOKEN come from the environment so the
-- bearer token never lands in a file or on a command line.
local name = os.getenv("BENCH_NAME") or "unnamed"
wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")
if wrk.method == "POST" then
  wrk.headers["Content-Length"] = "0"
end

-- BENCH_CHAIN=1 (token:refresh): present each token once, as a sidecar
-- does: every request uses a token a previous response returned, not the
-- same token over and over.
if os.getenv("BENCH_CHAIN") == "1" then
  local fresh = {}
  local fallback = os.getenv("BENCH_TOKEN") or ""

  function request()
    -- Only each connection's first request (and any sent before an
    -- answer came back) falls back to the newest token seen.
    local token = table.remove(fresh) or fallback
    return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token }, "")
  end

  function response(status, headers, body)
    local token = body:match('"token"%s*:%s*"([^"]+)"')
    if token then
      table.insert(fresh, token)
      fallback = token
    end
  end
end

-- One JSON line (prefixed BENCH_JSON) that run.sh collects.
function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    'BENCH_JSON {"name":"%s","tool":"wrk","requests":%d,"duration_s":%.3f,"rps":%.1f,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"errors":%d,' ..
    '"errors_detail":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    name, summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, errors, e.connect, e.read, e.write, e.status, e.timeout))
end
