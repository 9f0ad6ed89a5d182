"""The operator's config file (TOML), its defaults and validation; the one place that knows
where config and state live.

Resolution order (DESIGN.md §7): command-line flag > environment variable >
`/etc/connected-registry/config.toml` if it exists > built-in defaults. With no config file at
all the development defaults apply: `127.0.0.1:5050`, data in `./connected-registry-data`.
Role, mode, parent and everything a parent sends are state in the database, never config.
"""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import isodate

SYSTEM_CONFIG = Path("/etc/connected-registry/config.toml")
SYSTEM_DATA_DIR = Path("/var/lib/connected-registry")
DEVELOPMENT_DATA_DIR = Path("connected-registry-data")
DEFAULT_LISTEN = "127.0.0.1:5050"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A config problem, stated in one line that names the file and the key."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def url(self, scheme: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """`host:port` or `[ipv6]:port`; the ValueError's message follows the setting's name."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit():
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range (1-65535) in {text!r}")
    return Listen(host, int(port))


@dataclass(frozen=True)
class Upstream:
    url: str
    repositories: list[str]
    tag_include: str | None = None
    tag_exclude: str | None = None
    tag_semver: str | None = None
    credentials_file: Path | None = None
    ca_file: Path | None = None
    schedule: str | None = None


@dataclass(frozen=True)
class Limits:
    tokens: int = 20000
    scope_maps: int = 20000
    repository_permissions: int = 500
    client_tokens: int = 20


@dataclass(frozen=True)
class Config:
    listen: Listen = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))
    data_dir: Path = DEVELOPMENT_DATA_DIR
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_enabled: bool = False
    anonymous_pull: list[str] = field(default_factory=list)
    bandwidth_limit: int | None = None
    upstreams: list[Upstream] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    offline_after: str | None = None
    source: Path | None = None
    # Which of "listen", "auth", "tls" the operator set (file or flag); the others follow the
    # node's role (DESIGN.md §7 "Defaults by role").
    explicit: frozenset[str] = frozenset()


# -- validation ------------------------------------------------------------------------------

Check = Callable[[Any], Any]


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _path(value: Any) -> Path:
    return Path(_string(value))


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _cron(value: Any) -> str:
    # Five fields, UTC, as the parent's syncSchedule: croniter is the one judge of both.
    from appliance.control.cron import croniter

    text = _string(value)
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ValueError("must be a cron expression of five fields (UTC)")
    return text


def _semver(value: Any) -> str:
    from appliance.control.semver import SemverError, parse_range

    try:
        parse_range(_string(value))
    except SemverError as err:
        raise ValueError(f"must be a semver range such as \">=1.2 <2\": {err}") from None
    return value


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return value


def _duration(value: Any) -> str:
    try:
        parsed = isodate.parse_duration(_string(value))
    except (isodate.ISO8601Error, ValueError):
        raise ValueError("must be an ISO 8601 duration such as PT10M") from None
    if not isinstance(parsed, timedelta) or parsed.total_seconds() <= 0:
        raise ValueError("must be a positive duration in days, hours, minutes or seconds")
    return value


def _listen(value: Any) -> Listen:
    return parse_listen(_string(value))


def _log_level(value: Any) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value


TOP_LEVEL: dict[str, Check] = {"listen": _listen, "data_dir": _path, "log_level": _log_level}
SECTIONS: dict[str, dict[str, Check]] = {
    "tls": {"cert": _path, "key": _path},
    "auth": {"enabled": _boolean, "anonymous_pull": _strings},
    "sync": {"bandwidth_limit": _positive_int},
    "limits": {
        "tokens": _positive_int,
        "scope_maps": _positive_int,
        "repository_permissions": _positive_int,
        "client_tokens": _positive_int,
    },
    "hierarchy": {"offline_after": _duration},
}
UPSTREAM: dict[str, Check] = {
    "url": _string,
    "repositories": _strings,
    "tag_include": _string,
    "tag_exclude": _string,
    "tag_semver": _semver,
    "credentials_file": _path,
    "ca_file": _path,
    "schedule": _cron,
}
UPSTREAM_REQUIRED = ("url", "repositories")


