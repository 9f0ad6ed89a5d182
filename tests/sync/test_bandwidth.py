"""The bandwidth limit (`[sync] bandwidth_limit`): the token bucket on a virtual clock, then a
real `sync` in a child process, pulling from Debian's `docker-registry` and pushing from a
ReadWrite device to its root, which cannot finish sooner than the limit allows. Only lower
bounds on wall time: a slow machine cannot break them."""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.hierarchy import Root, read_write_device, writer
from support.oci import push_image, random_image
from support.sync import DistributionRegistry, sync_json

from appliance.sync.bandwidth import TokenBucket, limiter_for

MiB = 1024 * 1024


class VirtualTime:
    """A clock that moves only when every task is asleep, to the earliest wake-up: the bucket's
    arithmetic is checked exactly, with no real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, self._order, woken))
        self._order += 1
        await woken

    async def run(self, *work: Coroutine[Any, Any, Any]) -> None:
        tasks = [asyncio.ensure_future(one) for one in work]
        for _ in range(100_000):
            # Let every task run until it sleeps or ends.
            for _ in range(1000):
                if len(self._sleepers) >= sum(not t.done() for t in tasks):
                    break
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                break
            wake, _, woken = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            woken.set_result(None)
        for task in tasks:
            task.result()


async def timed(time_: VirtualTime, step: Awaitable[None]) -> float:
    await step
    return time_.now


async def test_a_full_bucket_lets_one_burst_through_then_paces_at_the_rate() -> None:
    time_ = VirtualTime()
    bucket = TokenBucket(1000, burst=250, clock=time_.clock, sleep=time_.sleep)
    passed: list[float] = []

    async def transfer() -> None:
        passed.append(await timed(time_, bucket.take(250)))  # the burst: at once
        passed.append(await timed(time_, bucket.take(500)))  # 500 bytes at 1000/s
        passed.append(await timed(time_, bucket.take(100)))
        time_.now += 10.0  # idle: the bucket refills to its burst, not to 10 s of traffic
        passed.append(await timed(time_, bucket.take(250)))
        passed.append(await timed(time_, bucket.take(100)))

    await time_.run(transfer())

    assert passed == pytest.approx([0.0, 0.5, 0.6, 10.6, 10.7])


async def test_four_transfers_sharing_one_bucket_stay_under_the_rate_together() -> None:
    time_ = VirtualTime()
    rate, burst, chunk, chunks = MiB, MiB // 4, 64 * 1024, 64
    bucket = TokenBucket(rate, burst=burst, clock=time_.clock, sleep=time_.sleep)
    passed: list[tuple[float, int]] = []
    finished: dict[int, float] = {}

    async def transfer(number: int) -> None:
        for _ in range(chunks):
            await bucket.take(chunk)
            passed.append((time_.now, chunk))
        finished[number] = time_.now

    await time_.run(*(transfer(n) for n in range(4)))

    total = 4 * chunks * chunk
    assert sum(size for _, size in passed) == total
    so_far = 0
    for moment, size in sorted(passed):
        so_far += size
        assert so_far <= burst + rate * moment + 1e-6, (moment, so_far)
    # All of it at the rate, after the first burst: the limit is shared, not multiplied.
    assert max(finished.values()) == pytest.approx((total - burst) / rate)
    # And shared fairly: no transfer waits for the others to finish first (the first comer
    # only gets the burst ahead of the rest).
    assert min(finished.values()) >= 0.9 * max(finished.values())


def test_one_bucket_per_rate_in_a_process_and_none_when_unlimited() -> None:
    assert limiter_for(None) is None
    shared = limiter_for(4 * MiB)
    assert shared is not None and shared.rate == 4 * MiB
    assert limiter_for(4 * MiB) is shared
    assert limiter_for(2 * MiB) is not shared
    with pytest.raises(ValueError):
        TokenBucket(0)


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionRegistry]:
    registry = DistributionRegistry(tmp_path / "distribution").start()
    yield registry
    registry.stop()


def mirror_config(tmp_path: Path, upstream_url: str, repository: str, limit: int | None) -> Path:
    lines = [f'data_dir = "{tmp_path / "node"}"']
    if limit is not None:
        lines += ["[sync]", f"bandwidth_limit = {limit}"]
    lines += [
        "[[upstream]]",
        f'url = "{upstream_url}"',
        f"repositories = {json.dumps([repository])}",
    ]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_a_sync_under_a_bandwidth_limit_takes_at_least_the_time_the_limit_allows(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    # Three 4 MiB layers fetched in parallel under 4 MiB/s: together they may not go faster.
    image = random_image(7, [4 * MiB, 4 * MiB, 4 * MiB])
    async with aiohttp.ClientSession() as http:
        await push_image(http, upstream.url, "limited/app", image, "v1")
    config = mirror_config(tmp_path, upstream.url, "limited/app", 4 * MiB)

    started = time.monotonic()
    report = await asyncio.to_thread(sync_json, "--config", str(config))
    took = time.monotonic() - started

    assert report["sources"][0]["errors"] == []
    assert report["total"]["blobs"] == len(image.blobs)
    total = sum(len(blob) for blob in image.blobs)
    assert report["total"]["bytes"] == total
    # 12 MiB at 4 MiB/s, less the quarter second of burst a full bucket allows: 2.75 s at least.
    assert took >= (total - MiB) / (4 * MiB) - 0.05, took


async def test_push_sync_under_a_bandwidth_limit_takes_at_least_the_time_the_limit_allows(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    auth = writer(root)
    device = await read_write_device(root, tmp_path)
    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    image = random_image(8, [4 * MiB, 4 * MiB])
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, served.url, "demo/app", image, "v1")
    served.stop()  # the run is then this command's own, under its config's limit
    config = tmp_path / "limited.toml"
    config.write_text(f'data_dir = "{device}"\n[sync]\nbandwidth_limit = {2 * MiB}\n')

    started = time.monotonic()
    report = await asyncio.to_thread(sync_json, "--config", str(config))
    took = time.monotonic() - started

    pushed = report["sources"][0]["push"]
    assert report["sources"][0]["errors"] == []
    total = sum(len(blob) for blob in image.blobs)
    assert pushed["blobs"] == len(image.blobs) and pushed["bytes"] == total
    # 8 MiB uploaded at 2 MiB/s, less the half MiB a full bucket lets through: 3.75 s at least.
    assert took >= (total - MiB / 2) / (2 * MiB) - 0.05, took
