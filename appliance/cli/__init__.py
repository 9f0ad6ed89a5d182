"""The `connected-registry` command: one click group, one module per command group.

Every failure is one line on stderr and a non-zero exit: 2 for usage and config errors, 1 for
everything else.

The timer runs `sync` every minute on every device, so start-up is paid each minute: a command's
module (and what it imports: aiohttp's server, cryptography, ...) is imported only when that
command runs. `--version` imports none; `--help` imports them all, for their short help.
"""

from __future__ import annotations

import importlib
import sys

import click

from appliance import __version__

# Command name -> "module:attribute" of its click command; the help lists them sorted.
COMMANDS: dict[str, str] = {
    "activate": "appliance.cli.activate:activate",
    "cloud": "appliance.cli.cloud:cloud",
    "deactivate": "appliance.cli.activate:deactivate",
    "resync": "appliance.cli.resync:resync",
    "scope-map": "appliance.cli.scope_maps:scope_map",
    "serve": "appliance.cli.serve:serve",
    "status": "appliance.cli.status:status",
    "sync": "appliance.cli.sync:sync",
    "system": "appliance.cli.system:system",
    "tls": "appliance.cli.tls:tls",
    "token": "appliance.cli.tokens:token",
}


class LazyGroup(click.Group):
    """A group whose commands are named in COMMANDS and imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            module, attribute = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands[cmd_name]

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as err:
            # click suggests close names from the commands loaded so far (none, here).
            raise click.exceptions.NoSuchCommand(
                err.command_name, possibilities=COMMANDS, ctx=ctx
            ) from None


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="connected-registry")
def cli() -> None:
    """An OCI registry appliance for edge sites that keeps a replica in sync with its parent."""


def main() -> None:
    try:
        cli.main(prog_name="connected-registry", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        # A bare `connected-registry` (or `connected-registry cloud`) asks what there is.
        click.echo(err.ctx.get_help())
        sys.exit(0)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        # One line, not click's usage block: operators read these in journald and scripts.
        click.echo(f"Error: {' '.join(err.format_message().split())}", err=True)
        sys.exit(err.exit_code)
