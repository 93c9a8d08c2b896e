-- bench/wrk-hosts.lua — wrk script: every request carries another Host.
--
-- Host number n of request k (0, 1, 2, ... per thread; threads interleave) is
--   HOST_BASE + (HOST_OFFSET + k * THREADS + thread_index) % HOST_SPAN
-- written with HOST_FMT (default "h%d.bench.test"); path HOST_PATH.
-- A hot set: HOST_BASE=0 HOST_SPAN=100000 (rotates over it).  Cold hosts:
-- HOST_OFFSET advanced by the caller past every host already requested.
-- done() prints the WRKSTAT line of wrk-report.lua (BENCH_DIR must be set).

local base   = tonumber(os.getenv("HOST_BASE") or "0")
local span   = tonumber(os.getenv("HOST_SPAN") or "100000")
local offset = tonumber(os.getenv("HOST_OFFSET") or "0")
local fmt    = os.getenv("HOST_FMT") or "h%d.bench.test"
local path   = os.getenv("HOST_PATH") or "/small.txt"

-- setup() runs in the main Lua state; tindex and tcount become globals of each thread's state.
local threads_all = {}
function setup(thread)
   thread:set("tindex", #threads_all)
   table.insert(threads_all, thread)
   for _, t in ipairs(threads_all) do t:set("tcount", #threads_all) end
end

local k = 0
function request()
   local n = base + (offset + k * (tcount or 1) + (tindex or 0)) % span
   k = k + 1
   return wrk.format("GET", path, { Host = string.format(fmt, n) })
end

dofile((os.getenv("BENCH_DIR") or ".") .. "/wrk-report.lua")
