-- wrk script: each thread walks the benchmark's request list in order, wrapping around.
-- Usage: wrk ... -s bench/walk.lua URL -- REQUESTS_FILE
-- REQUESTS_FILE has one request a line: METHOD<TAB>PATH<TAB>BODY (BODY empty for none; a body is
-- sent as application/json, byte for byte as recorded, so it matches the recording).

local list = {}
local count = 0
local next_index = 0

function init(args)
  local path = args[1]
  for line in io.lines(path) do
    local method, target, body = line:match("^(%u+)\t([^\t]*)\t(.*)$")
    if method then
      local headers = {}
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      count = count + 1
      list[count] = wrk.format(method, target, headers, body)
    end
  end
  if count == 0 then
    error("no requests in " .. tostring(path))
  end
end

function request()
  next_index = next_index % count + 1
  return list[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
