-- Load for tests/service/overload.py, run by wrk with one thread (wrk_load.py starts it):
--   wrk -t1 -cC -dD --timeout 300s -s overload_wrk.lua URL -- RATE COUNT KEY BODY MARKER
-- RATE > 0: open loop, one request every 1/RATE s whatever the answers take (each free
-- connection claims the next slot of a fixed schedule; with every connection busy the
-- schedule slips and "late" counts it). RATE = 0: closed loop (each connection sends again
-- at once). COUNT > 0: stop sending after COUNT requests and print LOADGEN_DRAINED once
-- every one of them is answered, so the caller can stop wrk (SIGINT) without cutting any
-- off. done() prints one line "LOADGEN_JSON {...}" with the tallies.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } loraswap_timespec;
int clock_gettime(int clk_id, loraswap_timespec *tp);
]]
local timespec = ffi.new("loraswap_timespec")

local function now_ms()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local interval, planned, marker = 0, 0, ""
local next_slot = nil
local claimed, drained_said = 0, false

-- Globals: read by done() through thread:get.
sent, answered, late, no_retry_after, incomplete = 0, 0, 0, 0, 0
first_ms, last_ms = 0, 0
statuses = {}

function init(args)
  local rate = tonumber(args[1])
  interval = rate > 0 and 1000 / rate or 0
  planned = tonumber(args[2])
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. args[3]
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = args[4]
  marker = args[5]
end

function delay()
  if planned > 0 and claimed >= planned then
    return 86400000 -- every request of the plan is out: park this connection
  end
  claimed = claimed + 1
  if interval == 0 then
    return 0
  end
  local now = now_ms()
  if next_slot == nil then
    next_slot = now
  end
  local slot = next_slot
  next_slot = next_slot + interval
  if slot <= now then
    if now - slot > 100 then
      late = late + 1
    end
    return 0
  end
  return math.floor(slot - now + 0.5)
end

local verified = false

function request()
  if not verified then
    -- wrk calls request() once before the run to check the request it builds: not a send.
    verified = true
    return wrk.format()
  end
  sent = sent + 1
  last_ms = now_ms()
  if sent == 1 then
    first_ms = last_ms
  end
  return wrk.format()
end

local function has_retry_after(headers)
  for name, _ in pairs(headers) do
    if string.lower(name) == "retry-after" then
      return true
    end
  end
  return false
end

-- The kind of answer: the status, and for a 429 which limit said no.
local function kind(status, body)
  if status ~= 429 then
    return tostring(status)
  elseif string.find(body, "share of the queue", 1, true) then
    return "429 queue share"
  elseif string.find(body, "queue is full", 1, true) then
    return "429 queue full"
  end
  return "429 other"
end

function response(status, headers, body)
  answered = answered + 1
  local k = kind(status, body)
  statuses[k] = (statuses[k] or 0) + 1
  if status == 429 and not has_retry_after(headers) then
    no_retry_after = no_retry_after + 1
  elseif status == 200 and not string.find(body, marker, 1, true) then
    incomplete = incomplete + 1
  end
  if planned > 0 and claimed >= planned and answered == sent and not drained_said then
    drained_said = true
    io.write("LOADGEN_DRAINED\n")
    io.flush()
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function json(value)
  if type(value) == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, string.format("%q:%s", tostring(k), json(v)))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return tostring(value)
end

function done(summary, latency, requests)
  local thread = threads[1]
  local result = {
    sent = thread:get("sent"), answered = thread:get("answered"),
    late = thread:get("late"), no_retry_after = thread:get("no_retry_after"),
    incomplete = thread:get("incomplete"), statuses = thread:get("statuses"),
    send_span_s = (thread:get("last_ms") - thread:get("first_ms")) / 1000,
    errors = summary.errors,
    latency_p50_s = latency:percentile(50) / 1e6,
    latency_p99_s = latency:percentile(99) / 1e6,
  }
  io.write("LOADGEN_JSON " .. json(result) .. "\n")
end
