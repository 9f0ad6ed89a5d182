"""skopeo, a real client, pushes OCI layouts into the registry and pulls them back out.

Each test writes an OCI image layout on disk (real gzip'd tar layers), copies it into the server
with `skopeo copy --all --preserve-digests`, copies it back out into a second layout, and checks
what a user of skopeo would check: the same digests come back, every blob is byte-identical, and
`skopeo inspect --raw` returns exactly the bytes that were pushed. skopeo speaks plain HTTP to the
test server through `--*-tls-verify=false`; it uploads each blob as one PATCH without
`Content-Range` (chunked transfer encoding) followed by a PUT.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest
from support.oci_layout import (
    OCI_INDEX,
    OCI_MANIFEST,
    Layout,
    closure,
    digest_of,
    read_blob,
    tagged_digest,
)

from appliance.auth.tokens import Credentials, parse_permissions
from appliance.storage.store import Store


@pytest.fixture(autouse=True)
def _skopeo_installed() -> None:
    # A missing client is a failure, not a skip: scripts/setup --test installs it.
    assert shutil.which("skopeo"), "skopeo is not installed (scripts/setup --test installs it)"

SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"


async def skopeo(*args: str, timeout: float = 180.0) -> bytes:
    """Run skopeo; fail the test with its stderr if it exits non-zero. Returns stdout."""
    proc = await asyncio.create_subprocess_exec(
        "skopeo", "--insecure-policy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"skopeo {' '.join(args)} did not finish within {timeout}s")
    assert proc.returncode == 0, (
        f"skopeo {' '.join(args)} exited {proc.returncode}:\n{stderr.decode(errors='replace')}"
    )
    return stdout


async def push(layout: Path, tag: str, dest: str) -> None:
    await skopeo(
        "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
        f"oci:{layout}:{tag}", f"docker://{dest}",
    )


async def pull(src: str, layout: Path, tag: str) -> None:
    await skopeo(
        "copy", "--all", "--src-tls-verify=false", f"docker://{src}", f"oci:{layout}:{tag}"
    )


async def inspect_raw(ref: str) -> bytes:
    return await skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")


def assert_same_content(src: Path, src_tag: str, out: Path, out_tag: str) -> str:
    """The pulled layout names the pushed digest and holds byte-identical blobs."""
    pushed = tagged_digest(src, src_tag)
    pulled = tagged_digest(out, out_tag)
    assert pulled == pushed, f"pushed {pushed}, pulled back {pulled}"
    sent = closure(src, pushed)
    received = closure(out, pulled)
    assert sorted(received) == sorted(sent), "the pulled layout has a different set of blobs"
    for digest, data in received.items():
        assert digest_of(data) == digest, f"pulled blob {digest} does not hash to its name"
        assert data == sent[digest], f"pulled blob {digest} differs from the pushed one"
    return pulled


async def test_multi_layer_image_round_trip(registry, repo: str, tmp_path: Path) -> None:
    src = Layout(tmp_path / "in")
    image = src.add_image("three-layers", layers=3)
    src.tag(image, "v1")

    await push(src.path, "v1", f"{registry.host}/{repo}:v1")
    await pull(f"{registry.host}/{repo}:v1", tmp_path / "out", "v1")

    digest = assert_same_content(src.path, "v1", tmp_path / "out", "v1")
    assert digest == image["digest"]
    manifest = json.loads(read_blob(tmp_path / "out", digest))
    assert len(manifest["layers"]) == 3

    details = json.loads(await skopeo(
        "inspect", "--tls-verify=false", f"docker://{registry.host}/{repo}:v1"
    ))
    assert details["Digest"] == image["digest"]
    assert details["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert details["Architecture"] == "amd64"
    assert details["Os"] == "linux"


async def test_multi_arch_index_round_trip(registry, repo: str, tmp_path: Path) -> None:
    src = Layout(tmp_path / "in")
    index = src.add_index("multi", [("linux", "amd64"), ("linux", "arm64")])
    src.tag(index, "multi")

    await push(src.path, "multi", f"{registry.host}/{repo}:multi")
    await pull(f"{registry.host}/{repo}:multi", tmp_path / "out", "multi")

    digest = assert_same_content(src.path, "multi", tmp_path / "out", "multi")
    assert digest == index["digest"]
    pulled_index = json.loads(read_blob(tmp_path / "out", digest))
    assert pulled_index["mediaType"] == OCI_INDEX
    assert sorted(m["platform"]["architecture"] for m in pulled_index["manifests"]) == [
        "amd64", "arm64",
    ]
    # Each child is reachable on its own, by digest, byte-exact.
    for child in pulled_index["manifests"]:
        raw = await inspect_raw(f"{registry.host}/{repo}@{child['digest']}")
        assert raw == read_blob(src.path, child["digest"])


async def test_artifact_by_digest_and_referrers(
    registry, repo: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    src = Layout(tmp_path / "in")
    image = src.add_image("subject-image", layers=3)
    src.tag(image, "v1")
    artifact = src.add_artifact(SIGNATURE_TYPE, b'{"signed": "subject-image"}', image)
    src.tag(artifact, "sig")

    await push(src.path, "v1", f"{registry.host}/{repo}:v1")
    # The artifact goes in and comes out by digest only: no tag names it on the server.
    by_digest = f"{registry.host}/{repo}@{artifact['digest']}"
    await push(src.path, "sig", by_digest)
    await pull(by_digest, tmp_path / "out", "sig")

    assert assert_same_content(src.path, "sig", tmp_path / "out", "sig") == artifact["digest"]
    pulled = json.loads(read_blob(tmp_path / "out", artifact["digest"]))
    assert pulled["artifactType"] == SIGNATURE_TYPE
    assert pulled["subject"]["digest"] == image["digest"]
    assert read_blob(tmp_path / "out", pulled["config"]["digest"]) == b"{}"

    async with http.get(f"{registry.url}/v2/{repo}/referrers/{image['digest']}") as resp:
        body = await resp.read()
        assert resp.status == 200, body
        assert resp.headers["Content-Type"].startswith(OCI_INDEX)
    referrers = json.loads(body)
    assert referrers["mediaType"] == OCI_INDEX
    listed = [m for m in referrers["manifests"] if m["digest"] == artifact["digest"]]
    assert len(listed) == 1, f"artifact {artifact['digest']} not among the referrers: {referrers}"
    assert listed[0]["mediaType"] == OCI_MANIFEST
    assert listed[0]["size"] == artifact["size"]
    assert listed[0]["artifactType"] == SIGNATURE_TYPE
    assert listed[0].get("annotations") == pulled["annotations"]

    async with http.get(
        f"{registry.url}/v2/{repo}/referrers/{image['digest']}",
        params={"artifactType": "application/vnd.example.other"},
    ) as resp:
        assert resp.status == 200
        filtered = json.loads(await resp.read())
        if "artifactType" in resp.headers.get("OCI-Filters-Applied", ""):
            assert all(m["digest"] != artifact["digest"] for m in filtered["manifests"])


async def test_inspect_raw_is_byte_exact(registry, repo: str, tmp_path: Path) -> None:
    src = Layout(tmp_path / "in")
    image = src.add_image("raw-image", layers=3)
    index = src.add_index("raw-index", [("linux", "amd64"), ("linux", "arm64")])
    artifact = src.add_artifact(SIGNATURE_TYPE, b"payload", image)
    for desc, tag in ((image, "image"), (index, "index"), (artifact, "artifact")):
        src.tag(desc, tag)
        await push(src.path, tag, f"{registry.host}/{repo}:{tag}")

    for desc, tag in ((image, "image"), (index, "index"), (artifact, "artifact")):
        pushed = read_blob(src.path, desc["digest"])
        by_tag = await inspect_raw(f"{registry.host}/{repo}:{tag}")
        assert by_tag == pushed, f"{tag}: inspect --raw by tag differs from the pushed bytes"
        by_digest = await inspect_raw(f"{registry.host}/{repo}@{desc['digest']}")
        assert by_digest == pushed, f"{tag}: inspect --raw by digest differs from the pushed bytes"


async def test_list_tags(registry, repo: str, tmp_path: Path) -> None:
    src = Layout(tmp_path / "in")
    image = src.add_image("tagged", layers=1)
    src.tag(image, "v1")
    tags = ["v1", "v1.0", "latest", "2024-01-01_build.7"]
    for tag in tags:
        await push(src.path, "v1", f"{registry.host}/{repo}:{tag}")

    listing = json.loads(await skopeo(
        "list-tags", "--tls-verify=false", f"docker://{registry.host}/{repo}"
    ))
    assert sorted(listing["Tags"]) == sorted(tags)
    assert listing["Repository"].endswith(repo)
    for tag in tags:
        assert await inspect_raw(f"{registry.host}/{repo}:{tag}") == read_blob(
            src.path, image["digest"]
        )


_ACCESS_LINE = re.compile(r'"(\w+) (\S+) HTTP/1\.1" (\d{3}) ')


def requests_seen(log: str) -> list[tuple[str, str, int]]:
    """(method, unquoted path and query, status) of each request in a debug access log."""
    return [(m, unquote(target), int(s)) for m, target, s in _ACCESS_LINE.findall(log)]


async def test_copy_between_two_repositories_under_bearer_auth_mounts_the_layers(
    start_registry, tmp_path: Path
) -> None:
    """`skopeo copy docker://host/a/x:1 docker://host/b/x:1` with a token: skopeo asks to
    reuse each layer from a/x (it asks the token for pull on a/x itself), the mount answers 201,
    and no layer is uploaded again (skopeo always uploads the config)."""
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    credentials = Credentials(store.db)
    credentials.create_scope_map("copier-map", parse_permissions(
        [("**", ["content/read", "content/write", "metadata/read"])]
    ))
    _, passwords = credentials.create_token("copier", "copier-map")
    store.close()
    config = tmp_path / "config.toml"
    config.write_text('log_level = "debug"\n')  # the access log
    server = start_registry(
        data_dir=data_dir, args=["--config", str(config), "--auth", "--insecure-http"]
    )
    creds = f"copier:{passwords['password1']}"
    src = Layout(tmp_path / "in")
    image = src.add_image("copied-by-mount", layers=2)
    src.tag(image, "1")
    await skopeo("copy", "--dest-creds", creds, "--dest-tls-verify=false",
                 f"oci:{src.path}:1", f"docker://{server.host}/a/x:1")
    before = len(requests_seen(server.log()))

    await skopeo("copy", "--src-creds", creds, "--dest-creds", creds,
                 "--src-tls-verify=false", "--dest-tls-verify=false",
                 f"docker://{server.host}/a/x:1", f"docker://{server.host}/b/x:1")

    copy = requests_seen(server.log())[before:]
    manifest = read_blob(src.path, image["digest"])
    layers = [layer["digest"] for layer in json.loads(manifest)["layers"]]
    mounts = {
        digest: status
        for method, path, status in copy
        for digest in layers
        if method == "POST" and path.startswith("/v2/b/x/blobs/uploads/?")
        and f"mount={digest}" in path and "from=a/x" in path
    }
    assert mounts == dict.fromkeys(layers, 201), copy
    uploads = [path for method, path, _ in copy if method == "PUT" and "/blobs/uploads/" in path]
    assert not [path for path in uploads for digest in layers if digest in path], uploads
    copied = await skopeo("inspect", "--raw", "--creds", creds, "--tls-verify=false",
                          f"docker://{server.host}/b/x:1")
    assert copied == manifest
