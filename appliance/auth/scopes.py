"""Actions, repository patterns and Docker scopes (DESIGN.md §7 "Actions", "Repository
patterns").

A permission is a repository name or pattern and a set of actions. `*` matches within one path
segment, `**` across segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

CONTENT_READ = "content/read"
CONTENT_WRITE = "content/write"
CONTENT_DELETE = "content/delete"
METADATA_READ = "metadata/read"
METADATA_WRITE = "metadata/write"
ACTIONS = (CONTENT_READ, CONTENT_WRITE, CONTENT_DELETE, METADATA_READ, METADATA_WRITE)

PUSH = frozenset({CONTENT_READ, CONTENT_WRITE})

# What a Docker scope action asks for, in our actions.
DOCKER_ACTIONS: dict[str, frozenset[str]] = {
    "pull": frozenset({CONTENT_READ, METADATA_READ}),
    "push": frozenset({CONTENT_READ, CONTENT_WRITE, METADATA_READ}),
    "delete": frozenset({CONTENT_DELETE}),
    "*": frozenset(ACTIONS),
}

_PATTERN_CHARS = re.compile(r"[a-z0-9._/*-]+")


class PatternError(ValueError):
    pass


def validate_pattern(pattern: str) -> str:
    """A repository name, or a pattern of name characters with `*` and `**`."""
    if not pattern or len(pattern) > 255 or not _PATTERN_CHARS.fullmatch(pattern):
        raise PatternError(
            f"repository {pattern!r} must be a repository name or a pattern of lower-case name "
            "characters with * (one path segment) or ** (any depth)"
        )
    if "***" in pattern:
        raise PatternError(f"repository pattern {pattern!r}: use * or **, not ***")
    return pattern


@lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*|\*)", pattern):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def matches(pattern: str, repository: str) -> bool:
    if "*" not in pattern:
        return pattern == repository
    return _pattern_regex(pattern).fullmatch(repository) is not None


def validate_actions(actions: list[str] | tuple[str, ...]) -> frozenset[str]:
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise PatternError(f"unknown action {unknown[0]!r}; actions are {', '.join(ACTIONS)}")
    if not actions:
        raise PatternError("a repository permission needs at least one action")
    return frozenset(actions)


@dataclass(frozen=True, slots=True)
class Permission:
    repository: str
    actions: frozenset[str]

    def to_json(self) -> dict:
        return {"repository": self.repository, "actions": sorted(self.actions)}


# What a sync token may do on the gateway API for one connected registry (ACR's names).
CONFIG_READ, CONFIG_WRITE = "config/read", "config/write"
MESSAGE_READ, MESSAGE_WRITE = "message/read", "message/write"
GATEWAY_ACTIONS = (CONFIG_READ, CONFIG_WRITE, MESSAGE_READ, MESSAGE_WRITE)


@dataclass(frozen=True, slots=True)
class GatewayPermission:
    """Gateway actions on one connected registry: a parent grants its children's sync tokens
    these for themselves, and every ancestor's sync token for all its descendants."""

    registry: str
    actions: frozenset[str]

    def to_json(self) -> dict:
        return {"gateway": self.registry, "actions": sorted(self.actions)}


def allowed_actions(permissions: tuple[Permission, ...], repository: str) -> frozenset[str]:
    """Everything any permission grants on `repository`."""
    granted: set[str] = set()
    for permission in permissions:
        if matches(permission.repository, repository):
            granted |= permission.actions
    return frozenset(granted)


@dataclass(frozen=True, slots=True)
class Scope:
    """One Docker scope: `repository:<name>:<action,…>` or `registry:catalog:*`."""

    type: str
    name: str
    actions: tuple[str, ...]


def parse_scope(text: str) -> Scope | None:
    """Parse a Docker scope; None for one that is malformed (ignored, never an error: the token
    server grants the intersection of what was asked and what is allowed)."""
    # A repository name may carry a registry host:port, so split from both ends.
    type_, sep, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name or not type_:
        return None
    type_ = type_.split("(", 1)[0]
    return Scope(type_, name, tuple(a for a in actions.split(",") if a))
