"""`connected-registry scope-map …`: named sets of repository permissions that tokens point at
(ACR's `az acr scope-map`), kept in the node's database; a running server sees changes at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.auth.tokens import ScopeMap, parse_permissions
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


@click.group("scope-map", cls=CredentialGroup)
def scope_map() -> None:
    """Scope maps: which actions a token may take on which repositories.

    \b
    Actions: content/read (pull), content/write (push, with content/read),
    content/delete, metadata/read (tags list, catalog), metadata/write.
    REPO is a repository name or a pattern: * matches within one path segment,
    ** across segments (team/*, team/**).
    """


def describe(scope: ScopeMap) -> str:
    """A scope map for people: its fields, then one line per repository."""
    fields = format_fields(
        [
            ("Name", scope.name),
            ("Description", scope.description or "-"),
            ("Origin", scope.origin),
            ("Created", scope.created_at),
            ("Updated", scope.updated_at),
        ]
    )
    permissions = format_table(
        ["repository", "actions"],
        [(p.repository, " ".join(sorted(p.actions))) for p in scope.permissions],
    )
    return f"{fields}\n\n{permissions}"


def _pairs(permissions: Permissions) -> list[tuple[str, list[str]]]:
    return [(repository, list(actions)) for repository, actions in permissions]


@scope_map.command()
@click.argument("name")
@click.option(
    "--repository",
    "repositories",
    cls=RepositoryOption,
    required=True,
    help="A repository (or pattern) and the actions allowed on it; repeat for more.",
)
@click.option("--description", default="", help="Free text shown with the scope map.")
@output_option
@no_question_option
@node_options
def create(
    name: str,
    repositories: Permissions,
    description: str,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Create scope map NAME (5-50 letters, digits and '-').

    \b
    Example:
      connected-registry scope-map create team-pull \\
        --repository 'team/*' content/read metadata/read \\
        --repository base/alpine content/read
    """
    credentials = open_credentials(load(config_path, data_dir), create=True)
    created = credentials.create_scope_map(
        name, parse_permissions(_pairs(repositories)), description
    )
    emit(output, created.to_json(), lambda: describe(created))


@scope_map.command()
@click.argument("name")
@click.option(
    "--add-repository",
    "add",
    cls=RepositoryOption,
    help="Allow these actions on a repository (or pattern); repeat for more.",
)
@click.option(
    "--remove-repository",
    "remove",
    cls=RepositoryOption,
    help="Take these actions away from a repository (or pattern); repeat for more.",
)
@click.option("--description", default=None, help="Replace the description.")
@output_option
@no_question_option
@node_options
def update(
    name: str,
    add: Permissions,
    remove: Permissions,
    description: str | None,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Change scope map NAME; tokens using it get the new permissions at once."""
    if not add and not remove and description is None:
        raise click.UsageError(
            "nothing to change: give --add-repository, --remove-repository or --description"
        )
    credentials = open_credentials(load(config_path, data_dir))
    updated = credentials.update_scope_map(
        name,
        add=parse_permissions(_pairs(add)),
        remove=parse_permissions(_pairs(remove)),
        description=description,
    )
    emit(output, updated.to_json(), lambda: describe(updated))


@scope_map.command()
@click.argument("name")
@output_option
@no_question_option
@node_options
def show(
    name: str, output: str, config_path: Path | None, data_dir: Path | None
) -> None:
    """Show scope map NAME and its permissions."""
    found = open_credentials(load(config_path, data_dir)).scope_map(name)
    emit(output, found.to_json(), lambda: describe(found))


@scope_map.command("list")
@output_option
@no_question_option
@node_options
def list_(output: str, config_path: Path | None, data_dir: Path | None) -> None:
    """List the scope maps of this registry."""
    scopes = open_credentials(load(config_path, data_dir)).scope_maps()
    emit(
        output,
        [s.to_json() for s in scopes],
        lambda: format_table(
            ["name", "repositories", "origin", "description"],
            [
                (
                    s.name,
                    " ".join(p.repository for p in s.permissions),
                    s.origin,
                    s.description,
                )
                for s in scopes
            ],
        ),
    )


@scope_map.command()
@click.argument("name")
@output_option
@yes_option("deleting the scope map")
@node_options
def delete(
    name: str, output: str, yes: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Delete scope map NAME (refused while a token uses it)."""
    credentials = open_credentials(load(config_path, data_dir))
    confirm(f"Delete scope map {name!r}?", yes)
    credentials.delete_scope_map(name)
    emit(output, {"name": name, "deleted": True}, lambda: f"Deleted scope map {name!r}.")
