"""`connected-registry token …`: the names and passwords clients log in with (ACR's
`az acr token`), kept in the node's database; a running server sees changes at once.

Passwords are printed once, when they are made, and stored only as hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from appliance.auth.tokens import (
    PASSWORD_NAMES,
    STATUSES,
    CredentialError,
    Credentials,
    NotFound,
    Token,
    parse_expiry,
    parse_permissions,
    validate_resource_name,
)
from appliance.cli.options import load, node_options, open_credentials
from appliance.cli.output import (
    CredentialGroup,
    RepositoryOption,
    confirm,
    emit,
    format_fields,
    format_table,
    no_question_option,
    output_option,
    yes_option,
)

Permissions = tuple[tuple[str, tuple[str, ...]], ...]


@click.group(cls=CredentialGroup)
def token() -> None:
    """Tokens: what clients log in with (user name = token name), each with two passwords
    so a client can move to a new one before the old is revoked.

    A token may do what its scope map allows (see `connected-registry scope-map --help`).
    """


def expiry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--expiration-in-days",
        type=click.IntRange(min=1),
        metavar="DAYS",
        help="The password(s) expire this many days from now.",
    )(f)
    return click.option(
        "--expiration",
        metavar="ISO8601",
        help="The password(s) expire at this date-time (UTC unless it names a zone).",
    )(f)


def resolve_expiry(expiration: str | None, days: int | None) -> str | None:
    """The expiry `--expiration` or `--expiration-in-days` asks for; None for never."""
    if expiration is not None and days is not None:
        raise click.UsageError("give --expiration or --expiration-in-days, not both")
    now = datetime.now(UTC)
    if days is not None:
        return (now + timedelta(days=days)).isoformat(timespec="seconds")
    expiry = parse_expiry(expiration)
    if expiry is not None and datetime.fromisoformat(expiry) <= now:
        raise CredentialError(f"expiry {expiration!r} is in the past")
    return expiry


def describe(found: Token) -> str:
    """A token for people: its fields, then its passwords (names and expiry, never values)."""
    fields = format_fields(
        [
            ("Name", found.name),
            ("Scope map", found.scope_map),
            ("Status", found.status),
            ("Origin", found.origin),
            ("Created", found.created_at),
            ("Updated", found.updated_at),
        ]
    )
    if not found.passwords:
        return (
            f"{fields}\n\nNo passwords: `connected-registry token credential generate "
            f"{found.name} --password1` makes one."
        )
    passwords = format_table(
        ["password", "created", "expiry"],
        [(p.name, p.created_at, p.expiry or "never") for p in found.passwords],
    )
    return f"{fields}\n\n{passwords}"


def _passwords_json(passwords: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": slot, "value": value} for slot, value in sorted(passwords.items())]


def _passwords_block(passwords: dict[str, str], expiry: str | None) -> str:
    lines = format_table(["password", "value"], sorted(passwords.items()))
    once = (
        "These passwords are shown only once: store them now."
        if len(passwords) > 1
        else "This password is shown only once: store it now."
    )
    expires = f"Expiry: {expiry}." if expiry else "No expiry."
    return f"{lines}\n\n{once} {expires}"


def _default_scope_map(
    credentials: Credentials, token_name: str, permissions: Permissions
) -> tuple[str, bool]:
    """`NAME-scope-map` holding `permissions`, as `az acr token create --repository` makes it,
    and whether it was made now; an existing one with exactly these permissions is reused."""
    name = f"{token_name}-scope-map"
    wanted = parse_permissions([(repository, list(actions)) for repository, actions in permissions])
    try:
        existing = credentials.scope_map(name)
    except NotFound:
        credentials.create_scope_map(name, wanted, f"Made for token {token_name}")
        return name, True
    if set(existing.permissions) != set(wanted):
        raise CredentialError(
            f"scope map {name!r} already exists with other permissions: use --scope-map {name}, "
            "or change it with `connected-registry scope-map update`"
        )
    return name, False


@token.command()
@click.argument("name")
@click.option("--scope-map", "scope_map", metavar="MAP", help="The scope map the token uses.")
@click.option(
    "--repository",
    "repositories",
    cls=RepositoryOption,
    help="Instead of --scope-map: the token's permissions, kept in a new scope map "
    "NAME-scope-map; repeat for more repositories.",
)
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    default="enabled",
    show_default=True,
    help="A disabled token cannot log in.",
)
@expiry_options
@click.option(
    "--no-passwords",
    is_flag=True,
    help="Make no passwords now (`token credential generate` makes them later).",
)
@output_option
@no_question_option
@node_options
def create(
    name: str,
    scope_map: str | None,
    repositories: Permissions,
    status: str,
    expiration: str | None,
    expiration_in_days: int | None,
    no_passwords: bool,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Create token NAME (5-50 letters, digits and '-') and print its two passwords, once.

    \b
    Examples:
      connected-registry token create edge-client --scope-map team-pull
      connected-registry token create ci-pusher \\
        --repository 'ci/**' content/read content/write metadata/read
    """
    if (scope_map is None) == (not repositories):
        raise click.UsageError("give either --scope-map MAP or --repository REPO ACTION…")
    expiry = resolve_expiry(expiration, expiration_in_days)
    validate_resource_name("token", name)
    credentials = open_credentials(load(config_path, data_dir), create=True)
    made_scope_map = False
    if scope_map is None:
        scope_map, made_scope_map = _default_scope_map(credentials, name, repositories)
    try:
        created, passwords = credentials.create_token(
            name, scope_map, status=status, expiry=expiry, with_passwords=not no_passwords
        )
    except CredentialError:
        if made_scope_map:  # leave nothing behind from a refused create
            credentials.delete_scope_map(scope_map)
        raise
    emit(
        output,
        {**created.to_json(), "passwords": _passwords_json(passwords)},
        lambda: _created_text(created, passwords, expiry),
    )


