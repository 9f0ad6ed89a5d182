"""Small OCI helpers for tests: build content and push it over plain HTTP."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import aiohttp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MiB = 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Image:
    """An image manifest and the blobs it references."""

    manifest: bytes
    media_type: str
    blobs: list[bytes]

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def make_image(
    seed: str = "x",
    layers: int = 2,
    media_type: str = OCI_MANIFEST,
    subject: dict | None = None,
    artifact_type: str | None = None,
    annotations: dict | None = None,
) -> Image:
    docker = media_type == DOCKER_MANIFEST
    config = canonical({"architecture": "amd64", "os": "linux", "seed": seed})
    layer_blobs = [f"layer {i} of {seed}".encode() * 100 for i in range(layers)]
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, b) for b in layer_blobs],
    }
    if subject is not None:
        doc["subject"] = subject
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if annotations is not None:
        doc["annotations"] = annotations
    return Image(canonical(doc), media_type, [config, *layer_blobs])


def random_image(seed: int, layer_sizes: list[int]) -> Image:
    """An image whose layers are random bytes (incompressible, no two alike)."""
    generator = random.Random(seed)
    # randbytes makes at most 2**28 - 1 bytes at once: big layers come in pieces.
    piece = 16 * MiB
    layers = [
        b"".join(generator.randbytes(min(piece, size - at)) for at in range(0, size, piece))
        for size in layer_sizes
    ]
    config = canonical({"architecture": "amd64", "os": "linux", "seed": seed})
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    return Image(canonical(doc), OCI_MANIFEST, [config, *layers])


async def push_blob(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    """Monolithic POST-then-PUT upload; returns the digest."""
    digest = digest_of(data)
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    async with http.put(
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def push_manifest(
    http: aiohttp.ClientSession, base: str, repo: str, reference: str, body: bytes, media_type: str
) -> aiohttp.ClientResponse:
    async with http.put(
        f"{base}/v2/{repo}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    ) as resp:
        await resp.read()
        return resp


async def push_image(
    http: aiohttp.ClientSession, base: str, repo: str, image: Image, reference: str | None = None
) -> str:
    for blob in image.blobs:
        await push_blob(http, base, repo, blob)
    resp = await push_manifest(
        http, base, repo, reference or image.digest, image.manifest, image.media_type
    )
    assert resp.status == 201, resp.status
    return image.digest
