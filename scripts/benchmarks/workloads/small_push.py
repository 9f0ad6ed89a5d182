"""small-push: small images (config, a small layer, a tagged manifest), many at once (images/s)."""

from __future__ import annotations

import sys
import time

from benchmarks.client import push_small_images
from benchmarks.figures import Metric
from benchmarks.images import make_small_images
from benchmarks.params import Params
from benchmarks.workloads import Target, Workload


def metrics(p: Params) -> list[Metric]:
    label = f"push {p.small_images} small images, c{p.small_concurrency} (images/s)"
    return [Metric("small_push", label, "img/s", True, ">= 3x", 3.0)]


async def run(target: Target) -> dict[str, float]:
    server, p = target.server, target.p
    nonce = f"{target.run}-{server.name}-{time.time_ns()}"
    images = make_small_images(
        p.small_images, p.small_layer_size, lambda i: f"bench/small{i % 8}", nonce
    )
    done, elapsed = await push_small_images(server, images, p.small_concurrency)
    target.small_tags += [(image.repo, image.tag) for image in done]
    if len(done) < len(images):
        print(
            f"    {server.name}: only {len(done)} of {len(images)} small images pushed",
            file=sys.stderr,
        )
    return {"small_push": len(done) / elapsed}


WORKLOAD = Workload("small-push", metrics, run)
