"""The service's configuration: one TOML file, validated completely before anything starts.

Found with `-c PATH` or the SECURECORE_CONFIG environment variable. Every
problem names the file and the key ("[audit] checkpoint_every"); all of them
are reported at once. roles/securecore renders the same format in production
and `securecore-lab init` writes it for development.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securecore.errors import SecureCoreError
from securecore.server.identity import PRINCIPAL_ID, split_principal_id

ENVIRONMENT_VARIABLE = "SECURECORE_CONFIG"


class ConfigError(SecureCoreError):
    """The configuration is missing or wrong; the message lists every problem with its key."""


class BackendError(ConfigError):
    """A backend the configuration names (key store, audit store, state database) cannot
    be opened; the message names the file, the key and the cause, never a secret."""


@dataclass(frozen=True)
class Option:
    kind: type[Any] | tuple[type[Any], ...]
    default: Any = None
    required: bool = False
    is_path: bool = False
    must_exist: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    # An int that may also be given as "auto": as many as the CPUs this process may
    # run on (its affinity: a container's or a systemd unit's CPU set, not the host's).
    auto: bool = False


SCHEMA: dict[str, dict[str, Option]] = {
    "service": {
        "name": Option(str, "securecore"),
        "listen": Option(str, "0.0.0.0:8443"),
        "data_dir": Option(str, required=True, is_path=True),
        # Worker processes; with more than one, the supervisor keeps the one
        # audit log writer and the workers reach it over a Unix socket.
        # "auto": one per CPU, at most AUTO_MAXIMUM (REQ-PERF-12; a worker is one
        # Python process: one CPU at most).
        "workers": Option(int, 1, minimum=1, auto=True),
    },
    "tls": {
        "policy": Option(str, is_path=True, must_exist=True),
    },
    "keys": {
        "backend": Option(str, required=True, choices=("pkcs11", "software")),
        "signing_key": Option(str, "securecore-signing"),
        "kek": Option(str, "securecore-kek"),
        "grace_period_days": Option(int, 30, minimum=0),
    },
    "keys.pkcs11": {
        "module": Option(str, "/usr/lib/softhsm/libsofthsm2.so", is_path=True, must_exist=True),
        "token_label": Option(str, "securecore"),
        "user_pin_file": Option(str, required=True, is_path=True, must_exist=True),
        "softhsm_conf": Option(str, is_path=True, must_exist=True),
    },
    "keys.software": {
        "directory": Option(str, required=True, is_path=True, must_exist=True),
    },
    "audit": {
        "backend": Option(str, "sqlite", choices=("sqlite", "postgresql")),
        # SQLite: the database file. PostgreSQL: see dsn (database is then ignored).
        "database": Option(str, required=True, is_path=True),
        "dsn": Option(str),
        "witness_dir": Option(str, required=True, is_path=True),
        "origin": Option(str, required=True),
        "hmac_key_file": Option(str, required=True, is_path=True, must_exist=True),
        "checkpoint_every": Option(int, 1000, minimum=1),
        "checkpoint_interval_seconds": Option((int, float), 10.0, minimum=0),
        # Witnesses on other hosts that cosign each checkpoint ({name = "https://host:port"});
        # their verifier keys are pinned in witness_keys (one vkey a line). With witnesses,
        # `audit verify` needs every record older than the interval + grace under a
        # checkpoint a pinned witness cosigned (securecore.audit.witness).
        "witnesses": Option(dict, {}),
        "witness_keys": Option(str, is_path=True, must_exist=True),
        "witness_grace_seconds": Option((int, float), 60, minimum=0),
        # Pinned checkpoint keys of the origins this host checks ({origin: {key id: PEM}}):
        # the standby's copy and the witnesses never take keys from the origin's answer.
        "origin_keys": Option(str, is_path=True, must_exist=True),
        # Several hosts write this one log (PostgreSQL only): the database numbers the
        # records, the holder of its sequencer lock signs checkpoints with its own key,
        # and origin_keys pins every host's key (securecore.audit.log, cluster mode).
        "cluster": Option(bool, False),
    },
    "state": {
        # Sessions, plugins and policy state: SQLite files in the data directory,
        # or one PostgreSQL database (dsn) shared by the active and standby hosts.
        "backend": Option(str, "sqlite", choices=("sqlite", "postgresql")),
        "dsn": Option(str),
    },
    "policy": {
        # A TOML file with [acl] (allow, deny, regions, allowed_regions, windows),
        # [client_limit] and [plugin_limit] (rate, burst); see securecore.policy.
        "file": Option(str, is_path=True, must_exist=True),
        # How many hosts serve the one service (cluster mode). Rate limits are
        # counted on each host (a shared counter per request would cost a database
        # write), so each host enforces 1/N of every rate and burst: together they
        # never exceed the limit; a client whose requests all reach one host gets 1/N.
        "serving_hosts": Option(int, 1, minimum=1),
    },
    "plugins": {
        # Vendor allowlist with each vendor's reputation (0-100), e.g. {acme = 80}.
        "vendors": Option(dict, {}),
        "minimum_security_level": Option(int, 3, minimum=1),
        # The certificate the service presents to plugins (spiffe://.../core/HOST);
        # by default the TLS policy's client certificate.
        "client_certificate": Option(str, is_path=True, must_exist=True),
        "client_key": Option(str, is_path=True, must_exist=True),
        # Where a plugin's endpoint may be (the plugin segment): CIDRs, and the
        # ports if limited. Empty: no endpoint is allowed (securecore.plugin_registry.access).
        "allowed_networks": Option(list, []),
        "allowed_ports": Option(list, []),
        # Who may call which plugin and operation: [[plugins.access]] tables of
        # principals, plugins, operations (patterns). None: every call is denied.
        "access": Option(list, []),
    },
    "backup": {
        "directory": Option(str, is_path=True),
    },
    "edge": {
        # The DMZ edge's principals (dmz/HOST): only from a connection whose certificate
        # names one of these is a client's identity relayed in the client-cert and
        # x-forwarded-for headers (securecore.server.forwarded). Empty: none is.
        "principals": Option(list, []),
    },
    "limits": {
        # Request bodies in bytes, enforced while they are read (413, connection
        # closed): every route, and per route template, e.g.
        # route_body_bytes = {"/v1/plugins/{name}/call" = 65536} (the default).
        "body_bytes": Option(int, 4096, minimum=0),
        "route_body_bytes": Option(dict, {}),
    },
}
REQUIRED_SECTIONS = ("service", "keys", "audit")


class Config:
    """Validated settings: `config.get("audit", "database")`, paths absolute."""

    def __init__(self, path: Path, values: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._values = values

    def get(self, section: str, key: str) -> Any:
        return self._values.get(section, {}).get(key, SCHEMA[section][key].default)

    def section(self, section: str) -> dict[str, Any]:
        return {key: self.get(section, key) for key in SCHEMA[section]}

    def has(self, section: str) -> bool:
        return section in self._values


def first_line(error: BaseException) -> str:
    """An error's message on one line (a driver's hint on the next lines is dropped)."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def locate(path: str | os.PathLike | None) -> Path:
    if path:
        return Path(path)
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:
        return Path(from_environment)
    raise ConfigError(f"no configuration: pass -c PATH or set {ENVIRONMENT_VARIABLE}")


