"""`cloud create|update|show|list|delete|resync`: the connected-registry resources themselves,
and how one is shown (ACR's table row, then what the row leaves out)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import click

from appliance.cli.cloud_options import ROOT_ARGS, Json, confirm, many, root_options
from appliance.cli.output import (
    emit,
    format_fields,
    format_table,
    no_question_option,
    output_option,
    yes_option,
)
from appliance.control.hierarchy import LOG_LEVELS
from appliance.control.management_client import Management
from appliance.control.roles import MODES, READ_WRITE
from appliance.control.schedule import CONTINUOUS, DEFAULT_TTL

COLUMNS = (
    "name",
    "mode",
    "connection state",
    "parent",
    "login server",
    "last sync (utc)",
    "sync schedule",
    "sync window",
)


# -- rendering -----------------------------------------------------------------------------------


def _row(cr: Json) -> tuple[str, ...]:
    return (
        cr["name"],
        cr["mode"],
        cr["connectionState"],
        cr["parent"] or "-",
        cr["loginServer"] or "-",
        cr["lastSyncTime"] or "-",
        cr["syncSchedule"],
        cr["syncWindow"] or "-",
    )


def _table(registries: list[Json]) -> str:
    return format_table(COLUMNS, [_row(cr) for cr in registries])


def describe(cr: Json) -> str:
    """ACR's table row, then what the row leaves out."""
    fields = format_fields(
        [
            ("Activation", cr["activationStatus"]),
            ("Repositories", " ".join(cr["repositories"])),
            ("Client tokens", " ".join(cr["clientTokens"]) or "-"),
            ("Tag filters", _tag_filters(cr)),
            ("Message TTL", cr["messageTtl"]),
            ("Log level", cr["logLevel"]),
            ("Sync token", cr["syncToken"]),
            ("Resync requested", "yes" if cr["resyncRequested"] else "no"),
        ]
    )
    return f"{_table([cr])}\n\n{fields}"


def _tag_filters(cr: Json) -> str:
    filters = [
        f"{label} {cr[key]}"
        for label, key in (
            ("include", "tagInclude"), ("exclude", "tagExclude"), ("semver", "tagSemver")
        )
        if cr.get(key)
    ]
    return "; ".join(filters) or "-"



