
"""The command line as a person uses it: `python -m appliance ...` in a child process.

Covers `--version`, `--help`, config validation (unknown keys and bad values are usage errors:
exit 2 and exactly one line on stderr naming the key), the development defaults of a bare
`serve` (127.0.0.1:5050, ./connected-registry-data) and the order in which config and state are
found: flag > environment > config file > defaults (DESIGN §7).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest
from support.cli import PROJECT, clean_env
from support.server import free_port

DEFAULT_URL = "http://127.0.0.1:5050"
DEFAULT_DATA = "connected-registry-data"


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "appliance", *args], cwd=cwd or PROJECT,
            env=env or clean_env(), capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(args)}` still running after {timeout}s: {exc.stderr!r}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def serving(
    *args: str, cwd: Path, env: dict[str, str], url: str, timeout: float = 20
) -> Iterator[subprocess.Popen[bytes]]:
    """`serve ...` running until GET <url>/v2/ answers; stopped afterwards."""
    log = cwd / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", *args],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited {proc.returncode}: {log.read_text(errors='replace')}")
            try:
                if http_status(f"{url}/v2/") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve not answering on {url} after {timeout}s: {log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def assert_usage_error(result: subprocess.CompletedProcess[str], *mentions: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (
        f"exit {result.returncode}, stderr {result.stderr!r}, stdout {result.stdout!r}"
    )
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {result.stderr!r}"
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not named in {lines[0]!r}"
    return lines[0]


# --- version and help -------------------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    project_version = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(r"\d+\.\d+", result.stdout), result.stdout
    assert project_version in result.stdout, (
        f"--version says {result.stdout.strip()!r}, pyproject.toml {project_version}"
    )


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


def test_serve_help() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--data-dir", "--listen"):
        assert option in result.stdout, f"{option} missing from `serve --help`"


# --- config validation ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ("frobnicate_level = 3\n", "frobnicate_level"),
    ('listen = "127.0.0.1:5052"\nlistn = "127.0.0.1:5051"\n', "listn"),
    ("[tls]\ncertificate = \"/x.pem\"\n", "certificate"),
])
def test_unknown_config_key_is_a_usage_error(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = run_cli(
        "serve", "--config", str(config), "--data-dir", str(tmp_path / "data"),
        "--listen", f"127.0.0.1:{free_port()}", timeout=15,
    )
    assert_usage_error(result, key)
    assert not (tmp_path / "data").exists(), "a refused config still created the data directory"


@pytest.mark.parametrize("text", [
    "listen = 5\n",
    'listen = "nohost"\n',
    'listen = "127.0.0.1:99999"\n',
    'listen = ""\n',
])
def test_bad_listen_value_is_a_usage_error(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = run_cli(
        "serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), timeout=15
    )
    assert_usage_error(result, "listen")


@pytest.mark.parametrize(("text", "key"), [
    ('log_level = "loudest"\n', "log_level"),
    ("data_dir = 7\n", "data_dir"),
    ('[auth]\nenabled = "perhaps"\n', "enabled"),
])
def test_bad_config_value_is_a_usage_error(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = run_cli(
        "serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path / "data"), timeout=15,
    )
    assert_usage_error(result, key)


def test_config_that_is_not_toml_fails_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("listen = [unclosed\n")
    result = run_cli(
        "serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path / "data"), timeout=15,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(config) in result.stderr or "config" in result.stderr.lower(), result.stderr


def test_missing_config_file_fails_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = run_cli(
        "serve", "--config", str(missing), "--listen", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path / "data"), timeout=15,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nowhere.toml" in result.stderr


# --- serve with no flags: the development defaults --------------------------------------------


def test_serve_without_flags_uses_development_defaults(tmp_path: Path) -> None:
    assert not Path("/etc/connected-registry/config.toml").exists(), (
        "this test needs a development machine: /etc/connected-registry/config.toml exists"
    )
    child = pexpect.spawn(
        sys.executable, ["-m", "appliance", "serve"], cwd=str(tmp_path),
        env=clean_env(), encoding="utf-8", timeout=20,
    )
    try:
        seen = ""
        deadline = time.monotonic() + 20
        while not (DEFAULT_URL in seen and DEFAULT_DATA in seen):
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not print {DEFAULT_URL} and {DEFAULT_DATA}: {seen!r}")
            try:
                seen += child.read_nonblocking(4096, timeout=0.5)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                pytest.fail(f"serve exited: {seen!r}")
        assert http_status(f"{DEFAULT_URL}/v2/") == 200
        assert (tmp_path / DEFAULT_DATA).is_dir(), f"./{DEFAULT_DATA} not created in the cwd"
    finally:
        child.terminate(force=True)


# --- where config and state are found: flag > environment > config file > defaults ------------


def test_data_dir_from_environment(tmp_path: Path) -> None:
    port = free_port()
    env_data = tmp_path / "env-data"
    env = clean_env(CONNECTED_REGISTRY_DATA_DIR=str(env_data))
    with serving("--listen", f"127.0.0.1:{port}", cwd=tmp_path, env=env,
                 url=f"http://127.0.0.1:{port}"):
        assert env_data.is_dir() and any(env_data.iterdir()), "env data dir not used"
    assert not (tmp_path / DEFAULT_DATA).exists()


def test_data_dir_flag_beats_environment(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(CONNECTED_REGISTRY_DATA_DIR=str(tmp_path / "env-data"))
    flag_data = tmp_path / "flag-data"
    with serving("--listen", f"127.0.0.1:{port}", "--data-dir", str(flag_data), cwd=tmp_path,
                 env=env, url=f"http://127.0.0.1:{port}"):
        assert flag_data.is_dir() and any(flag_data.iterdir()), "--data-dir not used"
    assert not (tmp_path / "env-data").exists(), "environment beat the --data-dir flag"
    assert not (tmp_path / DEFAULT_DATA).exists()


def test_config_from_environment(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "env-config.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "cfg-data"}"\n')
    env = clean_env(CONNECTED_REGISTRY_CONFIG=str(config))
    with serving(cwd=tmp_path, env=env, url=f"http://127.0.0.1:{port}"):
        assert (tmp_path / "cfg-data").is_dir(), "data_dir of the config file not used"
    assert not (tmp_path / DEFAULT_DATA).exists()


def test_config_from_environment_is_validated(tmp_path: Path) -> None:
    config = tmp_path / "env-config.toml"
    config.write_text("no_such_setting = true\n")
    result = run_cli(
        "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"),
        env=clean_env(CONNECTED_REGISTRY_CONFIG=str(config)), cwd=tmp_path, timeout=15,
    )
    assert_usage_error(result, "no_such_setting")


def test_config_flag_beats_config_environment(tmp_path: Path) -> None:
    port = free_port()
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = true\n")
    good = tmp_path / "good.toml"
    good.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "good-data"}"\n')
    env = clean_env(CONNECTED_REGISTRY_CONFIG=str(bad))
    with serving("--config", str(good), cwd=tmp_path, env=env, url=f"http://127.0.0.1:{port}"):
        assert (tmp_path / "good-data").is_dir()


def test_environment_beats_config_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "cfg-data"}"\n')
    env = clean_env(CONNECTED_REGISTRY_DATA_DIR=str(tmp_path / "env-data"))
    with serving("--config", str(config), cwd=tmp_path, env=env,
                 url=f"http://127.0.0.1:{port}"):
        assert (tmp_path / "env-data").is_dir(), "CONNECTED_REGISTRY_DATA_DIR not used"
    assert not (tmp_path / "cfg-data").exists(), "the config file beat the environment"


def test_flags_beat_config_file(tmp_path: Path) -> None:
    config_port, flag_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'listen = "127.0.0.1:{config_port}"\ndata_dir = "{tmp_path / "cfg-data"}"\n'
    )
    with serving("--config", str(config), "--listen", f"127.0.0.1:{flag_port}",
                 "--data-dir", str(tmp_path / "flag-data"), cwd=tmp_path, env=clean_env(),
                 url=f"http://127.0.0.1:{flag_port}"):
        assert (tmp_path / "flag-data").is_dir()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", config_port), timeout=1).close()
    assert not (tmp_path / "cfg-data").exists(), "the config file beat the flags"
