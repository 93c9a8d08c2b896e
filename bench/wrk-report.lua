-- bench/wrk-report.lua — wrk script that adds one machine-readable summary line.
--
-- Used by every bench script so that requests, duration, errors and latency
-- percentiles are read from wrk's own counters instead of parsing its text.
-- Requests are wrk's defaults (its -H headers apply).

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRKSTAT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d max_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
