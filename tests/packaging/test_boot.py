"""The appliance as an operator gets it: the .deb on fresh Debian 12 devices booted under a real
systemd (scripts/boot-test), built first by scripts/build-deb when the sources are newer. The
boot test includes a sync from the root through the timer, and measures one idle sync run.

It needs root and the tools `scripts/setup --test` installs; without them it fails, never skips:
a suite that passes without checking the package would say something false.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance import __version__
from appliance.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("appliance", "systemd", "packaging", "scripts/build-binary", "scripts/build-deb",
           "pyproject.toml")
TOOLS = ("systemd-nspawn", "nsenter", "debootstrap", "skopeo", "dpkg-deb", "lintian",
         "pkg-config")


def newest_source_mtime() -> float:
    newest = 0.0
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                and "__pycache__" not in p.parts]
        newest = max([newest, *(p.stat().st_mtime for p in files)])
    return newest


def the_deb() -> Path:
    """dist/connected-registry_<version>_<arch>.deb, built again when older than its sources."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    deb = ROOT / "dist" / f"connected-registry_{__version__}_{arch}.deb"
    if not deb.exists() or deb.stat().st_mtime < newest_source_mtime():
        built = subprocess.run([str(ROOT / "scripts" / "build-deb")], capture_output=True,
                               text=True, timeout=1800, check=False)
        assert built.returncode == 0, f"scripts/build-deb failed:\n{built.stdout}{built.stderr}"
    return deb


def test_the_packaged_config_is_comments_that_parse_when_uncommented() -> None:
    text = (ROOT / "packaging" / "config.toml").read_text()
    assert parse_config(text).explicit == frozenset()
    uncommented = re.sub(r"^# (\[|\w+ = )", r"\1", text, flags=re.M)
    assert uncommented != text
    parse_config(uncommented)


@pytest.mark.slow
def test_the_deb_installs_activates_syncs_serves_survives_reboot_and_upgrade_and_purges() -> None:
    assert os.geteuid() == 0, "the boot test needs root (run the suite as CI does, as root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"missing {', '.join(missing)}: run scripts/setup --test"
    deb = the_deb()
    done = subprocess.run([str(ROOT / "scripts" / "boot-test"), "--deb", str(deb)],
                          capture_output=True, text=True, timeout=1800, check=False)
    print(done.stdout)  # the step timings and the idle sync figures, with `pytest -s`
    assert done.returncode == 0, f"scripts/boot-test failed:\n{done.stdout}\n{done.stderr}"
    assert "boot test passed" in done.stdout
    assert "idle `connected-registry sync` on edge01" in done.stdout