def _checked(
    table: dict[str, Any], checks: dict[str, Check], where: str, also: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The table's values, checked; `also` are the other names a key here could have meant
    (the sections, at the top level)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in checks:
            close = difflib.get_close_matches(key, [*checks, *also], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {where}{key!r}{hint}")
        try:
            out[key] = checks[key](value)
        except ValueError as err:
            raise ConfigError(f"{where}{key!r} {err}") from None
    return out


def parse_config(text: str, source: Path | None = None) -> Config:
    """Parse and validate a config document; unknown keys and bad values are ConfigErrors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}") from None
    top = {k: v for k, v in doc.items() if k not in SECTIONS and k != "upstream"}
    values = _checked(top, TOP_LEVEL, "", also=(*SECTIONS, "upstream"))
    sections: dict[str, dict[str, Any]] = {}
    for name, checks in SECTIONS.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _checked(table, checks, f"[{name}] ")
    upstream_tables = doc.get("upstream", [])
    if not isinstance(upstream_tables, list):
        raise ConfigError("upstreams are written [[upstream]]")
    upstreams = []
    for i, table in enumerate(upstream_tables):
        where = f"[[upstream]] #{i + 1} "
        checked = _checked(table, UPSTREAM, where)
        for key in UPSTREAM_REQUIRED:
            if key not in checked:
                raise ConfigError(f"{where}needs {key!r}")
        upstreams.append(Upstream(**checked))
    tls, auth = sections["tls"], sections["auth"]
    if ("cert" in tls) != ("key" in tls):
        raise ConfigError("[tls] needs both 'cert' and 'key'")
    return Config(
        listen=values.get("listen", Config().listen),
        data_dir=values.get("data_dir", DEVELOPMENT_DATA_DIR),
        log_level=values.get("log_level", "info"),
        tls_cert=tls.get("cert"),
        tls_key=tls.get("key"),
        auth_enabled=auth.get("enabled", False),
        anonymous_pull=auth.get("anonymous_pull", []),
        bandwidth_limit=sections["sync"].get("bandwidth_limit"),
        upstreams=upstreams,
        limits=Limits(**sections["limits"]),
        offline_after=sections["hierarchy"].get("offline_after"),
        source=source,
        explicit=frozenset(
            key
            for key, given in (
                ("listen", "listen" in values),
                ("auth", "enabled" in auth),
                ("tls", "cert" in tls),
            )
            if given
        ),
    )


def load_config(path: Path | None) -> Config:
    """The config to use: `path` if given, else the system file if it exists, else defaults.

    A config file without `data_dir` puts the state in `/var/lib/connected-registry` when it is
    the system file (an installed device), and in `./connected-registry-data` otherwise.
    """
    if path is None:
        if not SYSTEM_CONFIG.exists():
            return Config()
        path = SYSTEM_CONFIG
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        config = parse_config(text, path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if "data_dir" in tomllib.loads(text):
        config = replace(config, data_dir=_anchor(config.data_dir, path.parent))
    elif path == SYSTEM_CONFIG:
        config = replace(config, data_dir=SYSTEM_DATA_DIR)
    # Relative paths in a config file mean relative to the file, not to where a command runs.
    return replace(
        config,
        tls_cert=_anchor(config.tls_cert, path.parent),
        tls_key=_anchor(config.tls_key, path.parent),
    )


def _anchor(value: Path | None, folder: Path) -> Path | None:
    return folder / value if value is not None and not value.is_absolute() else value


def resolve(
    config_path: Path | None,
    data_dir: Path | None = None,
    listen: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    auth_enabled: bool | None = None,
) -> Config:
    """Apply flags (or their environment variables, which click has already merged) over the
    config file. Only what was given overrides."""
    config = load_config(config_path)
    changes: dict[str, Any] = {}
    explicit = set(config.explicit)
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if listen is not None:
        try:
            changes["listen"] = parse_listen(listen)
        except ValueError as err:
            raise ConfigError(f"--listen {err}") from None
        explicit.add("listen")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if tls_cert is not None:
        changes["tls_cert"], changes["tls_key"] = tls_cert, tls_key
        explicit.add("tls")
    if auth_enabled is not None:
        changes["auth_enabled"] = auth_enabled
        explicit.add("auth")
    return replace(config, explicit=frozenset(explicit), **changes)


ROLE_LISTEN = "0.0.0.0:443"


def with_role_defaults(config: Config, role: str | None, tls_cert: Path, tls_key: Path) -> Config:
    """A root or an activated device listens on 443 with TLS and auth unless the operator said
    otherwise; a development node keeps the development defaults. `tls_cert`/`tls_key` are the
    node's own certificate (made by activation or `tls generate`), used when present."""
    if role not in ("cloud", "connected"):
        return config
    changes: dict[str, Any] = {}
    if "listen" not in config.explicit:
        changes["listen"] = parse_listen(ROLE_LISTEN)
    if "auth" not in config.explicit:
        changes["auth_enabled"] = True
    if "tls" not in config.explicit and tls_cert.exists() and tls_key.exists():
        changes["tls_cert"], changes["tls_key"] = tls_cert, tls_key
    return replace(config, **changes)