def tag_filter_options(removable: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--tag-include`, `--tag-exclude`, `--tag-semver`: which tags of its repositories the
    connected registry syncs (the management API's tagInclude, tagExclude, tagSemver)."""
    remove = " An empty value removes the filter." if removable else ""
    options = [
        click.option(
            "--tag-include",
            metavar="REGEX",
            help=f"Sync only tags this Python regex finds (anchor with ^…$).{remove}",
        ),
        click.option(
            "--tag-exclude", metavar="REGEX", help=f"Never sync tags this regex finds.{remove}"
        ),
        click.option(
            "--tag-semver",
            metavar="RANGE",
            help="Sync only tags that are versions in this semver range, e.g. '>=1.2 <2' "
            f"(README: \"Tag filters\").{remove}",
        ),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.command()
@click.argument("name")
@many(
    "--repository",
    "repositories",
    required=True,
    metavar="REPO [REPO…]",
    help="Repositories (or patterns: `*` within a segment, `**` across) to sync; within the "
    "parent's.",
)
@click.option(
    "--mode",
    "-m",
    type=click.Choice(MODES, case_sensitive=False),
    metavar="ReadWrite|ReadOnly",
    default=READ_WRITE,
    show_default=True,
    help="ReadWrite: clients push and pull, pushes sync up. ReadOnly: clients only pull.",
)
@click.option(
    "--parent", "-p", metavar="NAME", help="The parent connected registry.  [default: the root]"
)
@many("--client-tokens", metavar="TOKEN [TOKEN…]", help="Tokens clients log in with there.")
@click.option(
    "--sync-schedule",
    "-s",
    metavar="CRON",
    default=CONTINUOUS,
    show_default=True,
    help="When to sync (cron, UTC); the default is continuously.",
)
@click.option(
    "--sync-window",
    "-w",
    metavar="ISO8601",
    help="How long each sync may run, PT1H-P7D; needed with a --sync-schedule.",
)
@click.option(
    "--sync-message-ttl",
    metavar="ISO8601",
    default=DEFAULT_TTL,
    show_default=True,
    help="How long sync messages are kept, P1D-P90D.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    metavar="LEVEL",
    default="Information",
    help=f"One of {', '.join(LOG_LEVELS)}.",
    show_default=True,
)
@tag_filter_options(removable=False)
@output_option
@no_question_option
@root_options
def create(
    manage: Management,
    name: str,
    repositories: tuple[str, ...],
    mode: str,
    parent: str | None,
    client_tokens: tuple[str, ...],
    sync_schedule: str,
    sync_window: str | None,
    sync_message_ttl: str,
    log_level: str,
    tag_include: str | None,
    tag_exclude: str | None,
    tag_semver: str | None,
    output: str,
) -> None:
    """Create connected registry NAME (5-50 letters and digits), with its sync token and scope
    map NAME; every ancestor's sync token gains its permissions.

    \b
    Examples:
      connected-registry cloud create edge01 --repository 'apps/*' base/alpine
      connected-registry cloud create shelf02 --parent edge01 --mode ReadOnly \\
        --repository apps/web --sync-schedule '0 2 * * *' --sync-window PT4H
    """
    created = manage.create(
        {
            "name": name,
            "repositories": list(repositories),
            "mode": mode,
            "parent": parent,
            "clientTokens": list(client_tokens),
            "syncSchedule": sync_schedule,
            "syncWindow": sync_window,
            "messageTtl": sync_message_ttl,
            "logLevel": log_level,
            "tagInclude": tag_include,
            "tagExclude": tag_exclude,
            "tagSemver": tag_semver,
        }
    )
    root = click.get_current_context().meta[ROOT_ARGS]
    hint = ["connected-registry", "cloud", "get-settings", name, *root]
    hint += ["--parent-protocol", "https", "--generate-password", "1"]
    emit(output, created, lambda: f"{describe(created)}\n\nNext: {shlex.join(hint)}")


@click.command()
@click.argument("name")
@click.option("--sync-schedule", "-s", metavar="CRON", help="When to sync (cron, UTC).")
@click.option("--sync-window", "-w", metavar="ISO8601", help="How long each sync may run.")
@click.option("--sync-message-ttl", metavar="ISO8601", help="How long sync messages are kept.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    metavar="LEVEL",
    help=f"One of {', '.join(LOG_LEVELS)}.",
)
@many("--add-client-tokens", metavar="TOKEN [TOKEN…]", help="Tokens to accept there too.")
@many("--remove-client-tokens", metavar="TOKEN [TOKEN…]", help="Tokens to stop accepting.")
@tag_filter_options(removable=True)
@output_option
@no_question_option
@root_options
def update(
    manage: Management,
    name: str,
    sync_schedule: str | None,
    sync_window: str | None,
    sync_message_ttl: str | None,
    log_level: str | None,
    add_client_tokens: tuple[str, ...],
    remove_client_tokens: tuple[str, ...],
    tag_include: str | None,
    tag_exclude: str | None,
    tag_semver: str | None,
    output: str,
) -> None:
    """Change connected registry NAME's schedule, window, TTL, log level, client tokens or tag
    filters; its instance picks them up at its next sync. Mode and parent never change."""
    body = {
        "syncSchedule": sync_schedule,
        "syncWindow": sync_window,
        "messageTtl": sync_message_ttl,
        "logLevel": log_level,
        "addClientTokens": list(add_client_tokens) or None,
        "removeClientTokens": list(remove_client_tokens) or None,
        "tagInclude": tag_include,
        "tagExclude": tag_exclude,
        "tagSemver": tag_semver,
    }
    if all(value is None for value in body.values()):
        raise click.UsageError(
            "nothing to change: give --sync-schedule, --sync-window, --sync-message-ttl, "
            "--log-level, --add-client-tokens, --remove-client-tokens, --tag-include, "
            "--tag-exclude or --tag-semver"
        )
    updated = manage.update(name, body)
    emit(output, updated, lambda: describe(updated))


@click.command()
@click.argument("name")
@output_option
@no_question_option
@root_options
def show(manage: Management, name: str, output: str) -> None:
    """Show connected registry NAME: its settings and what its instance last reported."""
    found = manage.show(name)
    emit(output, found, lambda: describe(found))


@click.command("list")
@click.option("--parent", "-p", metavar="NAME", help="Only those below this connected registry.")
@click.option(
    "--no-children", is_flag=True, help="Only the immediate children (of the root, or of -p)."
)
@output_option
@no_question_option
@root_options
def list_(
    manage: Management, parent: str | None, no_children: bool, output: str
) -> None:
    """List the connected registries: all, or those below --parent."""
    found = manage.list(parent, no_children)
    emit(output, found, lambda: _table(found))


@click.command()
@click.argument("name")
@click.option(
    "--cleanup",
    is_flag=True,
    help="Also delete its sync token and scope map, and its gateway actions on its ancestors.",
)
@output_option
@yes_option("deleting the connected registry")
@root_options
def delete(manage: Management, name: str, cleanup: bool, output: str, yes: bool) -> None:
    """Delete connected registry NAME (refused while it has children). Remove it from the
    device too: it can't sync any more."""
    confirm(f"Delete connected registry {name!r}?", yes)
    commands = manage.delete(name, cleanup=cleanup)
    emit(
        output,
        {"name": name, "cleanup": cleanup, "commands": commands},
        lambda: _deleted_text(name, commands),
    )


def _deleted_text(name: str, commands: list[str]) -> str:
    if not commands:
        return f"Deleted connected registry {name!r}, its sync token and scope map."
    steps = "\n".join(f"  {command}" for command in commands)
    return (
        f"Deleted connected registry {name!r}. Its sync token and scope map are kept; "
        f"to remove them, on the root:\n{steps}"
    )



@click.command()
@click.argument("name")
@output_option
@no_question_option
@root_options
def resync(manage: Management, name: str, output: str) -> None:
    """Ask connected registry NAME's instance to reconcile every repository at its next sync
    (and drop repositories no longer in scope)."""
    found = manage.resync(name)
    emit(
        output,
        found,
        lambda: (
            f"Resync requested for {name!r}: its instance reconciles everything at its next sync."
        ),
    )
