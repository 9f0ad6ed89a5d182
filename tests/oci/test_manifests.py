"""Manifest parsing (oci/manifests.py): whatever a client sends, parse_manifest answers a parsed
manifest or MANIFEST_INVALID, never another exception (which the server would turn into a 500);
and every well-formed image manifest or index parses to the descriptors it lists."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ParsedManifest,
    parse_manifest,
)

MEDIA_TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]
content_types = st.one_of(
    st.sampled_from([*MEDIA_TYPES, "application/json", "", "text/plain"]),
    st.sampled_from(MEDIA_TYPES).map(lambda t: t + "; charset=utf-8"),
    st.text(max_size=30),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map("sha256:{}".format)
string_maps = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)
descriptors = st.fixed_dictionaries(
    {
        "mediaType": st.text(min_size=1, max_size=40),
        "digest": digests,
        "size": st.integers(0, 2**53),
    },
    optional={"annotations": string_maps},
)
image_manifests = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(2),
        "mediaType": st.sampled_from([OCI_MANIFEST, DOCKER_MANIFEST]),
        "config": descriptors,
        "layers": st.lists(descriptors, max_size=5),
    },
    optional={
        "annotations": string_maps, "artifactType": st.text(max_size=20), "subject": descriptors,
    },
)
indexes = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(2),
        "mediaType": st.sampled_from([OCI_INDEX, DOCKER_MANIFEST_LIST]),
        "manifests": st.lists(descriptors, max_size=5),
    },
    optional={"annotations": string_maps, "subject": descriptors},
)


def parsed_or_invalid(body: bytes, content_type: str) -> ParsedManifest | None:
    try:
        return parse_manifest(body, content_type)
    except OCIError as err:
        assert err.code is ErrorCode.MANIFEST_INVALID, err
        return None


def listed(descriptor: dict[str, Any]) -> tuple[str, Digest, int]:
    return descriptor["mediaType"], Digest.parse(descriptor["digest"]), descriptor["size"]


@given(st.binary(max_size=2000), content_types)
@example(b"1" * 5000, OCI_MANIFEST)  # more digits than Python converts to an int by default
@example(b'{"schemaVersion": ' + b"9" * 5000 + b"}", OCI_MANIFEST)
@example(b"[" * 100_000, OCI_MANIFEST)
@example(b"\xff\xfe{}", OCI_MANIFEST)
def test_any_bytes_are_a_manifest_or_manifest_invalid(body: bytes, content_type: str) -> None:
    parsed_or_invalid(body, content_type)


@given(json_values, content_types)
def test_any_json_is_a_manifest_or_manifest_invalid(doc: Any, content_type: str) -> None:
    parsed_or_invalid(json.dumps(doc).encode(), content_type)


@given(image_manifests)
def test_an_image_manifest_parses_to_its_config_and_layers(doc: dict[str, Any]) -> None:
    parsed = parse_manifest(json.dumps(doc).encode(), doc["mediaType"])
    assert parsed.media_type == doc["mediaType"]
    assert [(d.media_type, d.digest, d.size) for d in parsed.blobs] == [
        listed(d) for d in [doc["config"], *doc["layers"]]
    ]
    assert parsed.config_media_type == doc["config"]["mediaType"]
    assert parsed.annotations == doc.get("annotations", {})
    assert parsed.artifact_type == doc.get("artifactType")
    if "subject" in doc:
        assert parsed.subject is not None
        subject = parsed.subject
        assert (subject.media_type, subject.digest, subject.size) == listed(doc["subject"])
    else:
        assert parsed.subject is None


@given(indexes)
def test_an_index_parses_to_its_manifests(doc: dict[str, Any]) -> None:
    parsed = parse_manifest(json.dumps(doc).encode(), doc["mediaType"])
    assert parsed.blobs == ()
    assert [(d.media_type, d.digest, d.size) for d in parsed.manifests] == [
        listed(d) for d in doc["manifests"]
    ]


@given(st.one_of(image_manifests, indexes), st.data())
def test_a_manifest_with_any_field_replaced_is_a_manifest_or_manifest_invalid(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(doc)))
    doc[key] = data.draw(json_values)
    parsed_or_invalid(json.dumps(doc).encode(), data.draw(content_types))