def _created_text(created: Token, passwords: dict[str, str], expiry: str | None) -> str:
    head = (
        f"Created token {created.name!r} with scope map {created.scope_map!r} ({created.status})."
    )
    if not passwords:
        return (
            f"{head} It has no passwords yet: `connected-registry token credential generate "
            f"{created.name} --password1` makes one."
        )
    return f"{head}\n\n{_passwords_block(passwords, expiry)}"


@token.command()
@click.argument("name")
@click.option("--scope-map", "scope_map", metavar="MAP", help="Use this scope map instead.")
@click.option("--status", type=click.Choice(STATUSES), help="Enable or disable the token.")
@output_option
@no_question_option
@node_options
def update(
    name: str,
    scope_map: str | None,
    status: str | None,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Change token NAME's scope map or status; takes effect at once, even for clients
    already logged in."""
    if scope_map is None and status is None:
        raise click.UsageError("nothing to change: give --scope-map or --status")
    credentials = open_credentials(load(config_path, data_dir))
    updated = credentials.update_token(name, scope_map=scope_map, status=status)
    emit(output, updated.to_json(), lambda: describe(updated))


@token.command()
@click.argument("name")
@output_option
@no_question_option
@node_options
def show(
    name: str, output: str, config_path: Path | None, data_dir: Path | None
) -> None:
    """Show token NAME (never its passwords: they are only stored hashed)."""
    found = open_credentials(load(config_path, data_dir)).token(name)
    emit(output, found.to_json(), lambda: describe(found))


@token.command("list")
@output_option
@no_question_option
@node_options
def list_(output: str, config_path: Path | None, data_dir: Path | None) -> None:
    """List the tokens of this registry."""
    tokens = open_credentials(load(config_path, data_dir)).tokens()
    emit(
        output,
        [t.to_json() for t in tokens],
        lambda: format_table(
            ["name", "scope map", "status", "origin", "passwords", "created"],
            [
                (
                    t.name,
                    t.scope_map,
                    t.status,
                    t.origin,
                    " ".join(p.name for p in t.passwords) or "-",
                    t.created_at,
                )
                for t in tokens
            ],
        ),
    )


@token.command()
@click.argument("name")
@output_option
@yes_option("deleting the token")
@node_options
def delete(
    name: str, output: str, yes: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Delete token NAME; clients using it are refused at once. Its scope map is kept."""
    credentials = open_credentials(load(config_path, data_dir))
    confirm(f"Delete token {name!r}? Clients using it will be refused at once.", yes)
    credentials.delete_token(name)
    emit(output, {"name": name, "deleted": True}, lambda: f"Deleted token {name!r}.")


@token.group(cls=CredentialGroup)
def credential() -> None:
    """A token's two passwords: make a new one, or revoke one."""


def password_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--password2", is_flag=True, help="The token's second password.")(f)
    return click.option("--password1", is_flag=True, help="The token's first password.")(f)


def _slot(password1: bool, password2: bool) -> str:
    if password1 == password2:
        raise click.UsageError("give one of --password1 or --password2")
    return PASSWORD_NAMES[0] if password1 else PASSWORD_NAMES[1]


@credential.command()
@click.argument("name")
@password_options
@expiry_options
@output_option
@no_question_option
@node_options
def generate(
    name: str,
    password1: bool,
    password2: bool,
    expiration: str | None,
    expiration_in_days: int | None,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Replace one password of token NAME and print the new one, once.

    The old value of that password stops working at once; the other password keeps working,
    so clients can move over before it is replaced too.
    """
    slot = _slot(password1, password2)
    expiry = resolve_expiry(expiration, expiration_in_days)
    credentials = open_credentials(load(config_path, data_dir))
    password = credentials.generate_password(name, slot, expiry)
    emit(
        output,
        {"name": name, "passwords": _passwords_json({slot: password})},
        lambda: f"New {slot} of token {name!r}:\n\n" + _passwords_block({slot: password}, expiry),
    )


@credential.command("delete")
@click.argument("name")
@password_options
@output_option
@no_question_option
@node_options
def delete_credential(
    name: str,
    password1: bool,
    password2: bool,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Revoke one password of token NAME; it stops working at once."""
    slot = _slot(password1, password2)
    credentials = open_credentials(load(config_path, data_dir))
    found = credentials.token(name)
    if slot not in {p.name for p in found.passwords}:
        raise CredentialError(f"token {name!r} has no {slot}")
    credentials.delete_password(name, slot)
    emit(
        output,
        {"name": name, "password": slot, "deleted": True},
        lambda: f"Deleted {slot} of token {name!r}.",
    )