def load(path: str | os.PathLike | None = None) -> Config:
    config_path = locate(path)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{config_path}: the configuration file does not exist") from error
    except OSError as error:
        raise ConfigError(f"{config_path}: cannot read it ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{config_path}: not valid TOML ({error})") from error
    base = config_path.resolve().parent
    problems: list[str] = []
    values = _validate(raw, base, problems)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{config_path}: {len(problems)} problem(s):\n{listed}")
    return Config(config_path, values)


def _flatten(raw: dict[str, Any], problems: list[str]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for name, content in raw.items():
        if not isinstance(content, dict):
            problems.append(f"{name}: a top-level key must be a [section]")
            continue
        # A table inside a section is a subsection ([keys.pkcs11]) when the
        # schema has one by that name; otherwise it is a value (vendors = {...}).
        sections[name] = {
            k: v
            for k, v in content.items()
            if not (isinstance(v, dict) and f"{name}.{k}" in SCHEMA)
        }
        for sub, sub_content in content.items():
            if isinstance(sub_content, dict) and f"{name}.{sub}" in SCHEMA:
                sections[f"{name}.{sub}"] = sub_content
    return sections


def _validate(raw: dict[str, Any], base: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    sections = _flatten(raw, problems)
    for name in sorted(set(sections) - set(SCHEMA)):
        problems.append(f"[{name}]: unknown section (known: {', '.join(SCHEMA)})")
    for name in REQUIRED_SECTIONS:
        if name not in sections:
            problems.append(f"[{name}]: the section is required")
    backend = sections.get("keys", {}).get("backend")
    if backend in ("pkcs11", "software") and f"keys.{backend}" not in sections:
        problems.append(f"[keys.{backend}]: required because [keys] backend = {backend!r}")
    values: dict[str, dict[str, Any]] = {}
    for name, content in sections.items():
        schema = SCHEMA.get(name)
        if schema is None:
            continue
        values[name] = {}
        for key in sorted(set(content) - set(schema)):
            problems.append(f"[{name}] {key}: unknown key (known: {', '.join(schema)})")
        for key, option in schema.items():
            where = f"[{name}] {key}"
            if key not in content:
                if option.required:
                    problems.append(f"{where}: required")
                continue
            value = content[key]
            if option.auto and value == "auto":
                value = usable_cpus()
            # A bool is an int to Python, but true is no number of workers.
            if (isinstance(value, bool) and option.kind is not bool) or not isinstance(
                value, option.kind
            ):
                kinds = option.kind if isinstance(option.kind, tuple) else (option.kind,)
                wanted = " or ".join(kind.__name__ for kind in kinds)
                wanted += ' or "auto"' if option.auto else ""
                problems.append(f"{where}: must be {wanted}, not {type(value).__name__}")
                continue
            if option.choices and value not in option.choices:
                problems.append(f"{where} = {value!r}: one of {', '.join(option.choices)}")
                continue
            if option.minimum is not None and value < option.minimum:
                problems.append(f"{where} = {value}: at least {option.minimum}")
                continue
            if option.is_path:
                value = str((base / value).resolve()) if value else value
                if option.must_exist and not Path(value).exists():
                    problems.append(f"{where} = {value}: no such file or directory")
                    continue
            values[name][key] = value
    _check_backends(sections, values, problems)
    _check_edge(values, problems)
    return values


# "auto" runs at most this many workers: each holds its own HSM session and
# database connections, which a large host's CPU count could exhaust (a token's
# sessions, PostgreSQL's max_connections). More are asked for by number.
AUTO_MAXIMUM = 8


def usable_cpus() -> int:
    """The CPUs this process may run on, at most AUTO_MAXIMUM."""
    return min(len(os.sched_getaffinity(0)) or 1, AUTO_MAXIMUM)


def _check_backends(
    sections: dict[str, dict[str, Any]], values: dict[str, dict[str, Any]], problems: list[str]
) -> None:
    """What one key requires of another: a PostgreSQL backend needs its dsn (a dsn of
    the wrong type is already reported)."""
    for name in ("audit", "state"):
        given = sections.get(name, {})
        if values.get(name, {}).get("backend") == "postgresql" and not given.get("dsn"):
            problems.append(f"[{name}] dsn: required because [{name}] backend = 'postgresql'")
    audit = values.get("audit", {})
    if audit.get("cluster") and audit.get("backend") != "postgresql":
        # One database is what the hosts share: files on each host cannot be.
        problems.append("[audit] cluster: requires [audit] backend = 'postgresql'")
    if audit.get("cluster") and not audit.get("origin_keys"):
        # Checkpoints come from whichever host is the sequencer: verifying them on
        # any host needs every host's key, pinned.
        problems.append("[audit] origin_keys: required because [audit] cluster = true")


def _check_edge(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    """[edge] principals are principal ids of DMZ hosts: an edge that was a core host, an
    administrator or a plugin would be trusted to name any client."""
    for value in values.get("edge", {}).get("principals", []):
        parsed = split_principal_id(value) if isinstance(value, str) else None
        if parsed is None:
            problems.append(f"[edge] principals: {value!r} is not a principal id ({PRINCIPAL_ID})")
        elif parsed[0] != "dmz":
            problems.append(f"[edge] principals: {value!r}: an edge is a DMZ host (dmz/NAME)")
