"""The registries under test, each a process on a loopback port with a data directory of its
own: distribution's docker-registry, ours, and ours as a root; their peak RSS and their errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp

from benchmarks import CHECKOUT
from benchmarks.commands import appliance_cli, appliance_command, die_with_parent
from benchmarks.params import MB

DISTRIBUTION_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of a process and its live descendants."""
    children = proc_children()
    todo, total = [root], 0.0
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo.extend(children.get(pid, []))
    return total


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Tracks the peak VmHWM of a process and of every descendant seen while it runs."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> None:
        children = proc_children()
        todo, seen = [self.pid], set()
        while todo:  # a process tree is finite: each pid is visited once
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            hwm = vm_hwm_kib(pid)
            if hwm is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            todo.extend(children.get(pid, []))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> tuple[float, int]:
        """Sample once more and stop; return (sum of peaks in MB, process count)."""
        self.sample()
        self._stop.set()
        self._thread.join(5)
        return sum(self.peaks.values()) * 1024 / MB, len(self.peaks)


class Server:
    def __init__(self, name: str, base_dir: Path) -> None:
        self.name = name
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "server.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.cwd = CHECKOUT  # where `python -m appliance` finds the code it serves

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: "
                    f"{' '.join(cmd)}\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"{self.name} did not listen within {timeout}s\n{self.log_tail()}")
        self.sampler = RssSampler(self.proc.pid)
        self.sampler.start()

    def peak_rss(self) -> tuple[float, int]:
        assert self.sampler is not None
        return self.sampler.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def scan_log(self) -> None:
        """Count tracebacks and error lines the server logged (its log goes with the run)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return
        bad = [ln for ln in lines if "Traceback" in ln or "error" in ln.lower()]
        if bad:
            self.errors[f"server log: {len(bad)} error/traceback line(s)"] += 1
            self.error_samples.setdefault(
                f"server log: {len(bad)} error/traceback line(s)", " / ".join(bad[:3])
            )

    def record_error(self, what: str, status: int, body: str = "") -> None:
        key = f"{what} -> {status}"
        self.errors[key] += 1
        self.error_samples.setdefault(key, body[:300])


class Distribution(Server):
    def command(self) -> list[str]:
        config = self.base_dir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: error\n"
            "  accesslog:\n"
            "    disabled: true\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {self.data_dir}\n"
            "  delete:\n"
            "    enabled: true\n"
            "  cache:\n"
            "    blobdescriptor: inmemory\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            "  headers:\n"
            "    X-Content-Type-Options: [nosniff]\n"
            "health:\n"
            "  storagedriver:\n"
            "    enabled: false\n"
        )
        return [DISTRIBUTION_BIN, "serve", str(config)]


def distribution_version() -> str:
    try:
        out = subprocess.run(
            [DISTRIBUTION_BIN, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        return out[-1] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


class Ours(Server):
    def command(self) -> list[str]:
        return appliance_command(
            "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)
        )


class OursWithAuth(Ours):
    """Ours with client auth on, over loopback HTTP."""

    def command(self) -> list[str]:
        return [*super().command(), "--auth", "--insecure-http"]


class Root(OursWithAuth):
    """Our registry as a root (`cloud init`), served with auth over loopback HTTP."""

    admin = "cloudadmin"
    admin_password = ""

    def init(self) -> None:
        made = json.loads(
            appliance_cli(
                "cloud",
                "init",
                "--data-dir",
                str(self.data_dir),
                "--login-server",
                f"127.0.0.1:{self.port}",
                "--output",
                "json",
            )
        )
        self.admin_password = made["adminToken"]["passwords"][0]["value"]

    def auth(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.admin, self.admin_password)}

    def activate(self, name: str, repositories: list[str], device: Path) -> None:
        """A ReadOnly connected registry NAME, activated on the fresh data directory `device`,
        the way the README walks an operator through it."""
        data = str(self.data_dir)
        appliance_cli(
            "cloud", "create", name, "--data-dir", data, "--mode", "ReadOnly",
            "--repository", *repositories, "--output", "json",
        )  # fmt: skip
        settings = json.loads(
            appliance_cli(
                "cloud", "get-settings", name, "--data-dir", data, "--parent-protocol", "http",
                "--generate-password", "1", "--yes", "--output", "json",
            )
        )  # fmt: skip
        appliance_cli(
            "activate", "--data-dir", str(device), "--connection-string",
            settings["connectionString"], "--login-server", f"127.0.0.1:{free_port()}",
            "--yes", "--no-start",
        )  # fmt: skip
