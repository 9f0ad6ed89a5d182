"""Digests (oci/digests.py): `sha256:<64 lower-case hex>` round-trips through parse and str, and
any other text is DIGEST_INVALID, never another exception."""

from __future__ import annotations

import hashlib
import re

from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@given(st.binary(max_size=4096))
def test_the_digest_of_any_bytes_round_trips(data: bytes) -> None:
    digest = Digest.of(data)
    assert str(digest) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert Digest.parse(str(digest)) == digest


@given(hex64)
def test_every_sha256_digest_parses_to_itself(encoded: str) -> None:
    digest = Digest.parse(f"sha256:{encoded}")
    assert digest.hex == encoded
    assert str(digest) == f"sha256:{encoded}"


@given(st.one_of(
    st.text(max_size=100),
    st.builds("{}:{}".format, st.sampled_from(["sha256", "sha512", "SHA256", "md5", ""]),
              st.text("0123456789abcdefABCDEF=_-", max_size=130)),
))
def test_anything_but_sha256_hex_is_digest_invalid(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except OCIError as err:
        assert err.code is ErrorCode.DIGEST_INVALID
        assert not SHA256.fullmatch(text)
    else:
        assert SHA256.fullmatch(text) and str(digest) == text


@given(hex64.filter(lambda h: any(c in "abcdef" for c in h)))
def test_upper_case_hex_is_digest_invalid(encoded: str) -> None:
    try:
        Digest.parse(f"sha256:{encoded.upper()}")
    except OCIError as err:
        assert err.code is ErrorCode.DIGEST_INVALID
    else:
        raise AssertionError("upper-case hex was accepted")
