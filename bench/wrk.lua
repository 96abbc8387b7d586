-- wrk script for `make bench`: optional cookie and per-connection pacing from the
-- environment, and one JSON line of results (wrk's own HdrHistogram percentiles).
local cookie = os.getenv("BENCH_COOKIE")
if cookie and cookie ~= "" then wrk.headers["Cookie"] = cookie end
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end
-- Pacing: each connection waits this long between requests, which fixes the offered rate
-- at about connections * 1000 / delay per second (wrk has no rate flag; wrk2 is not packaged).
local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pace > 0 then
  function delay() return pace end
end

-- The latency distribution: the percentile ladder, and a histogram of request counts in
-- doubling buckets from 0.125 ms (bucket i holds latencies below 0.125 ms * 2^i).
local ladder = {50, 75, 90, 95, 99, 99.9, 99.99}
local function histogram(latency)
  local buckets = {}
  for i = 0, 12 do buckets[i] = 0 end
  for i = 1, #latency do
    local value, count = latency(i)
    local b = 0
    while b < 12 and value >= 125 * 2 ^ b do b = b + 1 end
    buckets[b] = buckets[b] + count
  end
  local out = {}
  for i = 0, 12 do out[#out + 1] = tostring(buckets[i]) end
  return "[" .. table.concat(out, ",") .. "]"
end

function done(summary, latency, requests)
  local e = summary.errors
  local pcts = {}
  for _, p in ipairs(ladder) do pcts[#pcts + 1] = string.format('"%s":%d', p, latency:percentile(p)) end
  io.stderr:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"socket_errors":%d,"bad_status":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"percentiles_us":{%s},"histogram":%s}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(pcts, ","), histogram(latency)))
end
