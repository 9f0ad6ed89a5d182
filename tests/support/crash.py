"""Helpers for crash-safety tests: look at a registry the way a client does after a restart.

`assert_repository_consistent` walks every tag of a repository over HTTP and checks that each
one resolves to a manifest whose bytes hash to its digest and whose blobs and children exist;
`assert_blob_store_sound` reads every file under a `blobs` folder of a data directory and checks
that its content hashes to its name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import aiohttp

from support.oci import digest_of
from support.registry import absolute

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def parse_range(value: str | None) -> int:
    """The number of bytes an upload `Range: 0-<end>` header says the server holds."""
    if value is None:
        return 0
    start, end = value.removeprefix("bytes=").split("-", 1)
    assert start == "0", f"upload Range must start at 0: {value!r}"
    return int(end) + 1


async def list_tags(http: aiohttp.ClientSession, base: str, repo: str) -> list[str]:
    """All tags, following `Link` pagination; [] if the repository is unknown."""
    tags: list[str] = []
    url: str | None = f"{base}/v2/{repo}/tags/list"
    while url:
        async with http.get(url) as resp:
            if resp.status == 404 and not tags:
                body = await resp.json(content_type=None)
                assert body["errors"][0]["code"] == "NAME_UNKNOWN", body
                return []
            assert resp.status == 200, await resp.text()
            tags.extend((await resp.json(content_type=None)).get("tags") or [])
            link = resp.headers.get("Link")
        url = absolute(base, link.split(";")[0].strip(" <>")) if link else None
    return tags


async def assert_manifest_sound(
    http: aiohttp.ClientSession, base: str, repo: str, reference: str, seen: set[str]
) -> str:
    """GET the manifest, check digest, blobs and children; return its digest."""
    url = f"{base}/v2/{repo}/manifests/{reference}"
    async with http.get(url, headers={"Accept": MANIFEST_ACCEPT}) as resp:
        body = await resp.read()
        assert resp.status == 200, f"{repo}:{reference} → {resp.status} {body[:300]!r}"
        header_digest = resp.headers.get("Docker-Content-Digest")
        media_type = resp.headers.get("Content-Type", "")
    digest = digest_of(body)
    if header_digest is not None:
        assert header_digest == digest, f"{reference}: header {header_digest}, bytes hash {digest}"
    if reference.startswith("sha256:"):
        assert digest == reference, f"manifest {reference} read back with digest {digest}"
    if digest in seen:
        return digest
    seen.add(digest)
    doc = json.loads(body)
    assert doc.get("mediaType", media_type).split(";")[0] == media_type.split(";")[0], (
        f"{reference}: Content-Type {media_type!r} vs mediaType {doc.get('mediaType')!r}"
    )
    for child in doc.get("manifests", []):
        assert await assert_manifest_sound(http, base, repo, child["digest"], seen) == (
            child["digest"]
        )
    blobs = [doc["config"], *doc.get("layers", [])] if "config" in doc else []
    for blob in blobs:
        async with http.get(f"{base}/v2/{repo}/blobs/{blob['digest']}") as resp:
            data = await resp.read()
            assert resp.status == 200, (
                f"{reference} references blob {blob['digest']}: GET → {resp.status}"
            )
        assert len(data) == blob["size"], f"blob {blob['digest']}: {len(data)} bytes"
        assert digest_of(data) == blob["digest"], f"blob {blob['digest']} has other content"
        async with http.head(f"{base}/v2/{repo}/blobs/{blob['digest']}") as resp:
            assert resp.status == 200, f"HEAD blob {blob['digest']} → {resp.status}"
    return digest


async def assert_repository_consistent(
    http: aiohttp.ClientSession, base: str, repo: str
) -> dict[str, str]:
    """Every tag resolves to a sound manifest; returns {tag: digest}."""
    seen: set[str] = set()
    return {
        tag: await assert_manifest_sound(http, base, repo, tag, seen)
        for tag in await list_tags(http, base, repo)
    }


def assert_blob_store_sound(data_dir: Path) -> int:
    """Every regular file under a `blobs` folder hashes to its own name; returns the count."""
    checked = 0
    bad: list[str] = []
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir)
        if "blobs" not in relative.parts[:-1] or not path.is_file() or path.is_symlink():
            continue
        sha = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        if sha.hexdigest() != path.name:
            bad.append(f"{relative} ({path.stat().st_size} bytes, sha256 {sha.hexdigest()})")
        checked += 1
    assert not bad, "files in the blob store whose content does not match their name:\n" + (
        "\n".join(bad)
    )
    return checked
