"""end-12a/12b: the referrers API, with and without the artifactType filter."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import aiohttp
from support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    make_image,
    push_blob,
    push_image,
    push_manifest,
)
from support.registry import (
    MISSING_DIGEST,
    assert_oci_error,
    make_artifact,
    make_index,
    subject_of,
)

if TYPE_CHECKING:
    from support.server import RegistryProcess

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
SIG_CONFIG = "application/vnd.example.signature.config.v1+json"


async def push_referrer(http: aiohttp.ClientSession, base: str, repo: str, image: Image) -> None:
    for blob in image.blobs:
        await push_blob(http, base, repo, blob)
    resp = await push_manifest(http, base, repo, image.digest, image.manifest, image.media_type)
    assert resp.status == 201


async def get_referrers(
    http: aiohttp.ClientSession, base: str, repo: str, digest: str, artifact_type: str = ""
) -> tuple[dict, aiohttp.ClientResponse]:
    url = f"{base}/v2/{repo}/referrers/{digest}"
    params = {"artifactType": artifact_type} if artifact_type else None
    async with http.get(url, params=params) as resp:
        body = await resp.read()
        assert resp.status == 200, body[:500]
        assert resp.content_type == OCI_INDEX
        doc = json.loads(body)
        assert doc["schemaVersion"] == 2
        assert doc["mediaType"] == OCI_INDEX
        assert isinstance(doc["manifests"], list)
        return doc, resp


def by_digest(doc: dict) -> dict[str, dict]:
    return {d["digest"]: d for d in doc["manifests"]}


async def test_referrers_lists_each_referrer_with_artifact_type_and_annotations(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    sbom = make_artifact(subject_of(target), SBOM, annotations={"org.example.kind": "sbom"})
    signature = make_artifact(
        subject_of(target), None, annotations={"org.example.kind": "sig"},
        config_media_type=SIG_CONFIG,
    )
    for artifact in (sbom, signature):
        await push_referrer(http, registry.url, repo, artifact)
    doc, resp = await get_referrers(http, registry.url, repo, target.digest)
    assert "OCI-Filters-Applied" not in resp.headers
    found = by_digest(doc)
    assert set(found) == {sbom.digest, signature.digest}
    assert found[sbom.digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sbom.digest,
        "size": len(sbom.manifest),
        "artifactType": SBOM,
        "annotations": {"org.example.kind": "sbom"},
    }
    assert found[signature.digest]["artifactType"] == SIG_CONFIG  # no artifactType: config's
    assert found[signature.digest]["size"] == len(signature.manifest)
    assert found[signature.digest]["annotations"] == {"org.example.kind": "sig"}


async def test_index_referrer_without_artifact_type_has_none(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target, child = make_image(seed=repo), make_image(seed=f"{repo}-child")
    await push_image(http, registry.url, repo, target, "v1")
    await push_image(http, registry.url, repo, child)
    index = make_index([child], subject=subject_of(target))
    await push_referrer(http, registry.url, repo, index)
    doc, _ = await get_referrers(http, registry.url, repo, target.digest)
    assert doc["manifests"] == [
        {"mediaType": OCI_INDEX, "digest": index.digest, "size": len(index.manifest)}
    ]


async def test_index_referrer_with_artifact_type_carries_it(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target, child = make_image(seed=repo), make_image(seed=f"{repo}-child")
    await push_image(http, registry.url, repo, target, "v1")
    await push_image(http, registry.url, repo, child)
    index = make_index([child], subject=subject_of(target), artifactType=SBOM)
    await push_referrer(http, registry.url, repo, index)
    doc, _ = await get_referrers(http, registry.url, repo, target.digest)
    assert [d["artifactType"] for d in doc["manifests"]] == [SBOM]


async def test_digest_without_referrers_gives_an_empty_index(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    doc, _ = await get_referrers(http, registry.url, repo, target.digest)
    assert doc["manifests"] == []


async def test_digest_never_pushed_gives_an_empty_index_not_404(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    doc, _ = await get_referrers(http, registry.url, repo, MISSING_DIGEST)
    assert doc["manifests"] == []


async def test_referrer_pushed_before_its_subject_is_listed(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    sbom = make_artifact(subject_of(target), SBOM)
    await push_referrer(http, registry.url, repo, sbom)
    doc, _ = await get_referrers(http, registry.url, repo, target.digest)
    assert list(by_digest(doc)) == [sbom.digest]
    await push_image(http, registry.url, repo, target, "v1")
    doc, _ = await get_referrers(http, registry.url, repo, target.digest)
    assert list(by_digest(doc)) == [sbom.digest]


async def test_artifact_type_filter_returns_only_matches_and_says_so(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    sbom = make_artifact(subject_of(target), SBOM)
    signature = make_artifact(subject_of(target), SIGNATURE, payload=b"signature bytes")
    for artifact in (sbom, signature):
        await push_referrer(http, registry.url, repo, artifact)
    doc, resp = await get_referrers(http, registry.url, repo, target.digest, SIGNATURE)
    assert list(by_digest(doc)) == [signature.digest]
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"


async def test_artifact_type_filter_matching_nothing_gives_an_empty_index(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    await push_referrer(http, registry.url, repo, make_artifact(subject_of(target), SBOM))
    doc, resp = await get_referrers(
        http, registry.url, repo, target.digest, "application/vnd.example.none"
    )
    assert doc["manifests"] == []
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"


async def test_deleted_referrer_is_no_longer_listed(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    sbom = make_artifact(subject_of(target), SBOM)
    await push_referrer(http, registry.url, repo, sbom)
    async with http.delete(f"{registry.url}/v2/{repo}/manifests/{sbom.digest}") as resp:
        assert resp.status == 202
    doc, _ = await get_referrers(http, registry.url, repo, target.digest)
    assert doc["manifests"] == []


async def test_referrers_of_another_repository_are_not_listed(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    other = f"{repo}-other"
    target = make_image(seed=repo)
    await push_image(http, registry.url, repo, target, "v1")
    await push_image(http, registry.url, other, target, "v1")
    await push_referrer(http, registry.url, repo, make_artifact(subject_of(target), SBOM))
    doc, _ = await get_referrers(http, registry.url, other, target.digest)
    assert doc["manifests"] == []


async def test_referrers_of_a_malformed_digest_is_400(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    for bad in ("sha256:abc", "latest", "sha256:" + "Z" * 64):
        async with http.get(f"{registry.url}/v2/{repo}/referrers/{bad}") as resp:
            await assert_oci_error(resp, 400, "DIGEST_INVALID")


async def test_referrers_of_unknown_repository_is_empty_or_name_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    async with http.get(f"{registry.url}/v2/{repo}/referrers/{MISSING_DIGEST}") as resp:
        if resp.status == 200:
            assert (await resp.json(content_type=None))["manifests"] == []
        else:
            await assert_oci_error(resp, 404, "NAME_UNKNOWN")
