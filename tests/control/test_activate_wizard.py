"""The first-boot wizard as a person uses it: `connected-registry activate` in a pseudo-terminal,
typed into exactly as at the console — a wrong string, the precise error, the question again,
the right string, the parent shown, the login server, success.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pexpect
import pytest
from support.cli import clean_env
from support.hierarchy import Root, node_state

from appliance.cli.activate import SERVICE_UNIT

pytestmark = pytest.mark.skipif(
    SERVICE_UNIT.exists(), reason="a systemd host with the units: the wizard would start them"
)


def wizard(device: Path) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "appliance", "activate", "--data-dir", str(device)],
        env=clean_env(), encoding="utf-8", timeout=30,
    )


def test_the_wizard_asks_again_after_a_wrong_string_then_activates(
    root: Root,
    tmp_path: Path,
) -> None:
    password = root.create("edge01", ["demo/*"])
    good = str(root.connection("edge01", password))
    missing = good.replace("SyncTokenName=edge01;", "")
    device = tmp_path / "device"
    child = wizard(device)
    child.logfile_read = seen = io.StringIO()
    try:
        child.expect_exact("Connection string (from `get-settings` on the parent): ")
        child.sendline(missing)
        child.expect_exact("Error: invalid connection string: SyncTokenName is missing")
        child.expect_exact("Connection string (from `get-settings` on the parent): ")
        assert not device.exists()
        child.sendline(good)
        child.expect_exact(
            f"Connection string: {good.replace(password, '***')}"
        )
        child.expect_exact(f"Parent: http://{root.server.host} (plain HTTP")
        child.expect(r"Login server clients will use \(HOST:PORT\) \[[^\]]+:443\]: ")
        child.sendline("edge01.example:443")
        child.expect_exact("Activated edge01 (ReadWrite)")
        child.expect_exact("Start the registry with:")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    transcript = seen.getvalue()
    assert child.exitstatus == 0, transcript
    # The terminal echoed the two pasted lines; the program itself never printed the password.
    assert transcript.count(password) == 2, transcript
    assert node_state(device)["login_server"] == "edge01.example:443"
    assert root.status("edge01") == "Active"


def test_the_wizard_asks_before_trusting_a_pinned_fingerprint(
    https_root: Root,
    tmp_path: Path,
) -> None:
    password = https_root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    child = wizard(device)
    try:
        child.expect_exact("Connection string (from `get-settings` on the parent): ")
        child.sendline(str(https_root.connection("edge01", password)))
        child.expect_exact(f"certificate fingerprint {https_root.fingerprint}")
        child.expect_exact("Trust this certificate for the parent? [y/N]: ")
        child.sendline("")
        child.expect_exact("Error: not activated: the parent's certificate was not trusted")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 1
    assert not device.exists()

    child = wizard(device)
    try:
        child.expect_exact("Connection string (from `get-settings` on the parent): ")
        child.sendline(str(https_root.connection("edge01", password)))
        child.expect_exact("Trust this certificate for the parent? [y/N]: ")
        child.sendline("y")
        child.expect_exact("Login server clients will use (HOST:PORT)")
        child.sendline("")
        child.expect_exact("Activated edge01 (ReadWrite)")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert https_root.status("edge01") == "Active"
