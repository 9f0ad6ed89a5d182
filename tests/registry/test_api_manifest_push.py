"""end-7 (PUT a manifest) and end-7b (PUT by digest with ?tag=)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    canonical,
    descriptor,
    digest_of,
    make_image,
    push_blob,
    push_image,
    push_manifest,
)
from support.registry import (
    EMPTY_CONFIG,
    absolute,
    assert_oci_error,
    get_manifest,
    list_tags,
    make_artifact,
    make_index,
    subject_of,
)
from yarl import URL

if TYPE_CHECKING:
    from support.server import RegistryProcess

MIB = 1024 * 1024


async def push_blobs(http: aiohttp.ClientSession, base: str, repo: str, image: Image) -> None:
    for blob in image.blobs:
        await push_blob(http, base, repo, blob)


async def assert_manifest_created(
    http: aiohttp.ClientSession, base: str, resp: aiohttp.ClientResponse, image: Image
) -> None:
    """201, the digest of the pushed bytes, and a Location that serves those bytes."""
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == image.digest
    async with http.get(absolute(base, resp.headers["Location"])) as pulled:
        assert pulled.status == 200
        assert await pulled.read() == image.manifest
        assert pulled.headers["Content-Type"] == image.media_type


def padded_image(seed: str, total_size: int) -> Image:
    """An OCI manifest padded with an annotation to exactly `total_size` bytes."""
    image = make_image(seed=seed, layers=1)
    doc = json.loads(image.manifest)
    doc["annotations"] = {"pad": ""}
    doc["annotations"]["pad"] = "x" * (total_size - len(canonical(doc)))
    body = canonical(doc)
    assert len(body) == total_size
    return Image(body, OCI_MANIFEST, image.blobs)


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_oci_manifest_push_answers_201_with_location_and_digest(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, by: str
) -> None:
    image = make_image(seed=repo)
    await push_blobs(http, registry.url, repo, image)
    reference = "v1" if by == "tag" else image.digest
    resp = await push_manifest(http, registry.url, repo, reference, image.manifest, OCI_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, image)


async def test_oci_index_push_after_its_children(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    children = [make_image(seed=f"{repo}-{i}") for i in range(2)]
    for child in children:
        await push_image(http, registry.url, repo, child)
    index = make_index(children)
    resp = await push_manifest(http, registry.url, repo, "multi", index.manifest, OCI_INDEX)
    await assert_manifest_created(http, registry.url, resp, index)
    assert await get_manifest(http, registry.url, repo, "multi") == (200, index.manifest)


async def test_docker_schema2_manifest_push_keeps_its_media_type(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo, media_type=DOCKER_MANIFEST)
    await push_blobs(http, registry.url, repo, image)
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, DOCKER_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, image)


async def test_docker_manifest_list_push_keeps_its_media_type(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    children = [make_image(seed=f"{repo}-{i}", media_type=DOCKER_MANIFEST) for i in range(2)]
    for child in children:
        await push_image(http, registry.url, repo, child)
    manifest_list = make_index(children, media_type=DOCKER_LIST)
    resp = await push_manifest(
        http, registry.url, repo, "multi", manifest_list.manifest, DOCKER_LIST
    )
    await assert_manifest_created(http, registry.url, resp, manifest_list)


async def test_artifact_manifest_with_empty_config_is_accepted(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    artifact = make_artifact(subject=None)
    assert artifact.blobs[0] == EMPTY_CONFIG
    assert json.loads(artifact.manifest)["config"]["mediaType"] == OCI_EMPTY
    await push_blobs(http, registry.url, repo, artifact)
    resp = await push_manifest(http, registry.url, repo, "sbom", artifact.manifest, OCI_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, artifact)


async def test_push_by_digest_with_mismatched_body_is_400_digest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_blobs(http, registry.url, repo, image)
    wrong = digest_of(b"another manifest")
    resp = await push_manifest(http, registry.url, repo, wrong, image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "DIGEST_INVALID")
    assert (await get_manifest(http, registry.url, repo, wrong))[0] == 404
    assert (await get_manifest(http, registry.url, repo, image.digest))[0] == 404


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b"null",
        b'"a string"',
        b"\xff\xfe\x00garbage",
        b'{"schemaVersion": 2}',
        b'{"schemaVersion": 1, "mediaType": "' + OCI_MANIFEST.encode() + b'"}',
        b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'",'
        b' "config": {"digest": 123, "size": "x"}, "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'",'
        b' "config": {"mediaType": "a/b", "digest": "sha256:x", "size": 2}, "layers": "abc"}',
        b"[" * 100000 + b"]" * 100000,
        b'{"schemaVersion": ' + b"9" * 5000 + b"}",
    ],
    ids=[
        "broken", "empty", "array", "null", "string", "not-utf8", "no-config", "schema1",
        "config-missing", "config-wrong-types", "layers-not-list", "deeply-nested",
        "5000-digit-number",
    ],
)
async def test_malformed_manifest_is_400_manifest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, body: bytes
) -> None:
    resp = await push_manifest(http, registry.url, repo, "bad", body, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID")


async def test_manifest_referencing_a_missing_blob_is_400_manifest_blob_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs[:-1]:  # the last layer never arrives
        await push_blob(http, registry.url, repo, blob)
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    assert (await get_manifest(http, registry.url, repo, "v1"))[0] == 404


async def test_manifest_referencing_a_missing_config_is_400_manifest_blob_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs[1:]:
        await push_blob(http, registry.url, repo, blob)
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_manifest_referencing_a_blob_of_another_repository_is_refused(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """Accepting it would publish an image whose layers this repository cannot serve."""
    image = make_image(seed=repo)
    await push_blobs(http, registry.url, f"{repo}-other", image)
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_index_referencing_an_unknown_manifest_is_400_manifest_blob_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    present, absent = make_image(seed=f"{repo}-a"), make_image(seed=f"{repo}-b")
    await push_image(http, registry.url, repo, present)
    index = make_index([present, absent])
    resp = await push_manifest(http, registry.url, repo, "multi", index.manifest, OCI_INDEX)
    await assert_oci_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_manifest_of_4_mb_is_accepted(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = padded_image(repo, 4_000_000)
    await push_blobs(http, registry.url, repo, image)
    resp = await push_manifest(http, registry.url, repo, "big", image.manifest, OCI_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, image)


async def test_manifest_over_4_mib_is_413(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = padded_image(repo, 4 * MIB + 1)
    await push_blobs(http, registry.url, repo, image)
    resp = await push_manifest(http, registry.url, repo, "huge", image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, 413)
    assert (await get_manifest(http, registry.url, repo, "huge"))[0] == 404


async def test_manifest_whose_subject_is_absent_is_accepted_with_oci_subject(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    subject = subject_of(make_image(seed=f"{repo}-never-pushed"))
    artifact = make_artifact(subject=subject)
    await push_blobs(http, registry.url, repo, artifact)
    resp = await push_manifest(http, registry.url, repo, artifact.digest, artifact.manifest,
                               OCI_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, artifact)
    assert resp.headers["OCI-Subject"] == subject["digest"]


async def test_manifest_whose_subject_is_present_gets_oci_subject(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    artifact = make_artifact(subject=subject_of(target))
    await push_blobs(http, registry.url, repo, artifact)
    resp = await push_manifest(http, registry.url, repo, artifact.digest, artifact.manifest,
                               OCI_MANIFEST)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == target.digest


async def test_manifest_without_subject_gets_no_oci_subject(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_blobs(http, registry.url, repo, image)
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    assert resp.status == 201
    assert "OCI-Subject" not in resp.headers


async def test_pushing_a_tag_again_moves_it(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    first, second = make_image(seed=f"{repo}-1"), make_image(seed=f"{repo}-2")
    await push_image(http, registry.url, repo, first, "latest")
    await push_image(http, registry.url, repo, second, "latest")
    assert await get_manifest(http, registry.url, repo, "latest") == (200, second.manifest)
    assert await get_manifest(http, registry.url, repo, first.digest) == (200, first.manifest)


async def test_pushing_the_same_manifest_twice_is_idempotent(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == image.digest


async def test_tag_of_128_characters_is_accepted(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    tag = "_" + "a.b-C" * 25 + "xy"
    assert len(tag) == 128
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, tag)
    assert await get_manifest(http, registry.url, repo, tag) == (200, image.manifest)
    assert await list_tags(http, registry.url, repo) == [tag]


async def test_put_by_digest_with_tag_parameters_creates_every_tag(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_blobs(http, registry.url, repo, image)
    url = URL(f"{registry.url}/v2/{repo}/manifests/{image.digest}").with_query(
        [("tag", "a"), ("tag", "b")]
    )
    async with http.put(url, data=image.manifest, headers={"Content-Type": OCI_MANIFEST}) as resp:
        await resp.read()
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == image.digest
    for tag in ("a", "b"):
        async with http.get(f"{registry.url}/v2/{repo}/manifests/{tag}") as got:
            assert got.status == 200
            assert await got.read() == image.manifest
            assert got.headers["Docker-Content-Digest"] == image.digest
    assert await list_tags(http, registry.url, repo) == ["a", "b"]


async def test_oci_manifest_with_unknown_layer_media_type_is_stored(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """Media types of layers are the client's business (Helm charts, WASM, SBOMs...)."""
    payload, config = b"chart bytes", canonical({"name": "chart"})
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.cncf.helm.config.v1+json", config),
        "layers": [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", payload)],
    }
    image = Image(canonical(doc), OCI_MANIFEST, [config, payload])
    await push_blobs(http, registry.url, repo, image)
    resp = await push_manifest(http, registry.url, repo, "0.1.0", image.manifest, OCI_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, image)


