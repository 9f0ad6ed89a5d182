"""`connected-registry tls generate`: a CA and a server certificate, and HTTPS that real
clients trust with nothing but that CA.

The command runs as a child process, the way an operator runs it. The files it writes are
checked as a TLS client would check them (SANs, serverAuth, a chain to the CA); then the real
server is started with them and skopeo pushes and pulls over HTTPS with a token, trusting only a
directory holding `ca.crt` — and fails without it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from support.oci_layout import Layout as OCILayout
from support.oci_layout import tagged_digest

from appliance.auth.certificates import ca_fingerprint
from appliance.auth.tokens import Credentials, parse_permissions
from appliance.storage.layout import Layout as DataLayout
from appliance.storage.store import Store as DataStore

PROJECT = Path(__file__).resolve().parents[2]
SKOPEO = "/usr/bin/skopeo"


def run_cli(
    *args: str, cwd: Path, umask: int = 0o022
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        umask=umask,
    )


def generate(data_dir: Path, *args: str, umask: int = 0o022) -> dict:
    result = run_cli(
        "tls", "generate", "--data-dir", str(data_dir), "--output", "json", *args,
        cwd=data_dir.parent, umask=umask,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def load_cert(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def verify(server: x509.Certificate, ca: x509.Certificate, host: str) -> None:
    """Chain, validity, SAN and serverAuth, as a TLS client checks them; raises if refused."""
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    verifier.verify(server, [])


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        names.get_values_for_type(x509.DNSName),
        [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
    )


# -- the files -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_generate_writes_a_ca_and_a_server_certificate_for_every_host(
    tmp_path: Path, umask: int
) -> None:
    data = tmp_path / "data"
    out = generate(
        data, "--host", "Registry.Example", "--host", "192.168.1.10", "--host", "::1",
        "--host", "registry.example", umask=umask,
    )

    assert out["hosts"] == ["registry.example", "192.168.1.10", "::1"]
    assert out["caCert"] == str(data.resolve() / "tls" / "ca.crt")
    assert out["serverCert"] == str(data.resolve() / "tls" / "server.crt")
    assert out["serverKey"] == str(data.resolve() / "secrets" / "tls-server.key")
    assert out["serveFlags"] == ["--tls-cert", out["serverCert"], "--tls-key", out["serverKey"]]
    assert out["caReused"] is False
    # Keys are the node's alone and certificates readable by all, whatever the umask.
    assert mode(out["serverKey"]) == 0o600
    assert mode(data / "secrets" / "tls-ca.key") == 0o600
    assert mode(out["serverCert"]) == 0o644
    assert mode(out["caCert"]) == 0o644
    assert not [p.name for p in data.rglob("*.tmp")], "a temporary file was left behind"

    ca, server = load_cert(out["caCert"]), load_cert(out["serverCert"])
    assert out["caFingerprint"] == "sha256:" + hashlib.sha256(
        ca.public_bytes(Encoding.DER)
    ).hexdigest()
    # What connection strings will carry, read back from the data directory.
    assert ca_fingerprint(DataLayout(data)) == out["caFingerprint"]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    assert sans(server) == (["registry.example"], ["192.168.1.10", "::1"])
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = server.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=820) < lifetime <= datetime.timedelta(days=825)
    for host in ("registry.example", "192.168.1.10", "::1"):
        verify(server, ca, host)
    with pytest.raises(x509.verification.VerificationError):
        verify(server, ca, "other.example")


def test_the_table_says_how_to_serve_and_how_clients_trust_the_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli(
        "tls", "generate", "--data-dir", str(data), "--host", "edge01.local", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    tls, secrets = data.resolve() / "tls", data.resolve() / "secrets"
    fingerprint = "sha256:" + hashlib.sha256(
        load_cert(tls / "ca.crt").public_bytes(Encoding.DER)
    ).hexdigest()
    for expected in (
        f"{tls / 'server.crt'}",
        f"{secrets / 'tls-server.key'}",
        f"{tls / 'ca.crt'}",
        fingerprint,
        # Pasted as printed, it serves this data directory with auth on, where clients dial.
        f"connected-registry serve --data-dir {data.resolve()} --listen 0.0.0.0:443 "
        f"--tls-cert {tls / 'server.crt'} --tls-key {secrets / 'tls-server.key'} --auth",
        # The port served is 443 (no config sets a listen), so clients name no port.
        "/etc/docker/certs.d/edge01.local/ca.crt",
        "--cert-dir DIR",
        'ca = "/etc/containerd/certs.d/edge01.local/ca.crt"',
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_re_running_keeps_the_ca_and_reissues_only_the_server_certificate(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = generate(data, "--host", "edge01.local")
    ca_bytes = Path(first["caCert"]).read_bytes()
    old_server = load_cert(first["serverCert"])

    second = generate(data, "--host", "edge01.local", "--host", "10.0.0.7")

    assert second["caReused"] is True
    assert second["caFingerprint"] == first["caFingerprint"]
    assert Path(second["caCert"]).read_bytes() == ca_bytes
    server = load_cert(second["serverCert"])
    assert server.serial_number != old_server.serial_number
    assert sans(server) == (["edge01.local"], ["10.0.0.7"])
    verify(server, load_cert(second["caCert"]), "10.0.0.7")

    # Replacing the CA breaks every client: with no terminal to ask on it needs --yes.
    unconfirmed = run_cli(
        "tls", "generate", "--data-dir", str(data), "--host", "edge01.local", "--new-ca",
        cwd=tmp_path,
    )
    assert unconfirmed.returncode == 1
    assert "pass --yes" in unconfirmed.stderr
    assert Path(second["caCert"]).read_bytes() == ca_bytes

    third = generate(data, "--host", "edge01.local", "--new-ca", "--yes")
    assert third["caReused"] is False
    assert third["caFingerprint"] != first["caFingerprint"]
    verify(load_cert(third["serverCert"]), load_cert(third["caCert"]), "edge01.local")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "at least one --host"),
        (["--host", "edge_01"], "'edge_01' is not an IP address or a DNS name"),
        (["--host", "10.0.0.256"], "'10.0.0.256' is not an IP address or a DNS name"),
        (["--host", "ok.example", "--host", "-bad.example"], "'-bad.example'"),
    ],
)
def test_missing_or_bad_hosts_are_one_line_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    data = tmp_path / "data"
    result = run_cli("tls", "generate", "--data-dir", str(data), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not data.exists(), "a refused command wrote to the data directory"


def test_a_ca_key_that_does_not_match_the_ca_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(data, "--host", "edge01.local")
    server_before = (data / "tls" / "server.crt").read_bytes()
    (data / "secrets" / "tls-ca.key").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    result = run_cli(
        "tls", "generate", "--data-dir", str(data), "--host", "edge01.local", cwd=tmp_path
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "is not the key of" in result.stderr and "--new-ca" in result.stderr
    assert (data / "tls" / "server.crt").read_bytes() == server_before



@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another user")
def test_run_as_root_the_files_belong_to_the_data_directory_owner(tmp_path: Path) -> None:
    # On a device the service user owns the data directory and must be able to read its key.
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)
    out = generate(data, "--host", "edge01.local")
    secrets = data / "secrets"
    for path in (out["caCert"], out["serverCert"], out["serverKey"], secrets / "tls-ca.key",
                 secrets, data / "tls"):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (65534, 65534), path


# -- the scenario: HTTPS with tokens, trusted through the CA alone ---------------------------


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=180
    )


def add_token(data_dir: Path, name: str, actions: list[str]) -> str:
    """A token on `lib/*` with `actions`, made in the data directory as `token create` would."""
    store = DataStore(data_dir)
    try:
        credentials = Credentials(store.db)
        credentials.create_scope_map(f"{name}-map", parse_permissions([("lib/*", actions)]))
        _, passwords = credentials.create_token(name, f"{name}-map")
    finally:
        store.close()
    return passwords["password1"]


def test_skopeo_pushes_and_pulls_over_https_trusting_only_the_generated_ca(
    tmp_path: Path, start_registry
) -> None:
    # A missing client is a failure, not a skip: scripts/setup --test installs it.
    assert os.access(SKOPEO, os.X_OK), f"{SKOPEO} is not installed"
    data = tmp_path / "data"
    out = generate(data, "--host", "localhost", "--host", "127.0.0.1")
    pusher = add_token(data, "pusher1", ["content/read", "content/write", "metadata/read"])
    reader = add_token(data, "reader1", ["content/read", "metadata/read"])
    server = start_registry(data_dir=data, args=[*out["serveFlags"], "--auth"])
    # What an operator copies to a client: a directory holding ca.crt, nothing else.
    trust = tmp_path / "client-certs"
    trust.mkdir()
    shutil.copy(out["caCert"], trust / "ca.crt")

    # Both names in the certificate pass a real handshake that trusts only the CA.
    context = ssl.create_default_context(cafile=str(trust / "ca.crt"))
    for name in ("localhost", "127.0.0.1"):
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

    src = OCILayout(tmp_path / "src")
    src.tag(src.add_image("tls-app", layers=2), "v1")
    target = f"docker://{server.host}/lib/app:v1"

    pushed = skopeo(
        "copy", "--dest-creds", f"pusher1:{pusher}", "--dest-cert-dir", str(trust),
        f"oci:{src.path}:v1", target,
    )
    assert pushed.returncode == 0, pushed.stderr
    pulled = skopeo(
        "copy", "--src-creds", f"reader1:{reader}", "--src-cert-dir", str(trust),
        target, f"oci:{tmp_path / 'out'}:v1",
    )
    assert pulled.returncode == 0, pulled.stderr
    assert tagged_digest(tmp_path / "out", "v1") == tagged_digest(src.path, "v1")

    refused = skopeo(
        "copy", "--dest-creds", f"reader1:{reader}", "--dest-cert-dir", str(trust),
        f"oci:{src.path}:v1", f"docker://{server.host}/lib/other:v1",
    )
    assert refused.returncode != 0
    assert any(word in refused.stderr.lower() for word in ("denied", "unauthorized")), (
        refused.stderr
    )

    untrusting = skopeo(
        "inspect", "--raw", "--creds", f"pusher1:{pusher}", target,
    )
    assert untrusting.returncode != 0
    assert "certificate signed by unknown authority" in untrusting.stderr, untrusting.stderr


def test_the_printed_serve_command_pasted_as_is_serves_this_registry_over_https_with_auth(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = generate(data, "--host", "localhost", "--listen", f"127.0.0.1:{port}")
    pusher = add_token(data, "pusher1", ["content/read", "content/write", "metadata/read"])
    assert out["clients"]["docker"] == [f"/etc/docker/certs.d/localhost:{port}/ca.crt"]
    assert out["serve"][:2] == ["connected-registry", "serve"]

    # Run from another directory: the command must not lean on where it was printed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    server = subprocess.Popen(
        [sys.executable, "-m", "appliance", *out["serve"][1:]],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert f"serving https://127.0.0.1:{port}" in banner, banner + server.stdout.read()
        context = ssl.create_default_context(cafile=out["caCert"])
        url = f"https://localhost:{port}/v2/"
        # Auth is on, and it is this data directory's token that logs in.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, context=context, timeout=10)
        assert refused.value.code == 401
        login = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(
            f"pusher1:{pusher}".encode()).decode()})
        with urllib.request.urlopen(login, context=context, timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not (elsewhere / "connected-registry-data").exists()
