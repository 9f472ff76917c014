-- wrk script: PUT /v2/keys/wrk/<run>-<thread>-<n> with a 100-byte value, unique keys.
-- The second load generator beside benches/writes.rs, so the flotilla/etcd ratio does
-- not rest on our own client. Usage: wrk -s benches/wrk/put.lua URL -- RUN_TAG
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = "/v2/keys/wrk/" .. (args[1] or "run") .. "-" .. tid .. "-"
  body = "value=" .. string.rep("v", 100)
  headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  n = 0
end

function request()
  n = n + 1
  return wrk.format("PUT", prefix .. n, headers, body)
end
