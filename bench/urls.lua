-- wrk script for bench/run.py: send the URL paths of a file, one per request, in file order.
--
--   wrk -t1 -c8 -d20s -s bench/urls.lua http://127.0.0.1:PORT -- PATHS_FILE [THREADS=1]
--
-- A one-line file repeats its URL (the hot workload). A longer file is meant to be sent without repeats
-- (the cold workload): with several wrk threads, thread k sends lines k, k+T, k+2T, ... If a thread runs
-- past the end it starts over and counts every repeated request in "repeats", so a cold run that was
-- not cold shows up in the summary instead of passing silently.
--
-- done() prints one JSON line starting with {"bench": for bench/run.py to parse.
-- No response() callback on purpose: defining one makes wrk hand every response to Lua, which would
-- slow the load generator down on the hot workload.

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  paths = {}
  for line in io.lines(args[1]) do
    if #line > 0 then
      paths[#paths + 1] = line
    end
  end
  if #paths == 0 then
    error("no URL paths in " .. tostring(args[1]))
  end
  stride = tonumber(args[2] or "1")
  position = index
  repeats = 0
end

function request()
  local i = position % #paths
  if position >= #paths and #paths > 1 then
    repeats = repeats + 1
  end
  position = position + stride
  return wrk.format("GET", paths[i + 1])
end

function done(summary, latency, requests)
  local repeated = 0
  for _, thread in ipairs(threads) do
    repeated = repeated + (tonumber(thread:get("repeats")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"bench": 1, "requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f, ' ..
    '"err_status": %d, "err_connect": %d, "err_read": %d, "err_write": %d, "err_timeout": %d, ' ..
    '"repeats": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000,
    e.status, e.connect, e.read, e.write, e.timeout, repeated))
end
