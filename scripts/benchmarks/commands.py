"""Commands run to their end: connected-registry's CLI as an operator runs it, and commands
measured by wait4 (their own wall time, CPU and peak RSS)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from benchmarks import CHECKOUT, WorkloadError
from benchmarks.params import MB

VENV_PYTHON = CHECKOUT / ".venv" / "bin" / "python"


def die_with_parent() -> None:
    """In the child: get SIGTERM if the benchmark dies, so no server outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def appliance_command(*args: str) -> list[str]:
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    return [python, "-m", "appliance", *args]


def cli_env() -> dict[str, str]:
    """The environment without CONNECTED_REGISTRY_* settings: each command names its node."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}


def appliance_cli(*args: str, timeout: float = 120.0) -> str:
    """`connected-registry ARGS` as an operator runs it; its stdout. A failure is the part's."""
    try:
        done = subprocess.run(
            appliance_command(*args),
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        raise WorkloadError(f"connected-registry {' '.join(args[:2])} timed out") from None
    if done.returncode != 0:
        raise WorkloadError(
            f"connected-registry {' '.join(args[:2])} exited {done.returncode}: "
            f"{done.stderr.strip()[-300:]}"
        )
    return done.stdout


@dataclass(frozen=True)
class Measured:
    """One command run to its end, with its own resource usage (from wait4)."""

    returncode: int
    wall: float
    cpu: float
    rss_mb: float
    stdout: str
    stderr: str


# Commands under measurement, so an interrupted benchmark can end them (their waiting thread
# would otherwise keep the interpreter alive until they finish).
RUNNING: set[subprocess.Popen[bytes]] = set()


def run_measured(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to its end (killed after `timeout` seconds). wait4 gives the peak RSS and CPU
    of that process alone; RUSAGE_CHILDREN would mix in every tool this benchmark ran before."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )
        RUNNING.add(proc)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            RUNNING.discard(proc)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            wall,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024 / MB,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def stop_measured() -> None:
    for proc in list(RUNNING):
        with contextlib.suppress(OSError):
            proc.kill()
