"""Repository names, tags and references (oci/names.py) against the distribution spec's grammar,
for every string hypothesis can think of: what the grammar accepts is returned unchanged, what it
refuses raises OCIError with the spec's code, and nothing else ever escapes."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.names import parse_reference, validate_name, validate_tag

# The grammar as the distribution spec writes it, kept apart from the code under test.
SPEC_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
separator = st.one_of(st.sampled_from([".", "_", "__"]), st.integers(1, 3).map(lambda n: "-" * n))
component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    alnum, st.lists(st.tuples(separator, alnum), max_size=3),
)
names = st.lists(component, min_size=1, max_size=5).map("/".join).filter(lambda n: len(n) <= 255)
tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("abcXYZ019_"),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", max_size=127),
)
# Text that looks like names: the grammar's alphabet, and the characters it excludes.
name_like = st.text("abz09._-/A :%\\\x00é", max_size=40)


def refusal(call, value: str) -> ErrorCode | None:
    try:
        assert call(value) is not None
    except OCIError as err:
        return err.code
    return None


@given(names)
def test_every_name_of_the_grammar_is_accepted_unchanged(name: str) -> None:
    assert validate_name(name) == name


@given(st.one_of(name_like, st.text(max_size=300)))
def test_a_name_is_accepted_exactly_when_the_spec_grammar_matches(text: str) -> None:
    code = refusal(validate_name, text)
    if SPEC_NAME.fullmatch(text) and len(text) <= 255:
        assert code is None
    else:
        assert code is ErrorCode.NAME_INVALID


@given(names, st.sampled_from(["A", "/", "-", ".", "//", " ", ":"]), st.booleans())
def test_a_name_broken_at_either_end_is_name_invalid(name: str, junk: str, front: bool) -> None:
    broken = junk + name if front else name + junk
    assert refusal(validate_name, broken) is ErrorCode.NAME_INVALID


@given(names, st.integers(0, 300))
def test_a_name_longer_than_255_characters_is_name_invalid(name: str, more: int) -> None:
    longer = f"{name}/{'a' * (256 - len(name) + more)}"  # still of the grammar, but too long
    assert SPEC_NAME.fullmatch(longer) and len(longer) > 255
    assert refusal(validate_name, longer) is ErrorCode.NAME_INVALID


@given(tags)
def test_every_tag_of_the_grammar_is_a_tag_reference(tag: str) -> None:
    assert validate_tag(tag) == tag
    assert parse_reference(tag) == tag


@given(st.text(max_size=140))
def test_a_tag_is_accepted_exactly_when_the_spec_grammar_matches(text: str) -> None:
    code = refusal(validate_tag, text)
    assert code is (None if SPEC_TAG.fullmatch(text) else ErrorCode.MANIFEST_INVALID)


@given(st.one_of(tags, st.text(max_size=140), st.text("sha256:0123456789abcdef", max_size=80)))
def test_a_reference_is_a_tag_a_digest_or_a_refusal(text: str) -> None:
    try:
        reference = parse_reference(text)
    except OCIError as err:
        assert err.code in (ErrorCode.MANIFEST_INVALID, ErrorCode.DIGEST_INVALID)
        # A colon makes it a digest; the refusal then says what is wrong with the digest.
        assert (err.code is ErrorCode.DIGEST_INVALID) == (":" in text)
        return
    if isinstance(reference, Digest):
        assert str(reference) == text
    else:
        assert reference == text and SPEC_TAG.fullmatch(text)
