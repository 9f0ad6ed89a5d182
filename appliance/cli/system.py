"""`connected-registry system …`: hidden commands the packaged systemd units run.

check-role          exit 0 on a root or an activated node (the service and the sync timer
                    start), 1 with one line saying why not (shown by `systemctl status`)
check-role --sync   as check-role, and 1 on a node with nothing to sync from (a root without
                    [[upstream]]), for the sync timer: ExecCondition skips the run quietly
check-role --unset  the opposite, for the first-boot unit
first-boot          activate from /etc/connected-registry/connection-string, or run the
                    wizard on tty1
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli.options import load, node_options
from appliance.system.firstboot import (
    CONNECTION_STRING_FILE,
    CONSOLE,
    activate_from_file,
    activate_on_console,
)
from appliance.system.role import node_role, nothing_to_sync


@click.group(hidden=True)
def system() -> None:
    """Commands for the systemd units."""


@system.command("check-role")
@node_options
@click.option(
    "--unset",
    is_flag=True,
    help="Succeed only on a node that is neither activated nor a root (first boot).",
)
@click.option(
    "--sync",
    "for_sync",
    is_flag=True,
    help="Also fail on a node with nothing to sync from (a root without [[upstream]]).",
)
def check_role(
    config_path: Path | None, data_dir: Path | None, unset: bool, for_sync: bool
) -> None:
    """Exit 0 if this node is a root or an activated connected registry, else 1 and why."""
    config = load(config_path, data_dir)
    data = config.data_dir.resolve()
    found = node_role(data)
    if unset:
        if found.role is not None:
            click.echo(f"nothing to do: this node is {found.explanation}")
            sys.exit(1)
        click.echo(f"first boot: {found.explanation}")
        return
    if found.role is None:
        click.echo(f"waiting: {found.explanation}")
        sys.exit(1)
    idle = nothing_to_sync(found.role, data, bool(config.upstreams)) if for_sync else None
    if idle is not None:
        click.echo(idle)
        sys.exit(1)
    click.echo(f"this node is {found.explanation}")


@system.command("first-boot")
@node_options
def first_boot(config_path: Path | None, data_dir: Path | None) -> None:
    """Activate from the dropped connection string, else ask on the console."""
    node_args = []
    if config_path is not None:
        node_args += ["--config", str(config_path)]
    if data_dir is not None:
        node_args += ["--data-dir", str(data_dir)]
    if CONNECTION_STRING_FILE.exists():
        click.echo(f"activating from {CONNECTION_STRING_FILE}")
        sys.exit(activate_from_file(CONNECTION_STRING_FILE, node_args))
    if not CONSOLE.exists():
        click.echo(
            f"no {CONNECTION_STRING_FILE} and no console ({CONSOLE}) to ask on: run "
            "`connected-registry activate` as root"
        )
        return
    click.echo(f"asking for the connection string on {CONSOLE}")
    sys.exit(activate_on_console(CONSOLE, node_args))
