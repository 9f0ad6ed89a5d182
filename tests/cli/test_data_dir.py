
"""The data directory as a command meets it: the real command in a child process.

Commands that set a node up (`serve`, `cloud init`, `token create`, …) may make its data
directory; commands that read or act on a registry never do, so a mistyped `--data-dir` is one
line and exit 1, not a new empty registry. `sync` refuses a node with nothing to sync from, and
the packaged timer's role check skips it. One `serve` per data directory.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.cli import PROJECT, clean_env

if TYPE_CHECKING:
    from support.server import RegistryProcess

    StartRegistry = Callable[..., RegistryProcess]

SYNC_UNIT = PROJECT / "systemd" / "connected-registry-sync.service"
SERVICE_UNIT = PROJECT / "systemd" / "connected-registry.service"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], cwd=cwd, env=clean_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a command that must exit 1 (and print nothing else)."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
    assert result.stdout == ""
    return lines[0]


def exec_condition(unit: Path, data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The unit's ExecCondition as systemd runs it, on `data_dir`."""
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecCondition="))
    command = shlex.split(line.removeprefix("ExecCondition="))
    assert command[0] == "/usr/bin/connected-registry"
    return run_cli(*command[1:], "--data-dir", str(data_dir), cwd=cwd)


# --- a mistyped --data-dir ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["cloud", "list"],
        ["cloud", "show", "edge01"],
        ["cloud", "update", "edge01", "--log-level", "Debug"],
        ["cloud", "delete", "edge01", "--yes"],
        ["token", "list"],
        ["token", "show", "client01"],
        ["token", "update", "client01", "--status", "disabled"],
        ["token", "delete", "client01", "--yes"],
        ["token", "credential", "generate", "client01", "--password1"],
        ["scope-map", "list"],
        ["scope-map", "show", "pull"],
        ["status"],
        ["sync"],
    ],
    ids=" ".join,
)
def test_a_command_on_a_directory_without_a_registry_says_so_and_makes_none(
    tmp_path: Path, command: list[str]
) -> None:
    typo = tmp_path / "rooot"
    line = refusal(run_cli(*command, "--data-dir", str(typo), cwd=tmp_path))
    assert line == (
        f"Error: no registry in {typo}: run `connected-registry serve`, `activate` or "
        "`cloud init` first, or give --data-dir"
    )
    assert not typo.exists()


def test_a_command_that_sets_a_node_up_makes_its_data_directory(tmp_path: Path) -> None:
    made = run_cli(
        "scope-map", "create", "team-pull", "--repository", "team/*", "content/read",
        "--data-dir", "new", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "new" / "registry.db").exists()
    listed = run_cli("scope-map", "list", "--data-dir", "new", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "team-pull" in listed.stdout


# --- sync with nothing to sync from ---------------------------------------------------------


def test_sync_on_a_registry_that_is_not_activated_and_has_no_upstream_is_refused(
    tmp_path: Path,
) -> None:
    made = run_cli(
        "token", "create", "client01", "--repository", "apps/*", "content/read",
        "--data-dir", "plain", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    line = refusal(run_cli("sync", "--data-dir", "plain", cwd=tmp_path))
    assert line == (
        f"Error: NOT_ACTIVATED: {tmp_path / 'plain'} is not an activated connected registry and "
        "its config has no [[upstream]]: nothing to sync from"
    )


def test_sync_on_a_root_without_upstreams_says_there_is_nothing_to_sync_from(
    tmp_path: Path,
) -> None:
    made = run_cli(
        "cloud", "init", "--data-dir", "root", "--login-server", "127.0.0.1:5999", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    line = refusal(run_cli("sync", "--data-dir", "root", "--dry-run", cwd=tmp_path))
    assert line == (
        f"Error: nothing to sync from: {tmp_path / 'root'} is a root and its config has no "
        "[[upstream]]"
    )


def test_sync_without_the_config_follows_a_service_that_syncs_from_its_upstreams(
    tmp_path: Path, start_registry: StartRegistry
) -> None:
    """The service listens on control.sock only where there is something to sync: the command
    asks it, whatever config the command itself was given."""
    data = tmp_path / "node"
    config = tmp_path / "upstream.toml"
    config.write_text('[[upstream]]\nurl = "http://127.0.0.1:9"\nrepositories = ["a/b"]\n')
    start_registry(data_dir=data, args=["--config", str(config)])

    result = run_cli("sync", "--data-dir", str(data), "--output", "json", cwd=tmp_path)

    assert json.loads(result.stdout)["via"] == "service"
    assert result.returncode == 1  # the upstream is unreachable
    assert "127.0.0.1:9" in result.stderr and "NOT_ACTIVATED" not in result.stderr


def test_the_sync_timer_is_skipped_on_a_root_without_upstreams_and_the_service_starts(
    tmp_path: Path,
) -> None:
    """ExecCondition: exit 0 runs the unit, 1-254 skips it without a failure."""
    root = tmp_path / "root"
    made = run_cli(
        "cloud", "init", "--data-dir", str(root), "--login-server", "127.0.0.1:5999", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr

    timer_run = exec_condition(SYNC_UNIT, root, tmp_path)
    assert timer_run.returncode == 1
    assert timer_run.stdout.strip() == (
        f"nothing to sync from: {root} is a root and its config has no [[upstream]]"
    )
    assert timer_run.stderr == ""

    service = exec_condition(SERVICE_UNIT, root, tmp_path)
    assert service.returncode == 0, service.stdout + service.stderr
    assert service.stdout.startswith("this node is a root (cloud init)")


def test_the_sync_timer_runs_on_a_root_with_an_upstream(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config.toml"
    config.write_text('[[upstream]]\nurl = "http://127.0.0.1:9"\nrepositories = ["a/b"]\n')
    made = run_cli(
        "cloud", "init", "--data-dir", str(root), "--login-server", "127.0.0.1:5999", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    checked = run_cli(
        "system", "check-role", "--sync", "--data-dir", str(root), "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith("this node is a root (cloud init)")


# --- serve ----------------------------------------------------------------------------------


def test_serve_on_a_busy_port_leaves_no_new_data_directory_behind(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        fresh = run_cli("serve", "--data-dir", "new/data", "--listen", listen, cwd=tmp_path)
        existing = tmp_path / "existing"
        existing.mkdir()
        kept = run_cli("serve", "--data-dir", "existing", "--listen", listen, cwd=tmp_path)

    assert refusal(fresh).startswith(f"Error: cannot listen on tcp://{listen}: ")
    assert not (tmp_path / "new").exists()
    assert refusal(kept).startswith(f"Error: cannot listen on tcp://{listen}: ")
    assert existing.is_dir()  # not serve's to remove


def test_a_second_serve_on_one_data_directory_is_refused_with_the_holders_pid(
    tmp_path: Path, start_registry: StartRegistry
) -> None:
    data = tmp_path / "node"
    first = start_registry(data_dir=data)
    assert first.proc is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"

    second = run_cli("serve", "--data-dir", str(data), "--listen", listen, cwd=tmp_path)

    line = refusal(second)
    assert line == f"Error: data directory {data} is in use by process {first.proc.pid}"
    # The commands beside the service take no such lock.
    listed = run_cli("token", "list", "--data-dir", str(data), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    status = run_cli("status", "--data-dir", str(data), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^Role:\s+development$", status.stdout, re.MULTILINE), status.stdout
    assert first.proc.poll() is None
