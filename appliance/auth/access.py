"""Who is asking, and what they may do: the access decision for every request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.auth.scopes import (
    CONTENT_READ,
    DOCKER_ACTIONS,
    METADATA_READ,
    Permission,
    Scope,
    allowed_actions,
    matches,
)
from appliance.oci.names import NAME_RE

ANONYMOUS_ACTIONS = frozenset({CONTENT_READ, METADATA_READ})


@dataclass(frozen=True)
class Identity:
    """A caller: a token (by Basic credentials or a bearer token) or anonymous.

    `repository_actions` answers what the caller may do on a repository right now; for a
    bearer token that is exactly what the token grants, for Basic what the scope map allows.
    """

    subject: str | None
    method: str  # "anonymous", "basic" or "bearer"
    repository_actions: Callable[[str], frozenset[str]]
    catalog: bool = False
    # For a bearer token: what its subject's scope map allows (to tell "fetch a token with more
    # scope" from "you may not").
    entitled_actions: Callable[[str], frozenset[str]] | None = None
    scopes: tuple[Scope, ...] = field(default=())

    @property
    def anonymous(self) -> bool:
        return self.subject is None


class AnonymousPull:
    """Repositories anyone may pull, from `[auth] anonymous_pull` patterns. Off by default."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = tuple(patterns)

    def actions(self, repository: str) -> frozenset[str]:
        if any(matches(p, repository) for p in self.patterns):
            return ANONYMOUS_ACTIONS
        return frozenset()


def grant(
    scopes: list[Scope],
    allowed: Callable[[str], frozenset[str]],
    may_list_catalog: bool,
) -> list[dict]:
    """The JWT `access` claim for the scopes asked: the intersection of each with what is
    allowed. Asking for too much is never an error; the grant is just smaller."""
    access: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        if scope.type == "repository" and NAME_RE.fullmatch(scope.name):
            wanted: set[str] = set()
            for action in scope.actions:
                wanted |= DOCKER_ACTIONS.get(action, frozenset())
            granted = wanted & allowed(scope.name)
            if granted:
                access.setdefault(("repository", scope.name), set()).update(granted)
        elif scope.type == "registry" and scope.name == "catalog" and may_list_catalog:
            access[("registry", "catalog")] = {"*"}
    return [
        {"type": type_, "name": name, "actions": sorted(actions)}
        for (type_, name), actions in access.items()
    ]


def token_permissions(
    permissions: tuple[Permission, ...], anonymous: AnonymousPull
) -> Callable[[str], frozenset[str]]:
    def actions(repository: str) -> frozenset[str]:
        return allowed_actions(permissions, repository) | anonymous.actions(repository)

    return actions


def bearer_actions(access: list[dict]) -> tuple[Callable[[str], frozenset[str]], bool]:
    """What a verified JWT's `access` claim grants, per repository, and whether it may list
    the catalog."""
    repositories: dict[str, frozenset[str]] = {}
    catalog = False
    for entry in access if isinstance(access, list) else []:
        if not isinstance(entry, dict):
            continue
        actions = entry.get("actions")
        if not isinstance(actions, list):
            continue
        if entry.get("type") == "repository" and isinstance(entry.get("name"), str):
            repositories[entry["name"]] = repositories.get(entry["name"], frozenset()) | frozenset(
                a for a in actions if isinstance(a, str)
            )
        elif entry.get("type") == "registry" and entry.get("name") == "catalog":
            catalog = True

    def lookup(repository: str) -> frozenset[str]:
        return repositories.get(repository, frozenset())

    return lookup, catalog
