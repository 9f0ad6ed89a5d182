"""`connected-registry sync` hands the run to the running service over `control.sock` and
follows it, with live progress; with no service it runs in-process.

A real root (auth on, loopback HTTP), a device activated against it by the real `activate`, the
device's own `serve` process on its data directory (the service), and the real `sync` and
`status` commands in child processes. Runs are made slow deterministically with the service's
`[sync] bandwidth_limit`: an image of SLOW_BYTES at SLOW_RATE takes at least 4 s to copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pexpect
import pytest
from support.cli import clean_env
from support.hierarchy import Root, activate, node_state
from support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    canonical,
    descriptor,
    push_image,
)
from support.server import free_port
from support.sync import get, run_sync, sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.storage.layout import Layout

if TYPE_CHECKING:
    from support.server import RegistryProcess

MIB = 1024 * 1024
SLOW_RATE = 2 * MIB
SLOW_BYTES = 8 * MIB
# How long a test waits for something a run will do: far beyond any run here, never reached
# by a run that works.
PATIENCE = 120.0


def big_image(seed: str, sizes: list[int]) -> Image:
    """An image whose layers are random bytes of `sizes`: incompressible, unlike any other."""
    config = canonical({"architecture": "amd64", "os": "linux", "seed": seed})
    layers = [os.urandom(size) for size in sizes]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    return Image(canonical(manifest), OCI_MANIFEST, [config, *layers])


async def push_to_root(root: Root, image: Image, tag: str = "v1") -> None:
    """`image` pushed to the root as demo/app:`tag`, by a client token made for it."""
    name = f"pusher{tag.replace('.', '')}"
    root.credentials.create_scope_map(name, (Permission("demo/*", PUSH),))
    _, passwords = root.credentials.create_token(name, name)
    auth = {"Authorization": aiohttp.encode_basic_auth(name, passwords["password1"])}
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, root.server.url, "demo/app", image, tag)


async def device_of(root: Root, tmp_path: Path) -> Path:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly", client_tokens=["client01"])
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    return device


def serve_device(
    start_registry: Callable, device: Path, rate: int | None = None
) -> RegistryProcess:
    """The device's service, its syncs paced at `rate` bytes/second when given."""
    args = ["--auth", "--insecure-http"]
    if rate is not None:
        config = device.parent / "device.toml"
        config.write_text(f"[sync]\nbandwidth_limit = {rate}\n")
        args += ["--config", str(config)]
    return start_registry(data_dir=device, args=args)


def sync_process(device: Path, *args: str) -> subprocess.Popen[str]:
    """`connected-registry sync` started in the background, as the timer starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "sync", "--data-dir", str(device), *args],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status_json(device: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--data-dir", str(device), "-o", "json"],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_running(device: Path, syncing: subprocess.Popen[str]) -> dict:
    """`status` polled until it shows the run under way with bytes moved."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and syncing.poll() is None:
        running = status_json(device)["sync"]["running"]
        if running is not None and running["bytes"] > 0:
            return running
        time.sleep(0.2)
    raise AssertionError(f"status never showed the run under way: {syncing.communicate()}")


async def has_image(served_url: str, root: Root, image: Image) -> None:
    client = {"Authorization": aiohttp.encode_basic_auth("client01", root.client_password)}
    async with aiohttp.ClientSession(headers=client) as http:
        body, _ = await get(http, f"{served_url}/v2/demo/app/manifests/v1", OCI_MANIFEST)
    assert body == image.manifest


# -- through the service ----------------------------------------------------------------------


