"""`cloud get-settings|deactivate|list-client-tokens|permissions`: a connected registry's
tokens: its sync token's connection string and scope map, the instance holding it, the client
tokens it accepts."""

from __future__ import annotations

import click

from appliance.cli.cloud_options import CloudGroup, Json, confirm, many, root_options
from appliance.cli.output import (
    emit,
    format_table,
    no_question_option,
    output_option,
    yes_option,
)
from appliance.control.management_client import PROTOCOLS, Management


def _describe_scope_map(scope: Json) -> str:
    repositories = format_table(
        ["repository", "actions"],
        [(p["repository"], " ".join(p["actions"])) for p in scope["repositories"]],
    )
    gateways = format_table(
        ["gateway", "actions"],
        [(g["gateway"], " ".join(g["actions"])) for g in scope["gateways"]],
    )
    return f"Scope map {scope['name']!r}:\n\n{repositories}\n\n{gateways}"


@click.command()
@click.argument("name")
@output_option
@yes_option("releasing the connected registry from its instance")
@root_options
def deactivate(manage: Management, name: str, output: str, yes: bool) -> None:
    """Release connected registry NAME from the instance that activated it, so that another
    (a replaced device) can activate it."""
    confirm(
        f"Deactivate connected registry {name!r}? Its current instance can no longer report "
        "and a new one may activate it.",
        yes,
    )
    found = manage.deactivate(name)
    emit(
        output,
        found,
        lambda: f"Deactivated connected registry {name!r}: a new instance may activate it now.",
    )


@click.command("get-settings")
@click.argument("name")
@click.option(
    "--parent-protocol",
    type=click.Choice(PROTOCOLS),
    help="How the device reaches its parent: https, or http for a loopback parent.  [required]",
)
@click.option(
    "--generate-password",
    type=click.Choice(["1", "2"]),
    help="Generate (rotate) password1 or password2 of the sync token and put it in the "
    "connection string; a device using the old one must be given the new string.",
)
@output_option
@yes_option("generating a new password (--generate-password)")
@root_options
def get_settings(
    manage: Management,
    name: str,
    parent_protocol: str | None,
    generate_password: str | None,
    output: str,
    yes: bool,
) -> None:
    """Print the connection string that activates connected registry NAME on its device."""
    if parent_protocol is None:
        # Checked here, not by click: its message for a missing choice spans several lines.
        raise click.UsageError("Missing option '--parent-protocol' (https or http).")
    number = int(generate_password) if generate_password else None
    if number is not None:
        confirm(
            f"Generate a new password{number} for sync token {name!r}? A device using the "
            f"current password{number} stops syncing until it gets the new connection string.",
            yes,
        )
    settings = manage.get_settings(name, parent_protocol, number)
    emit(output, settings, lambda: _settings_text(settings))


def _settings_text(settings: Json) -> str:
    if settings["syncTokenPassword"] is None:
        note = "Without --generate-password 1|2 the string has no password and can't activate."
    else:
        note = "The password is shown only once: store the connection string now."
    return f"{settings['connectionString']}\n\n{note}"


@click.command("list-client-tokens")
@click.argument("name")
@output_option
@no_question_option
@root_options
def list_client_tokens(manage: Management, name: str, output: str) -> None:
    """List the client tokens connected registry NAME accepts."""
    tokens = manage.client_tokens(name)
    emit(
        output,
        tokens,
        lambda: format_table(
            ["name", "scope map", "status"],
            [(t["name"], t.get("scopeMap") or "-", t["status"]) for t in tokens],
        ),
    )


@click.group(cls=CloudGroup)
def permissions() -> None:
    """The repositories a connected registry syncs: its sync scope map."""


@permissions.command("show")
@click.argument("name")
@output_option
@no_question_option
@root_options
def permissions_show(manage: Management, name: str, output: str) -> None:
    """Show the sync scope map of connected registry NAME."""
    scope = manage.permissions(name)
    emit(output, scope, lambda: _describe_scope_map(scope))


@permissions.command("update")
@click.argument("name")
@many(
    "--add",
    metavar="REPO [REPO…]",
    help="Sync these too (each within the parent's); ancestors gain them.",
)
@many(
    "--remove",
    metavar="REPO [REPO…]",
    help="Stop syncing these; descendants lose them too.",
)
@output_option
@no_question_option
@root_options
def permissions_update(
    manage: Management,
    name: str,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    output: str,
) -> None:
    """Add or remove repositories of connected registry NAME."""
    if not add and not remove:
        raise click.UsageError("nothing to change: give --add REPO… or --remove REPO…")
    scope = manage.update_permissions(name, list(add), list(remove))
    emit(output, scope, lambda: _describe_scope_map(scope))

