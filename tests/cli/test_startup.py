"""What one `connected-registry` start costs: the timer runs `sync` every minute on every device.

A command's module is imported only when that command runs (`--version` imports none), `--help`
still lists every command with its short help, and a mistyped command still gets the close names.
An idle run on the continuous schedule never loads croniter, and no run starts the `file` process
that croniter's import would (control/cron.py).

Which modules a run loaded is read from the real entry point (`appliance.cli.main`, what the
installed command calls) in a child process that writes `sys.modules` out when it exits.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from support.cli import PROJECT, clean_env
from support.oci import make_image, push_image

import appliance.cli
from appliance.cli import cli

# Every command a person can type, and `system`, which the units use and the help hides.
LISTED = {
    "activate",
    "cloud",
    "deactivate",
    "resync",
    "scope-map",
    "serve",
    "status",
    "sync",
    "tls",
    "token",
}
HIDDEN = {"system"}
COMMAND_MODULES = {
    f"appliance.cli.{name}" for _, name, _ in pkgutil.iter_modules(appliance.cli.__path__)
} - {"appliance.cli.options", "appliance.cli.output"}
# Libraries an idle `sync` on a plain node has no use for before it runs.
HEAVY = ("aiohttp", "cryptography", "sqlite_utils", "croniter", "jwt")

# The installed command's entry point, then `sys.modules` to the file $LOADED names.
PROBE = """
import atexit, json, os, sys
atexit.register(
    lambda: open(os.environ["LOADED"], "w").write(json.dumps(sorted(sys.modules)))
)
sys.argv = ["connected-registry", *sys.argv[1:]]
from appliance.cli import main
main()
"""


def run_probed(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`connected-registry ARGS` and the modules it had loaded when it exited."""
    loaded = tmp_path / "loaded.json"
    loaded.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        env={**(env or clean_env()), "LOADED": str(loaded)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, set(json.loads(loaded.read_text()))


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = PROJECT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def of(loaded: set[str], *packages: str) -> set[str]:
    return {m for m in loaded if any(m == p or m.startswith(p + ".") for p in packages)}


# --- what a start loads -----------------------------------------------------------------------


def test_version_loads_no_command_and_no_library(tmp_path: Path) -> None:
    result, loaded = run_probed(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("connected-registry, version ")
    assert not loaded & COMMAND_MODULES
    assert not of(loaded, *HEAVY)


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["sync", "--help"], "appliance.cli.sync"),
        (["system", "check-role", "--help"], "appliance.cli.system"),
        (["tls", "--help"], "appliance.cli.tls"),
    ],
)
def test_a_command_loads_its_own_module_and_no_other_command(
    tmp_path: Path, args: list[str], module: str
) -> None:
    result, loaded = run_probed(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: connected-registry ")
    assert loaded & COMMAND_MODULES == {module}


def test_the_every_minute_role_check_loads_no_library(tmp_path: Path) -> None:
    """`system check-role` is the sync unit's ExecCondition: it runs every minute, before the
    sync, and only reads node_state."""
    data = tmp_path / "node"
    made = run_cli("cloud", "init", "--data-dir", str(data), "--login-server", "127.0.0.1:5050")
    assert made.returncode == 0, made.stderr
    result, loaded = run_probed(tmp_path, "system", "check-role", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert "a root" in result.stdout + result.stderr
    assert not of(loaded, *HEAVY)


def test_an_idle_sync_on_the_continuous_schedule_does_not_load_croniter(
    tmp_path: Path, registry: Any
) -> None:
    """A plain node whose one upstream has nothing in its scope: the run asks the catalog once."""
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "node"}"\n[[upstream]]\nurl = "{registry.url}"\n'
        'repositories = ["idle-nothing/*"]\n'
    )
    result, loaded = run_probed(tmp_path, "sync", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Requests:\s+1$", result.stdout, re.MULTILINE), result.stdout
    assert "croniter" not in loaded
    assert not loaded & (COMMAND_MODULES - {"appliance.cli.sync"})


# --- help and names still whole ---------------------------------------------------------------


def test_help_lists_every_command_with_its_short_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("\nCommands:\n", 1)[1]
    rows = dict(re.findall(r"^  (\S+)\s+(\S.*)$", section, re.MULTILINE))
    assert set(rows) == LISTED
    assert all(len(text) > 10 for text in rows.values()), rows


def commands_under(group: click.Group) -> list[click.Command]:
    ctx = click.Context(group)
    found: list[click.Command] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        found.append(command)
        if isinstance(command, click.Group):
            found += commands_under(command)
    return found


def test_every_command_defined_under_appliance_cli_is_on_the_group() -> None:
    """A command module added without its line in COMMANDS would be missing from the CLI."""
    assert set(cli.list_commands(click.Context(cli))) == LISTED | HIDDEN
    reachable = {id(command) for command in commands_under(cli)}
    defined = {
        f"{module}:{name}": obj
        for module in sorted(COMMAND_MODULES)
        for name, obj in vars(importlib.import_module(module)).items()
        if isinstance(obj, click.Command) and getattr(obj.callback, "__module__", None) == module
    }
    assert len(defined) >= len(LISTED | HIDDEN)
    assert [name for name, obj in defined.items() if id(obj) not in reachable] == []


def test_a_mistyped_command_gets_the_close_names_in_one_line() -> None:
    result = run_cli("synx")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: No such command 'synx'. (Did you mean one of: 'resync', 'sync'?)"
    ]


# --- croniter without `file` ------------------------------------------------------------------


async def test_a_scheduled_upstream_run_starts_no_file_process(
    tmp_path: Path, start_registry: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """croniter's import asks platform.architecture(), which runs `file` on the interpreter.
    A `file` first on PATH that notes each call shows it is never run by a sync that
    evaluates a schedule: the one that copies, nor the idle one that is not due."""
    calls = tmp_path / "file-calls"
    fake = tmp_path / "bin" / "file"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    fake.chmod(0o755)
    env = clean_env(PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    # The probe sees croniter's own import run it.
    plain = subprocess.run(
        [sys.executable, "-c", "import croniter"], env=env, capture_output=True, timeout=60
    )
    assert plain.returncode == 0, plain.stderr
    assert calls.exists(), "`import croniter` did not run the `file` first on PATH"
    calls.unlink()

    upstream = start_registry()
    await push_image(http, upstream.url, "mirror/app", make_image("nightly"), "v1")
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "node"}"\n[[upstream]]\nurl = "{upstream.url}"\n'
        # Once a year: the second run is not due unless both runs straddle 1 January 03:00 UTC.
        'repositories = ["mirror/app"]\nschedule = "0 3 1 1 *"\n'
    )
    first = run_cli("sync", "--config", str(config), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.search(r"^Tags:\s+1 moved", first.stdout, re.MULTILINE), first.stdout
    idle = run_cli("sync", "--config", str(config), env=env, cwd=tmp_path)
    assert idle.returncode == 0, idle.stderr
    assert "not due: its schedule '0 3 1 1 *' runs it next at " in idle.stdout
    assert not calls.exists(), calls.read_text()