async def test_sync_asks_the_running_service_which_does_the_run(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    image = big_image("through-the-service", [300_000, 200_000])
    await push_to_root(root, image)
    service = serve_device(start_registry, device)
    sock = Layout(device).control_socket

    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    dry = await asyncio.to_thread(sync_json, "--data-dir", str(device), "--dry-run")
    assert dry["via"] == "service" and dry["dryRun"] is True
    assert dry["total"]["manifests"] == 1 and dry["total"]["blobs"] == len(image.blobs)
    assert "last_run" not in node_state(device)  # a dry run writes nothing

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["via"] == "service"
    assert report["total"]["bytes"] == sum(len(blob) for blob in image.blobs)
    # The run is the service's: its log names it.
    assert f"sync {report['runId']}: finished" in service.log()
    await has_image(service.url, root, image)
    table = await asyncio.to_thread(run_sync, "--data-dir", str(device))
    assert table.returncode == 0, table.stderr
    assert "Moved:" in table.stdout and "0 manifests" in table.stdout


async def test_with_no_service_answering_sync_runs_in_process(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    first, second = big_image("first", [1000]), big_image("second", [2000])
    await push_to_root(root, first)
    service = serve_device(start_registry, device)
    service.kill()  # as a crash leaves it: the socket file stays, nothing answers on it
    assert Layout(device).control_socket.exists()

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["via"] == "process"
    assert report["total"]["manifests"] == 1
    # The service comes back over the stale socket and takes the next run.
    service.start()
    await push_to_root(root, second, "v2")
    again = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert again["via"] == "service"
    assert again["total"]["manifests"] == 1


async def test_progress_events_arrive_while_a_multi_mib_image_moves(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    image = big_image("progress", [SLOW_BYTES // 2, SLOW_BYTES // 2])
    await push_to_root(root, image)
    serve_device(start_registry, device, rate=SLOW_RATE)
    events: list[dict] = []
    during: dict[str, list[dict]] = {}

    started = time.monotonic()
    connector = aiohttp.UnixConnector(path=str(Layout(device).control_socket))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post("http://control.sock/sync", json={"dryRun": False}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        async for line in response.content:
            events.append(json.loads(line))
            if not during and events[-1].get("progress", {}).get("bytes", 0) > 0:
                # The run is under way: a second request joins it, a dry one is refused.
                during["joined"], during["dry"] = await asyncio.gather(
                    follow(http, dry_run=False), follow(http, dry_run=True)
                )
    elapsed = time.monotonic() - started

    assert [e["event"] for e in events[:1]] == ["started"]
    assert events[-1]["event"] == "report"
    report = events[-1]["report"]
    assert report["runId"] == events[0]["runId"]
    total = sum(len(blob) for blob in image.blobs)
    assert report["total"]["bytes"] == total
    moving = [e["progress"] for e in events[1:-1] if 0 < e["progress"]["bytes"] < total]
    assert len(moving) >= 3, events
    seen = [p["bytes"] for p in moving]
    assert seen == sorted(seen) and len(set(seen)) >= 3
    assert all(p["runId"] == report["runId"] for p in moving)
    assert any(p["bytesPerSecond"] > 0 and p["repository"] == "demo/app" for p in moving)
    assert elapsed >= (total - SLOW_RATE) / SLOW_RATE  # the limit held: the bucket's burst aside
    joined = during["joined"]
    assert joined[0]["event"] == "started" and joined[0]["joined"] is True
    assert joined[0]["runId"] == report["runId"]
    assert joined[-1] == events[-1]  # the same run, the same report
    assert [e["event"] for e in during["dry"]] == ["refused"]
    assert during["dry"][0]["code"] == "ALREADY_RUNNING"


async def follow(http: aiohttp.ClientSession, dry_run: bool) -> list[dict]:
    async with http.post("http://control.sock/sync", json={"dryRun": dry_run}) as response:
        return [json.loads(line) async for line in response.content]


async def test_two_syncs_at_once_are_one_run(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    image = big_image("twice", [SLOW_BYTES])
    await push_to_root(root, image)
    service = serve_device(start_registry, device, rate=SLOW_RATE)

    both = [sync_process(device, "-o", "json") for _ in range(2)]
    outputs = [await asyncio.to_thread(p.communicate, timeout=PATIENCE) for p in both]

    assert [p.returncode for p in both] == [0, 0], outputs
    reports = [json.loads(stdout) for stdout, _ in outputs]
    assert reports[0]["runId"] == reports[1]["runId"]
    assert reports[0] == reports[1]
    assert reports[0]["total"]["bytes"] == sum(len(blob) for blob in image.blobs)
    assert sum("joined the run under way" in stderr for _, stderr in outputs) == 1
    assert service.log().count(f"sync {reports[0]['runId']}: finished") == 1


async def test_in_process_and_service_runs_never_overlap(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    await push_to_root(root, big_image("overlap", [12 * MIB]))
    # 12 s at least: long enough to start the service and ask it while this run goes on.
    service = serve_device(start_registry, device, rate=MIB)
    service.stop()
    config = device.parent / "device.toml"  # the in-process run paced like the service's
    inside = sync_process(device, "--config", str(config), "-o", "json")
    await asyncio.to_thread(wait_for_lock_held, device, inside)
    service.start()

    through = await asyncio.to_thread(run_sync, "--data-dir", str(device))
    inside_out, _ = await asyncio.to_thread(inside.communicate, timeout=PATIENCE)

    assert through.returncode == 0, through.stderr
    assert through.stdout.strip() == "a sync is already running; this one does nothing"
    assert inside.returncode == 0 and json.loads(inside_out)["via"] == "process"


def wait_for_lock_held(device: Path, syncing: subprocess.Popen[str]) -> None:
    """Until the in-process run has started moving blobs (its upload session exists)."""
    uploads = Layout(device).uploads
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and syncing.poll() is None:
        if any(uploads.iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError(f"the in-process run never started a blob: {syncing.communicate()}")


# -- what the operator sees -------------------------------------------------------------------


async def test_a_terminal_shows_a_live_progress_line(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    await push_to_root(root, big_image("terminal", [SLOW_BYTES]))
    serve_device(start_registry, device, rate=SLOW_RATE)

    def follow() -> tuple[str, int]:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "appliance", "sync", "--data-dir", str(device)],
            env=clean_env(),
            encoding="utf-8",
            dimensions=(24, 160),
            timeout=PATIENCE,
        )
        child.expect(r"sync: pulling demo/app: [^\r\n]*blobs[^\r\n]*, [\d.]+ \w*B, [\d.]+ \w*B/s")
        line = child.after
        child.expect(pexpect.EOF)
        child.close()
        return line + child.before, child.exitstatus

    shown, status = await asyncio.to_thread(follow)

    assert status == 0
    assert re.search(r"[1-9][\d.]* (KiB|MiB)/s", shown), shown  # bytes moving, at a rate
    assert "\r\x1b[K" in shown  # redrawn in place, and cleared before the result
    assert "Moved:" in shown and "1 manifests, 2 blobs" in shown


async def test_without_a_terminal_a_long_run_logs_its_progress(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    image = big_image("journal", [1600 * 1024])
    await push_to_root(root, image)
    # 12.5 s at least: past the first PROGRESS_EVERY (10 s) of the run.
    serve_device(start_registry, device, rate=128 * 1024)

    result = await asyncio.to_thread(run_sync, "--data-dir", str(device))

    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines, "no progress line in 12 s"
    for line in lines:
        assert re.fullmatch(r"sync [0-9a-f]{8}: pulling demo/app: 0/1 repositories, .*/s", line)
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert "Moved:" in result.stdout


async def test_without_a_terminal_a_short_run_prints_only_its_result(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    await push_to_root(root, big_image("short", [2000]))
    serve_device(start_registry, device)

    result = await asyncio.to_thread(run_sync, "--data-dir", str(device))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "Moved:" in result.stdout


async def test_status_shows_the_run_under_way_then_the_last_run(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    image = big_image("status", [SLOW_BYTES])
    await push_to_root(root, image)
    serve_device(start_registry, device, rate=SLOW_RATE)

    syncing = sync_process(device, "-o", "json")
    running = await asyncio.to_thread(wait_for_running, device, syncing)
    out, err = await asyncio.to_thread(syncing.communicate, timeout=PATIENCE)

    assert syncing.returncode == 0, err
    report = json.loads(out)
    assert running["runId"] == report["runId"]
    assert running["phase"] == "pulling" and running["repository"] == "demo/app"
    after = status_json(device)["sync"]
    assert after["running"] is None
    last = after["lastRun"]
    assert last["runId"] == report["runId"]
    assert last["bytes"] == sum(len(blob) for blob in image.blobs)
    assert last["errors"] == 0 and last["firstError"] is None
    assert last["seconds"] > 0 and last["finishedAt"].endswith("Z")
    table = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--data-dir", str(device)],
        env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert re.search(r"Sync:\s+last run \S+Z, [\d.]+ s: 1 manifests, 2 blobs", table.stdout)


@pytest.mark.parametrize("end", ["stop", "kill"])
async def test_a_service_that_ends_mid_run_is_one_line_and_exit_1(
    root: Root, tmp_path: Path, start_registry: Callable, end: str
) -> None:
    device = await device_of(root, tmp_path)
    await push_to_root(root, big_image("dies", [SLOW_BYTES]))
    service = serve_device(start_registry, device, rate=SLOW_RATE)

    syncing = sync_process(device)
    await asyncio.to_thread(wait_for_running, device, syncing)
    if end == "stop":
        service.stop()  # SIGTERM: the service cancels the run and says so
    else:
        service.kill()  # SIGKILL: the connection just ends
    _, err = await asyncio.to_thread(syncing.communicate, timeout=PATIENCE)

    assert syncing.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith("Error: the service stopped during the sync; see its log")
    if end == "stop":
        # Stopped cleanly with a run under way, its socket gone with it.
        assert service.proc is not None and service.proc.returncode == 0, service.log()
        assert not Layout(device).control_socket.exists()
    # The next run, in-process, finishes the job.
    done = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert done["via"] == "process" and done["total"]["manifests"] == 1


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
async def test_another_user_gets_a_clear_error(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    device = await device_of(root, tmp_path)
    serve_device(start_registry, device)

    result = await asyncio.to_thread(
        subprocess.run,
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "appliance", "sync", "--data-dir", str(device)],
        env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, result.stderr
    assert line.startswith("Error: permission denied on the service's control socket")


def test_the_socket_is_only_served_where_something_syncs(
    start_registry: Callable, tmp_path: Path
) -> None:
    plain = start_registry(data_dir=tmp_path / "plain")

    assert not Layout(plain.data_dir).control_socket.exists()
    result = run_sync("--data-dir", str(plain.data_dir), "-o", "json")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("has no [[upstream]]: nothing to sync from")


def test_a_second_service_on_the_data_directory_leaves_the_socket_alone(
    start_registry: Callable, tmp_path: Path
) -> None:
    data = tmp_path / "node"
    config = tmp_path / "upstream.toml"
    config.write_text('[[upstream]]\nurl = "http://127.0.0.1:9"\nrepositories = ["a/b"]\n')
    first = start_registry(data_dir=data, args=["--config", str(config)])
    second = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--data-dir", str(data),
         "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"],
        env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert second.returncode == 1
    assert second.stderr == f"Error: data directory {data} is in use by process {first.proc.pid}\n"
    assert Layout(data).control_socket.exists()  # the first one's, untouched


async def test_the_socket_answers_status_and_refuses_a_bad_request(
    start_registry: Callable, tmp_path: Path
) -> None:
    data = tmp_path / "node"
    config = tmp_path / "upstream.toml"
    config.write_text('[[upstream]]\nurl = "http://127.0.0.1:9"\nrepositories = ["a/b"]\n')
    start_registry(data_dir=data, args=["--config", str(config)])
    connector = aiohttp.UnixConnector(path=str(Layout(data).control_socket))

    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get("http://control.sock/status") as response:
            idle = await response.json()
        async with http.post("http://control.sock/sync", data=b"dry please") as response:
            not_json, not_json_answer = response.status, await response.json()
        async with http.post("http://control.sock/sync", json={"dryRun": "yes"}) as response:
            not_bool, not_bool_answer = response.status, await response.json()

    assert idle == {"running": None, "lastRun": None, "warnings": []}
    assert (not_json, not_json_answer) == (
        400,
        {"errors": [{"code": "BODY_INVALID", "message": "the body must be a JSON object"}]},
    )
    assert (not_bool, not_bool_answer) == (
        400,
        {
            "errors": [
                {"code": "BODY_INVALID", "message": 'the body must be {"dryRun": true|false}'}
            ]
        },
    )
