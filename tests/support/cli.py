"""The `connected-registry` command in a child process, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without our variables, the project importable from any cwd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, without a terminal (stdin is /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=env or clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=90,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `Error: ...` line a refused command prints, asserted to be the only one."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]
