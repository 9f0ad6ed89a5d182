"""The `connected-registry` command: one click group, one module per command group.

Every failure is one line on stderr and a non-zero exit: 2 for usage and config errors, 1 for
everything else.
"""

from __future__ import annotations

import sys

import click

from appliance import __version__
from appliance.cli.activate import activate, deactivate
from appliance.cli.cloud import cloud
from appliance.cli.resync import resync
from appliance.cli.scope_maps import scope_map
from appliance.cli.serve import serve
from appliance.cli.status import status
from appliance.cli.sync import sync
from appliance.cli.system import system
from appliance.cli.tls import tls
from appliance.cli.tokens import token


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="connected-registry")
def cli() -> None:
    """An OCI registry appliance for edge sites that keeps a replica in sync with its parent."""


cli.add_command(serve)
cli.add_command(tls)
cli.add_command(scope_map)
cli.add_command(token)
cli.add_command(cloud)
cli.add_command(activate)
cli.add_command(deactivate)
cli.add_command(status)
cli.add_command(sync)
cli.add_command(resync)
cli.add_command(system)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        # One line, not click's usage block: operators read these in journald and scripts.
        click.echo(f"Error: {' '.join(err.format_message().split())}", err=True)
        sys.exit(err.exit_code)
