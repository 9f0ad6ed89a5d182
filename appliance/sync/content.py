"""What to copy from an upstream: the repositories in scope and the tags of each.

Scope entries are repository names or patterns (`*` within a segment, `**` across, as in scope
maps). Names need nothing from the upstream; patterns are resolved against its `_catalog`, and
an upstream without one (or that refuses it to us) has its patterns skipped with a warning —
DESIGN.md §2: no `_catalog` is needed upstream for an explicit list.

Tag filters are Python regular expressions searched in the tag (anchor with `^…$` for a whole
tag match) and a semver range (control/semver.py); a tag is copied when it matches the include
filter and is a version in the range (each if given), and does not match the exclude filter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from appliance.auth.scopes import matches
from appliance.control.semver import Range, SemverError, parse_range
from appliance.sync.client import RegistryClient

log = logging.getLogger(__name__)


class ScopeError(ValueError):
    """A scope that cannot be used as written: a tag filter that is not a regex, or a semver
    range off its grammar."""


@dataclass(frozen=True)
class TagFilter:
    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None
    semver: Range | None = None

    @classmethod
    def of(
        cls, include: str | None, exclude: str | None, semver: str | None = None
    ) -> TagFilter:
        try:
            versions = parse_range(semver) if semver else None
        except SemverError as err:
            raise ScopeError(f"tag semver filter: {err}") from None
        return cls(_compile(include, "tag include"), _compile(exclude, "tag exclude"), versions)

    def __call__(self, tag: str) -> bool:
        if self.include is not None and not self.include.search(tag):
            return False
        if self.semver is not None and not self.semver(tag):
            return False
        return self.exclude is None or not self.exclude.search(tag)


def _compile(pattern: str | None, what: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ScopeError(f"{what} filter {pattern!r} is not a regular expression: {err}") from None


def is_pattern(entry: str) -> bool:
    return "*" in entry


@dataclass(frozen=True)
class ResolvedScope:
    repositories: list[str]
    warnings: list[str]


async def repositories_in_scope(client: RegistryClient, entries: list[str]) -> ResolvedScope:
    """The repositories `entries` name on this upstream, sorted, each once."""
    names = {entry for entry in entries if not is_pattern(entry)}
    patterns = [entry for entry in entries if is_pattern(entry)]
    warnings: list[str] = []
    if patterns:
        catalog = await client.catalog()
        if catalog is None:
            warnings.append(
                f"{client.endpoint} offers no _catalog: skipped the patterns "
                f"{', '.join(patterns)}; list the repositories by name instead"
            )
        else:
            names.update(name for name in catalog if any(matches(p, name) for p in patterns))
    for warning in warnings:
        log.warning("%s", warning)
    return ResolvedScope(sorted(names), warnings)
