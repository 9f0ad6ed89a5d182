"""The test data: large random blobs for the pushes and pulls, small images, and the large
image sync-copy copies. Random content, so no two runs (or servers) share a blob."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.params import MiB, Params, SyncParams

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class LargeBlob:
    path: Path
    size: int
    hasher: Any  # hashlib sha256 state over the file; a per-upload salt is appended to it

    def salted(self, salt: bytes) -> tuple[str, int]:
        h = self.hasher.copy()
        h.update(salt)
        return "sha256:" + h.hexdigest(), self.size + len(salt)


def make_large_blobs(p: Params, src_dir: Path) -> list[LargeBlob]:
    """Random files, written once; each upload appends a 32-byte salt so every push is new."""
    src_dir.mkdir(parents=True, exist_ok=True)
    blobs = []
    piece = min(16 * MiB, p.blob_size)
    for i in range(p.blob_count):
        path = src_dir / f"blob{i}.bin"
        hasher = hashlib.sha256()
        with open(path, "wb") as f:
            for _ in range(p.blob_size // piece):
                data = os.urandom(piece)
                hasher.update(data)
                f.write(data)
        blobs.append(LargeBlob(path, p.blob_size, hasher))
    return blobs


def salt_for(*parts: object) -> bytes:
    return hashlib.sha256(":".join(map(str, parts)).encode()).digest()


@dataclass
class SmallImage:
    repo: str
    tag: str
    config: bytes
    layer: bytes
    manifest: bytes


def make_small_images(
    count: int, layer_size: int, repo_of: Callable[[int], str], nonce: str
) -> list[SmallImage]:
    images = []
    for i in range(count):
        layer = os.urandom(layer_size)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"bench": nonce, "image": str(i)}},
                "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
            },
            separators=(",", ":"),
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
                ],
            },
            separators=(",", ":"),
        ).encode()
        images.append(SmallImage(repo_of(i), f"v{i}", config, layer, manifest))
    return images


@dataclass(frozen=True)
class BlobFile:
    path: Path
    digest: str
    size: int


@dataclass(frozen=True)
class LargeImage:
    layers: list[BlobFile]
    config: bytes
    manifest: bytes

    @property
    def blob_bytes(self) -> int:
        """What a copy moves as blobs (layers and config): the throughput's numerator."""
        return sum(layer.size for layer in self.layers) + len(self.config)


def make_large_image(sp: SyncParams, folder: Path) -> LargeImage:
    """Random layers, each a gzip stream of stored (level 0) deflate blocks: incompressible,
    and seen as gzip by skopeo, which would otherwise compress a layer it takes for plain data
    on its way to a registry (and measure gzip, not copying)."""
    folder.mkdir(parents=True, exist_ok=True)
    layers: list[BlobFile] = []
    diff_ids: list[str] = []
    per_layer = sp.size // sp.layers
    for i in range(sp.layers):
        path = folder / f"layer{i}.tar.gz"
        packed, unpacked = hashlib.sha256(), hashlib.sha256()
        deflate = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
        with open(path, "wb") as f:
            remaining = per_layer
            while remaining > 0:  # bounded: the layer's size, 16 MiB at a time
                data = os.urandom(min(16 * MiB, remaining))
                remaining -= len(data)
                unpacked.update(data)
                out = deflate.compress(data)
                packed.update(out)
                f.write(out)
            out = deflate.flush()
            packed.update(out)
            f.write(out)
        layers.append(BlobFile(path, "sha256:" + packed.hexdigest(), path.stat().st_size))
        diff_ids.append("sha256:" + unpacked.hexdigest())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"bench": f"sync-{time.time_ns()}"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        },
        separators=(",", ":"),
    ).encode()
    return LargeImage(layers, config, manifest)
