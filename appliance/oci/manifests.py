"""Manifest media types, parsing and validation.

Parsing never changes the bytes: the registry stores and serves exactly what was pushed; this
module only extracts what the registry must check (referenced blobs and manifests) and index
(subject, artifact type, annotations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES

# The spec asks registries to accept manifests of at least 4 MB; larger is refused with 413.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

# Layers a registry never holds: their `urls` point elsewhere (Windows base layers).
NON_DISTRIBUTABLE_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """What the registry needs to know about a manifest, beside its bytes."""

    media_type: str
    blobs: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    config_media_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def referrer_artifact_type(self) -> str | None:
        """The referrers API's artifactType: the manifest's own, else its config's media type."""
        return self.artifact_type or self.config_media_type


def _invalid(message: str, detail: Any = None) -> OCIError:
    return OCIError(ErrorCode.MANIFEST_INVALID, message, detail)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not _is_text(media_type) or not media_type:
        raise _invalid(f"{where}.mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest must be a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    annotations = value.get("annotations")
    if annotations is not None and not _is_string_map(annotations):
        raise _invalid(f"{where}.annotations must map strings to strings")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}.urls must be a list of strings")
    try:
        parsed_digest = Digest.parse(digest)
    except OCIError as err:
        raise _invalid(f"{where}.digest: {err.message}", {"digest": digest[:300]}) from None
    return Descriptor(media_type, parsed_digest, size, annotations, tuple(urls))


def _is_text(value: Any) -> bool:
    """A string that is Unicode text: JSON lets "\\ud800" through as a lone surrogate, which
    cannot be encoded to store or index it."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def parse_manifest(body: bytes, content_type: str) -> ParsedManifest:
    """Validate a pushed manifest against its declared media type.

    Raises MANIFEST_INVALID for anything a client must fix: bad JSON, an unknown media type, a
    `mediaType` field that disagrees with Content-Type, malformed descriptors.
    """
    media_type = content_type.split(";", 1)[0].strip()
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _invalid(f"manifest is not valid JSON: {err}") from None
    except ValueError:
        # json.loads parses integers with int(), which refuses more than 4300 digits.
        raise _invalid("manifest holds a number too long to read") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    declared = doc.get("mediaType")
    if not media_type or media_type == "application/json":
        # A client that sends no useful Content-Type still names the type in the document.
        media_type = declared if isinstance(declared, str) else ""
    if media_type not in MANIFEST_TYPES:
        raise _invalid(
            f"unsupported manifest media type {media_type!r}",
            {"supported": sorted(MANIFEST_TYPES)},
        )
    if declared is not None and declared != media_type:
        raise _invalid(
            f"mediaType {declared!r} in the manifest does not match Content-Type {media_type!r}"
        )
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    annotations = doc.get("annotations") or {}
    if not _is_string_map(annotations):
        raise _invalid("annotations must map strings to strings")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not _is_text(artifact_type):
        raise _invalid("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None

    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise _invalid("manifests must be a list")
        return ParsedManifest(
            media_type=media_type,
            manifests=tuple(_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children)),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    config = _descriptor(doc.get("config"), "config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise _invalid("layers must be a list")
    layer_descriptors = tuple(_descriptor(la, f"layers[{i}]") for i, la in enumerate(layers))
    return ParsedManifest(
        media_type=media_type,
        blobs=(config, *layer_descriptors),
        subject=subject,
        artifact_type=artifact_type,
        config_media_type=config.media_type,
        annotations=annotations,
    )


def required_blobs(manifest: ParsedManifest) -> list[Descriptor]:
    """Blobs that must already be in the repository; foreign layers live elsewhere."""
    return [
        d for d in manifest.blobs if not (d.media_type in NON_DISTRIBUTABLE_LAYER_TYPES and d.urls)
    ]
