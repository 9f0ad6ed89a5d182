"""wrk run until a request count is answered (split over its threads), not for a duration:
the requests per second over the run's own time, and its latency percentiles."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from benchmarks import WorkloadError
from benchmarks.images import MANIFEST_ACCEPT
from benchmarks.params import Params
from benchmarks.servers import Server

WRK_BIN = "/usr/bin/wrk"
WRK_MAX_SECONDS = 120  # wrk's -d: an upper bound even if the request-count stop never fires

WRK_LUA = r"""
-- Stops each thread after %(limit)d responses; times the run itself (LuaJIT ffi), because
-- wrk's own duration is its -d even when every thread has stopped early.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local method = "%(method)s"
local limit = %(limit)d
local paths = {%(paths)s}
local headers = {["Accept"] = "%(accept)s"}
local reqs = {}
local idx = 0
count = 0
non200 = 0
last_bad = 0
t_first = 0
t_last = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, p in ipairs(paths) do
    reqs[i] = wrk.format(method, p, headers)
  end
end

function request()
  if t_first == 0 then t_first = now_us() end
  idx = idx %% #reqs + 1
  return reqs[idx]
end

function response(status, hdrs, body)
  count = count + 1
  t_last = now_us()
  if status ~= 200 then
    non200 = non200 + 1
    last_bad = status
  end
  if count == limit then
    io.write("THREAD-DONE\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local n, bad, last, first, final = 0, 0, 0, nil, 0
  for _, t in ipairs(threads) do
    n = n + t:get("count")
    bad = bad + t:get("non200")
    if t:get("last_bad") ~= 0 then last = t:get("last_bad") end
    local f, l = t:get("t_first"), t:get("t_last")
    if f > 0 and (first == nil or f < first) then first = f end
    if l > final then final = l end
  end
  io.write(string.format(
    "BENCH requests=%%d duration_us=%%d p50_us=%%d p99_us=%%d non200=%%d last_bad=%%d " ..
    "connect=%%d read=%%d write=%%d timeout=%%d\n",
    n, final - (first or final), latency:percentile(50), latency:percentile(99),
    bad, last, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
"""


def run_wrk(
    server: Server, what: str, method: str, paths: list[str], total: int, p: Params, work_dir: Path
) -> dict[str, float]:
    """Run wrk until `total` responses (split over its threads); return rps and latencies.

    Each wrk thread stops itself after its share and says so on stdout; once all have, wrk's
    main thread (which otherwise sleeps out -d) is woken with SIGINT and prints the summary.
    """
    script = work_dir / f"wrk-{server.name}-{method.lower()}.lua"
    script.write_text(
        WRK_LUA
        % {
            "method": method,
            "limit": max(1, total // p.wrk_threads),
            "accept": MANIFEST_ACCEPT,
            "paths": ", ".join(json.dumps(path) for path in paths),
        }
    )
    cmd = [
        WRK_BIN,
        "-t",
        str(p.wrk_threads),
        "-c",
        str(p.wrk_connections),
        "-d",
        f"{WRK_MAX_SECONDS}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        server.url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    all_done = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when wrk exits
            lines.append(line)
            if sum(ln.startswith("THREAD-DONE") for ln in lines) >= p.wrk_threads:
                all_done.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    all_done.wait(WRK_MAX_SECONDS + 10)
    for _ in range(10):  # bounded: a few SIGINTs in case one lands on a finishing thread
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    reader.join(10)
    stderr = proc.stderr.read()
    line = next((ln for ln in lines if ln.startswith("BENCH ")), None)
    if line is None:
        raise WorkloadError(f"{server.name}: wrk {what} failed: {''.join(lines)}{stderr}")
    fields = {k: int(float(v)) for k, v in (kv.split("=") for kv in line.split()[1:])}
    if fields["non200"]:
        server.record_error(
            f"{what} (wrk)", fields["last_bad"], f"{fields['non200']} responses were not 200"
        )
    socket_errors = sum(fields[k] for k in ("connect", "read", "write", "timeout"))
    if socket_errors:
        server.record_error(
            f"{what} (wrk socket errors)",
            0,
            " ".join(f"{k}={fields[k]}" for k in ("connect", "read", "write", "timeout")),
        )
    if fields["requests"] < total * 0.99:
        print(
            f"    {server.name}: wrk {what}: only {fields['requests']} of {total} requests "
            f"within {WRK_MAX_SECONDS}s",
            file=sys.stderr,
        )
    return {
        "rps": fields["requests"] / max(fields["duration_us"] / 1e6, 1e-6),
        "p50": fields["p50_us"] / 1000,
        "p99": fields["p99_us"] / 1000,
    }
