"""How big each workload is: the full benchmark, and the smoke version of --quick."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
MB = 1_000_000  # the figures' MB: 10^6 bytes


@dataclass(frozen=True)
class Params:
    blob_count: int = 4
    blob_size: int = 256 * MiB
    chunk_size: int = 16 * MiB
    pull_clients: int = 4
    small_images: int = 2000
    small_concurrency: int = 32
    small_layer_size: int = 1024
    manifest_requests: int = 20_000
    wrk_threads: int = 2
    wrk_connections: int = 64
    tag_count: int = 1000
    tags_requests: int = 5000

    @classmethod
    def quick(cls) -> Params:
        return cls(
            blob_size=16 * MiB,
            chunk_size=4 * MiB,
            small_images=200,
            manifest_requests=2000,
            tag_count=100,
            tags_requests=500,
        )


@dataclass(frozen=True)
class SyncParams:
    size: int = 1024 * MiB  # the large image: its layers, split evenly
    layers: int = 4
    repos: int = 100
    tags: int = 50
    images_per_repo: int = 5  # distinct images per repository; its tags spread over them
    concurrency: int = 32  # repositories populated at once

    @classmethod
    def quick(cls) -> SyncParams:
        return cls(size=64 * MiB, repos=10)

    @property
    def tag_total(self) -> int:
        return self.repos * self.tags

    @property
    def images(self) -> int:
        """Images per repository: never more than it has tags."""
        return min(self.images_per_repo, self.tags)

    @property
    def plain_bound(self) -> int:
        """At most one tags list per repository and one manifest HEAD per tag."""
        return self.repos + self.tag_total
