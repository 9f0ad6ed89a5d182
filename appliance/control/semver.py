"""Semantic-version ranges for tag filters (`--tag-semver ">=1.2 <2"`, `tag_semver`).

A tag is a version when it is `MAJOR.MINOR.PATCH`, optionally `-PRERELEASE`, as SemVer 2.0
writes it (no leading zeros), with an optional leading `v`: `1.4.2`, `v2.0.0-rc.1`. Any other
tag (`latest`, `1.4`, `2024-06-01`) never matches a range.

A range is comparators separated by spaces, all of which must hold, and such sets separated by
`||`, any of which may: `>=1.2 <2 || >=3.1`. A comparator is `>=`, `>`, `<=`, `<` or `=`
(or no operator, meaning `=`) before a version that may leave out its minor and patch, which
count as 0: `<2` is `<2.0.0`, `<=1.2` is `<=1.2.0` (write `<1.3` for every 1.2.x).

Order is SemVer 2.0 precedence: a prerelease comes before its release, identifiers compare
numerically when both are numbers, a number before a word, a longer list after its prefix.
A prerelease tag matches only a comparator set that names a prerelease of the same
MAJOR.MINOR.PATCH (as npm does): `>=1.2 <2` never takes `2.0.0-rc.1` or `1.5.0-beta`, while
`>=2.0.0-rc.1 <2.0.0` takes `2.0.0-rc.2` only.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

_NUMBER = r"0|[1-9][0-9]*"
_IDENTIFIER = rf"(?:{_NUMBER}|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_PRERELEASE = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*"
_TAG = re.compile(rf"v?({_NUMBER})\.({_NUMBER})\.({_NUMBER})(?:-({_PRERELEASE}))?")
# In a range the minor and patch may be left out (they count as 0).
_BOUND = re.compile(rf"v?({_NUMBER})(?:\.({_NUMBER})(?:\.({_NUMBER})(?:-({_PRERELEASE}))?)?)?")
_COMPARATOR = re.compile(r"\s*(>=|<=|>|<|=)?\s*(\S+)")

_OPERATORS: dict[str, Callable[[tuple, tuple], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
}


class SemverError(ValueError):
    """A range that does not follow the grammar above."""


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def key(self) -> tuple:
        """Sorts by SemVer 2.0 precedence."""
        # A release sorts after each of its prereleases; within a prerelease, (0, n) puts
        # numbers before (1, word) words, and tuples put a prefix before its extensions.
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.release, not self.prerelease, pre)


def _version(match: re.Match[str]) -> Version:
    major, minor, patch, prerelease = match.groups()
    identifiers = tuple(
        int(p) if p.isdigit() else p for p in (prerelease.split(".") if prerelease else ())
    )
    return Version(int(major), int(minor or 0), int(patch or 0), identifiers)


def parse_tag(tag: str) -> Version | None:
    """The version a tag names, or None for a tag that is not one."""
    match = _TAG.fullmatch(tag)
    return _version(match) if match else None


@dataclass(frozen=True)
class _Comparator:
    op: str
    bound: Version

    def __call__(self, version: Version) -> bool:
        return _OPERATORS[self.op](version.key(), self.bound.key())


@dataclass(frozen=True)
class _AllOf:
    comparators: tuple[_Comparator, ...]

    def __call__(self, version: Version) -> bool:
        if not all(c(version) for c in self.comparators):
            return False
        if not version.prerelease:
            return True
        return any(
            c.bound.prerelease and c.bound.release == version.release for c in self.comparators
        )


@dataclass(frozen=True)
class Range:
    """A parsed range; calling it with a tag says whether the tag is a version inside it."""

    text: str
    alternatives: tuple[_AllOf, ...]

    def __call__(self, tag: str) -> bool:
        version = parse_tag(tag)
        return version is not None and any(a(version) for a in self.alternatives)


def parse_range(text: str) -> Range:
    """Parse a range; SemverError, naming the faulty part, for one off the grammar."""
    if not text.strip():
        raise SemverError("a semver range is empty")
    alternatives = []
    for part in text.split("||"):
        if not part.strip():
            raise SemverError(f"semver range {text!r} has an empty side of '||'")
        alternatives.append(_AllOf(tuple(_comparators(part, text))))
    return Range(text, tuple(alternatives))


def _comparators(part: str, text: str) -> list[_Comparator]:
    found = []
    for match in _COMPARATOR.finditer(part):
        op, written = match.group(1) or "=", match.group(2)
        bound = _BOUND.fullmatch(written)
        if bound is None:
            raise SemverError(
                f"{written!r} in semver range {text!r} is not a version (MAJOR[.MINOR[.PATCH"
                "[-PRERELEASE]]], optionally after 'v', after one of >= > <= < =)"
            )
        found.append(_Comparator(op, _version(bound)))
    return found
