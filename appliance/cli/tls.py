"""`connected-registry tls generate`: a CA and a server certificate for `serve` over HTTPS."""

from __future__ import annotations

import ipaddress
import shlex
import sys
from pathlib import Path

import click

from appliance.auth.certificates import (
    CertificateError,
    Host,
    IssuedCertificates,
    issue,
    parse_host,
)
from appliance.cli.options import load, node_options
from appliance.cli.output import emit, format_fields, output_option
from appliance.config import ROLE_LISTEN, Listen, parse_listen
from appliance.storage.layout import Layout

_HTTPS_PORT = 443


@click.group()
def tls() -> None:
    """Certificates for serving HTTPS."""


def _parse_hosts(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Host]:
    hosts: list[Host] = []
    for value in values:
        try:
            host = parse_host(value)
        except ValueError as err:
            raise click.BadParameter(str(err), ctx, param) from None
        if host not in hosts:
            hosts.append(host)
    return hosts


@tls.command()
@node_options
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME|IP",
    callback=_parse_hosts,
    help="A DNS name or IP address clients use to reach this registry; repeat for each.",
)
@click.option(
    "--new-ca",
    is_flag=True,
    help="Make a new CA even if there is one (every client must then trust the new ca.crt).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where `serve` will listen: the serve command and the client instructions printed "
    f"use it.  [default: the config's listen if it sets one, else {ROLE_LISTEN}]",
)
@output_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replacing an existing CA.")
def generate(
    config_path: Path | None,
    data_dir: Path | None,
    hosts: list[Host],
    new_ca: bool,
    listen: str | None,
    output: str,
    yes: bool,
) -> None:
    """Issue a server certificate for every --host, signed by this node's CA, and print the
    `serve` command that uses it (with this data directory, the --listen address and auth on).

    The CA is made on first use and kept, so issuing again for other hosts leaves clients'
    trust intact.
    """
    if not hosts:
        raise click.UsageError(
            "give at least one --host NAME|IP: each DNS name and IP address clients dial"
        )
    config = load(config_path, data_dir, listen=listen)
    layout = Layout(config.data_dir.resolve())
    if new_ca and layout.tls_ca_cert.exists() and not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(
                "refusing to replace the CA without confirmation and no terminal to ask on: "
                "pass --yes"
            )
        click.confirm(
            f"Replace the CA in {layout.tls_ca_cert}? Clients that trust it will refuse this "
            "registry until they trust the new one",
            abort=True,
        )
    try:
        issued = issue(layout, hosts, new_ca=new_ca)
    except CertificateError as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f"cannot write the certificates: {err}") from None
    served = config.listen if "listen" in config.explicit else parse_listen(ROLE_LISTEN)
    serve = _serve_command(config_path, layout, served, issued)
    report = {**_report(issued, served.port), "serve": serve}
    emit(output, report, lambda: _table(issued, report))


def _serve_command(
    config_path: Path | None, layout: Layout, listen: Listen, issued: IssuedCertificates
) -> list[str]:
    """What serves this data directory with the new certificate, auth on, pasted as is."""
    command = ["connected-registry", "serve"]
    if config_path is not None:
        command += ["--config", str(config_path.resolve())]
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return [
        *command,
        "--data-dir",
        str(layout.root),
        "--listen",
        f"{host}:{listen.port}",
        "--tls-cert",
        str(issued.server_cert),
        "--tls-key",
        str(issued.server_key),
        "--auth",
    ]


def registry_host(host: Host, port: int) -> str:
    """HOST[:PORT] as docker, podman and containerd name a registry (no port for 443)."""
    name = f"[{host}]" if isinstance(host, ipaddress.IPv6Address) else str(host)
    return name if port == _HTTPS_PORT else f"{name}:{port}"


def _report(issued: IssuedCertificates, port: int) -> dict:
    registries = [registry_host(host, port) for host in issued.hosts]
    return {
        "hosts": [str(host) for host in issued.hosts],
        "caCert": str(issued.ca_cert),
        "caFingerprint": issued.ca_fingerprint,
        "caReused": issued.ca_reused,
        "serverCert": str(issued.server_cert),
        "serverKey": str(issued.server_key),
        "notAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "serveFlags": ["--tls-cert", str(issued.server_cert), "--tls-key", str(issued.server_key)],
        "clients": {
            "docker": [f"/etc/docker/certs.d/{r}/ca.crt" for r in registries],
            "podman": [f"/etc/containers/certs.d/{r}/ca.crt" for r in registries],
            "skopeo": "--cert-dir DIR, where DIR holds a copy of ca.crt",
            "containerd": [
                {
                    "hostsToml": f"/etc/containerd/certs.d/{r}/hosts.toml",
                    "server": f"https://{r}",
                    "ca": f"/etc/containerd/certs.d/{r}/ca.crt",
                }
                for r in registries
            ],
        },
    }


def _table(issued: IssuedCertificates, report: dict) -> str:
    clients = report["clients"]
    reused = "kept: clients that trust it need nothing new" if issued.ca_reused else "new"
    lines = [
        format_fields(
            [
                ("Hosts", ", ".join(report["hosts"])),
                ("Server cert", f"{issued.server_cert}  (valid until {issued.not_after:%Y-%m-%d})"),
                ("Server key", str(issued.server_key)),
                ("CA cert", f"{issued.ca_cert}  ({reused})"),
                ("CA fingerprint", issued.ca_fingerprint),
            ]
        ),
        "",
        "Serve with:",
        f"  {shlex.join(report['serve'])}",
        "",
        f"Clients trust the CA: copy {issued.ca_cert.name} to each client.",
        "  docker:      " + "\n               ".join(clients["docker"]),
        "  podman:      " + "\n               ".join(clients["podman"]),
        f"  skopeo:      {clients['skopeo']} (it reads every *.crt there as a CA)",
    ]
    for entry in clients["containerd"]:
        lines += [
            f"  containerd:  {entry['hostsToml']}:",
            f'                 server = "{entry["server"]}"',
            f'                 [host."{entry["server"]}"]',
            f'                   ca = "{entry["ca"]}"',
        ]
    return "\n".join(lines)