async def test_manifest_with_layer_but_no_media_type_in_body_uses_content_type(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """`mediaType` is optional in an OCI manifest; the Content-Type says what it is."""
    layer, config = b"layer", canonical({"os": "linux"})
    doc = {
        "schemaVersion": 2,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }
    image = Image(canonical(doc), OCI_MANIFEST, [config, layer])
    await push_blobs(http, registry.url, repo, image)
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    await assert_manifest_created(http, registry.url, resp, image)


async def test_put_by_digest_with_a_bad_tag_parameter_creates_no_tag(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    url = URL(f"{registry.url}/v2/{repo}/manifests/{image.digest}").with_query(
        [("tag", "good"), ("tag", ".bad")]
    )
    async with http.put(url, data=image.manifest, headers={"Content-Type": OCI_MANIFEST}) as resp:
        await assert_oci_error(resp, 400)
    assert await list_tags(http, registry.url, repo) == ["v1"]


async def test_put_by_sha512_digest_is_refused_with_a_message_naming_sha256(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_blobs(http, registry.url, repo, image)
    reference = "sha512:" + hashlib.sha512(image.manifest).hexdigest()
    resp = await push_manifest(http, registry.url, repo, reference, image.manifest, OCI_MANIFEST)
    error = await assert_oci_error(resp, 400, "DIGEST_INVALID")
    assert "sha256" in error["message"].lower(), error
