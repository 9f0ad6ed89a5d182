"""The semver range grammar of tag filters (control/semver.py), against SemVer 2.0's own rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.control.semver import SemverError, parse_range, parse_tag

numbers = st.integers(min_value=0, max_value=40)
words = st.from_regex(r"[0-9]*[a-zA-Z-][0-9a-zA-Z-]{0,5}", fullmatch=True)
identifiers = st.one_of(numbers.map(str), words)
prereleases = st.lists(identifiers, min_size=1, max_size=4).map(".".join)
releases = st.tuples(numbers, numbers, numbers).map(lambda v: ".".join(map(str, v)))
versions = st.one_of(releases, st.tuples(releases, prereleases).map("-".join))


def precedence(a: str, b: str) -> int:
    """SemVer 2.0 §11 spelled out step by step: -1, 0 or 1."""
    (release_a, _, pre_a), (release_b, _, pre_b) = a.partition("-"), b.partition("-")
    core_a, core_b = [int(x) for x in release_a.split(".")], [int(x) for x in release_b.split(".")]
    if core_a != core_b:
        return -1 if core_a < core_b else 1
    if not pre_a or not pre_b:
        return (not pre_a) - (not pre_b)
    for x, y in zip(pre_a.split("."), pre_b.split("."), strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(pre_a.split(".")) > len(pre_b.split("."))) - (
        len(pre_a.split(".")) < len(pre_b.split("."))
    )


def test_the_specs_example_order() -> None:
    ordered = [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0",
    ]
    keys = [parse_tag(tag).key() for tag in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


@given(versions, versions)
def test_order_is_semver_precedence(a: str, b: str) -> None:
    key_a, key_b = parse_tag(a).key(), parse_tag(b).key()
    assert (key_a > key_b) - (key_a < key_b) == precedence(a, b)


@given(releases, releases, st.sampled_from([">=", ">", "<=", "<", "=", ""]))
def test_a_comparator_on_releases_is_the_comparison(tag: str, bound: str, op: str) -> None:
    expected = {
        ">=": lambda c: c >= 0, ">": lambda c: c > 0, "<=": lambda c: c <= 0,
        "<": lambda c: c < 0, "=": lambda c: c == 0, "": lambda c: c == 0,
    }[op]
    assert parse_range(f"{op}{bound}")(tag) == expected(precedence(tag, bound))
    assert parse_range(f"{op}{bound}")(f"v{tag}") == expected(precedence(tag, bound))


@given(releases, releases, releases)
def test_space_is_and_and_bars_are_or(tag: str, low: str, high: str) -> None:
    inside = precedence(tag, low) >= 0 and precedence(tag, high) < 0
    assert parse_range(f">={low} <{high}")(tag) == inside
    assert parse_range(f">={low}  <{high} || ={tag}")(tag)
    either = precedence(tag, low) < 0 or precedence(tag, high) >= 0
    assert parse_range(f"<{low} || >={high}")(tag) == either


def test_left_out_minor_and_patch_count_as_zero() -> None:
    below_two = parse_range(">=1.2 <2")
    assert [t for t in ("1.1.9", "1.2.0", "1.9.30", "2.0.0") if below_two(t)] == [
        "1.2.0", "1.9.30"
    ]
    assert not parse_range("<=1.2")("1.2.1")
    assert parse_range("<1.3")("1.2.99")
    assert parse_range("=v1")("1.0.0") and not parse_range("=1")("1.0.1")


@pytest.mark.parametrize(
    "tag", ["latest", "1.2", "1", "01.2.3", "1.02.3", "1.2.3.4", "V1.2.3", "vv1.2.3", "1.2.3-",
            "1.2.3-01", "1.2.3-a..b", "1.2.3_x", ""]
)
def test_a_tag_that_is_not_a_version_never_matches(tag: str) -> None:
    assert parse_tag(tag) is None
    assert not parse_range(">=0")(tag)
    assert not parse_range("<1000 || >=0.0.0-0")(tag)


def test_a_prerelease_matches_only_a_range_naming_one_of_its_release() -> None:
    stable = parse_range(">=1.2 <2")
    assert not stable("2.0.0-rc.1")
    assert not stable("1.5.0-beta")
    candidates = parse_range(">=2.0.0-rc.1 <2.0.0")
    assert [t for t in ("2.0.0-rc.0", "2.0.0-rc.1", "2.0.0-rc.10", "2.0.0", "2.0.1-rc.2")
            if candidates(t)] == ["2.0.0-rc.1", "2.0.0-rc.10"]
    assert parse_range("=1.0.0-alpha.1")("1.0.0-alpha.1")
    # The prerelease must be named in the same set: the other side of `||` does not count.
    assert not parse_range(">=1 <3 || =2.0.0-rc.1")("2.0.0-rc.2")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("||", "empty side"),
        (">=1.2 ||", "empty side"),
        ("1.x", "'1.x'"),
        (">=a", "'a'"),
        ("=>1", "'>1'"),
        (">=1.2<2", "'1.2<2'"),
        ("1.2.3.4", "'1.2.3.4'"),
        ("01.2", "'01.2'"),
        ("~1.2", "'~1.2'"),
        ("^1.2", "'^1.2'"),
        ("1.2-rc.1", "'1.2-rc.1'"),
    ],
)
def test_a_range_off_the_grammar_is_refused_by_its_part(text: str, complaint: str) -> None:
    with pytest.raises(SemverError, match=re.escape(complaint)):
        parse_range(text)
