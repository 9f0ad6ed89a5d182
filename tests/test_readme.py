"""The README's command blocks that can run here, run as written, so the README stays true.

A ```sh block preceded by `<!-- checked by tests/test_readme.py -->` runs under `bash -e` in an
empty directory, with `connected-registry` on PATH (the command of this tree). A block that talks
to the development registry (`127.0.0.1:5050`, where `scripts/run` serves) is pointed at a
fresh server of its own instead; nothing else in it is changed, except `umoci insert
--rootless` when not run as root, as the README says.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import PROJECT, clean_env
from support.server import RegistryProcess

MARK = "<!-- checked by tests/test_readme.py -->"
DEVELOPMENT_REGISTRY = "127.0.0.1:5050"


def marked_blocks() -> list:
    """A pytest.param(line of the fence, the block's text) for every marked block, named by the
    section it is in."""
    lines = (PROJECT / "README.md").read_text().splitlines()
    blocks, section = [], ""
    for at, line in enumerate(lines):
        if line.startswith("#"):
            section = line.lstrip("# ").lower().replace(" ", "-").replace(",", "").replace(":", "")
        if line.strip() == MARK:
            assert lines[at + 1] == "```sh", f"README.md:{at + 2}: the mark must precede ```sh"
            end = lines.index("```", at + 2)
            text = "\n".join(lines[at + 2 : end])
            blocks.append(pytest.param(at + 2, text, id=section))
    return blocks


def test_the_readme_marks_the_blocks_it_checks() -> None:
    # The first image, and a device's certificate, scope map and tokens.
    assert len(marked_blocks()) >= 2


@pytest.mark.parametrize(("line", "block"), marked_blocks())
def test_a_readme_block_runs_as_written(
    line: int, block: str, start_registry: Callable[..., RegistryProcess], tmp_path: Path
) -> None:
    command = tmp_path / "bin" / "connected-registry"
    command.parent.mkdir()
    command.write_text(f'#!/bin/sh\nexec {sys.executable} -m appliance "$@"\n')
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    if DEVELOPMENT_REGISTRY in block:
        block = block.replace(DEVELOPMENT_REGISTRY, start_registry().host)
    if os.geteuid() != 0:
        block = block.replace("umoci insert ", "umoci insert --rootless ")
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(PATH=f"{command.parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"README.md:{line}:\n{result.stdout}\n{result.stderr}"
