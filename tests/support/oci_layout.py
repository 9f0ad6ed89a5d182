"""Build and read OCI image layouts on disk (the `oci:` transport of skopeo), for client tests.

Everything here is made from scratch: real gzip'd tar layers, image configs whose `rootfs.diff_ids`
match the uncompressed layers, manifests, an image index and an artifact manifest with a
`subject`. The layout format is the one in the OCI image spec (`oci-layout`, `index.json`,
`blobs/sha256/<hex>`).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from support.oci import OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, digest_of

REF_NAME = "org.opencontainers.image.ref.name"


def make_layer(seed: str, files: int = 3) -> tuple[bytes, bytes]:
    """A gzip'd tar with a few small files; returns (compressed, uncompressed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            content = f"{seed}: file {i}\n".encode() * (50 + 17 * i)
            info = tarfile.TarInfo(f"{seed}/file-{i}.txt")
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, mtime=0)
    return compressed, uncompressed


def encode(doc: dict) -> bytes:
    """JSON as a client would write it: not canonical, indented, so byte-exactness matters."""
    return json.dumps(doc, indent=2).encode() + b"\n"


@dataclass
class Layout:
    """An OCI image layout being written to `path`."""

    path: Path
    refs: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.save()

    def add_blob(self, media_type: str, data: bytes, **extra: object) -> dict:
        digest = digest_of(data)
        (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def tag(self, desc: dict, tag: str) -> None:
        annotations = {**desc.get("annotations", {}), REF_NAME: tag}
        self.refs.append({**desc, "annotations": annotations})
        self.save()

    def save(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        (self.path / "index.json").write_text(json.dumps(index, indent=2))

    def add_image(
        self, seed: str, layers: int = 3, architecture: str = "amd64", os_name: str = "linux"
    ) -> dict:
        """Write layers, config and manifest; return the manifest's descriptor."""
        layer_descs = []
        diff_ids = []
        for i in range(layers):
            compressed, uncompressed = make_layer(f"{seed}-layer{i}")
            layer_descs.append(self.add_blob(OCI_LAYER, compressed))
            diff_ids.append(digest_of(uncompressed))
        config = encode({
            "architecture": architecture,
            "os": os_name,
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"], "Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(layers)],
        })
        manifest = encode({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.add_blob(OCI_CONFIG, config),
            "layers": layer_descs,
            "annotations": {"org.opencontainers.image.title": seed},
        })
        return self.add_blob(OCI_MANIFEST, manifest)

    def add_index(self, seed: str, platforms: list[tuple[str, str]]) -> dict:
        """A multi-arch image index with one image per (os, architecture)."""
        children = []
        for os_name, arch in platforms:
            child = self.add_image(f"{seed}-{arch}", layers=2, architecture=arch, os_name=os_name)
            children.append({**child, "platform": {"architecture": arch, "os": os_name}})
        index = encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
        return self.add_blob(OCI_INDEX, index)

    def add_artifact(self, artifact_type: str, payload: bytes, subject: dict) -> dict:
        """An artifact manifest: `artifactType`, the empty config, one blob, a `subject`."""
        manifest = encode({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": self.add_blob(OCI_EMPTY, b"{}"),
            "layers": [self.add_blob("application/vnd.example.signature.v1", payload)],
            "subject": {k: subject[k] for k in ("mediaType", "digest", "size")},
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        })
        return self.add_blob(OCI_MANIFEST, manifest)


def read_index(path: Path) -> dict:
    return json.loads((path / "index.json").read_text())


def tagged_digest(path: Path, tag: str) -> str:
    """The digest `index.json` of a layout records for `tag`."""
    matches = [
        m["digest"] for m in read_index(path)["manifests"]
        if m.get("annotations", {}).get(REF_NAME) == tag
    ]
    assert len(matches) == 1, f"{tag!r} in {path}/index.json: {matches}"
    return matches[0]


def read_blob(path: Path, digest: str) -> bytes:
    algorithm, hexpart = digest.split(":", 1)
    return (path / "blobs" / algorithm / hexpart).read_bytes()


def closure(path: Path, digest: str) -> dict[str, bytes]:
    """Every blob reachable from manifest/index `digest` in the layout, itself included."""
    found: dict[str, bytes] = {}
    pending = [digest]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        data = read_blob(path, current)
        found[current] = data
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            continue
        pending.extend(m["digest"] for m in doc.get("manifests", []))
        if "config" in doc:
            pending.append(doc["config"]["digest"])
        pending.extend(layer["digest"] for layer in doc.get("layers", []))
    return found
