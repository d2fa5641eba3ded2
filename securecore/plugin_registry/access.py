"""Who may call which plugin, and which of its operations; and where plugins may live.

Authorization is default deny, like an Envoy RBAC filter or a Vault policy:
a call is allowed only when a rule of `[[plugins.access]]` lists the calling
principal, the plugin and the operation. Patterns are shell-style
(`admin/*`, `tickets.*`, `*`), matched case-sensitively against the whole
value. A session proves who the caller is; it gives no right to any plugin.

    [[plugins.access]]
    principals = ["admin/*"]
    plugins = ["*"]
    operations = ["*"]

Registration endpoints are limited to the plugin segment: `allowed_networks`
(CIDRs) and, if given, `allowed_ports`; a name resolves to addresses that
must all be inside, and the core connects to the address it checked (no
second lookup that could answer otherwise).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from securecore.errors import SecureCoreError

RULE_KEYS = ("principals", "plugins", "operations")


class AccessConfigError(SecureCoreError, ValueError):
    """A rule or network of the plugin access configuration is malformed (names which)."""


@dataclass(frozen=True)
class AccessRule:
    principals: tuple[str, ...]
    plugins: tuple[str, ...]
    operations: tuple[str, ...]

    def allows(self, principal: str, plugin: str, operation: str) -> bool:
        return all(
            any(fnmatchcase(value, pattern) for pattern in patterns)
            for value, patterns in (
                (principal, self.principals),
                (plugin, self.plugins),
                (operation, self.operations),
            )
        )


@dataclass(frozen=True)
class AccessPolicy:
    rules: tuple[AccessRule, ...] = ()

    @classmethod
    def from_rules(cls, rules: Iterable[Any], where: str = "[[plugins.access]]") -> AccessPolicy:
        parsed = []
        for index, rule in enumerate(rules):
            here = f"{where}[{index}]"
            if not isinstance(rule, dict):
                raise AccessConfigError(f"{here}: a table of principals, plugins, operations")
            unknown = sorted(set(rule) - set(RULE_KEYS))
            if unknown:
                raise AccessConfigError(f"{here}: unknown key(s) {', '.join(unknown)}")
            values = []
            for key in RULE_KEYS:
                patterns = rule.get(key)
                if (
                    not isinstance(patterns, list)
                    or not patterns
                    or not all(isinstance(p, str) and p for p in patterns)
                ):
                    raise AccessConfigError(f"{here}.{key}: a non-empty list of patterns")
                values.append(tuple(patterns))
            parsed.append(AccessRule(*values))
        return cls(tuple(parsed))

    def decide(self, principal: str, plugin: str, operation: str) -> int | None:
        """The index of the first rule that allows the call; None: denied."""
        for index, rule in enumerate(self.rules):
            if rule.allows(principal, plugin, operation):
                return index
        return None


class EndpointNotAllowedError(SecureCoreError):
    """The endpoint a plugin named is outside the plugin networks (or ports)."""


@dataclass(frozen=True)
class EndpointPolicy:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ports: frozenset[int] = frozenset()  # empty: any port in the networks

    @classmethod
    def from_config(cls, networks: Iterable[Any], ports: Iterable[Any] = ()) -> EndpointPolicy:
        parsed = []
        for value in networks:
            try:
                parsed.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError as error:
                raise AccessConfigError(f"[plugins] allowed_networks: {error}") from error
        checked = set()
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise AccessConfigError(f"[plugins] allowed_ports: {port!r} is not a port")
            checked.add(port)
        return cls(tuple(parsed), frozenset(checked))

    def resolve(self, endpoint: str) -> tuple[str, int]:
        """(address, port) to connect to for ENDPOINT, or EndpointNotAllowedError; no connection
        is made here, only a name lookup when the endpoint is not an address."""
        url = urlsplit(endpoint)
        try:
            port = url.port or 443
        except ValueError as error:
            raise EndpointNotAllowedError(f"{endpoint}: {error}") from error
        host = url.hostname or ""
        if self.ports and port not in self.ports:
            allowed = ", ".join(str(p) for p in sorted(self.ports))
            raise EndpointNotAllowedError(
                f"{endpoint}: port {port} is not a plugin port ({allowed})"
            )
        if not self.networks:
            raise EndpointNotAllowedError(
                f"{endpoint}: no plugin network is allowed ([plugins] allowed_networks is empty)"
            )
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                raise EndpointNotAllowedError(f"{endpoint}: {host} does not resolve") from error
            addresses = sorted({ipaddress.ip_address(info[4][0]) for info in found}, key=str)
        outside = [str(a) for a in addresses if not any(a in net for net in self.networks)]
        if outside or not addresses:
            raise EndpointNotAllowedError(
                f"{endpoint}: {', '.join(outside) or host} is not in the plugin networks "
                f"({', '.join(str(n) for n in self.networks)})"
            )
        return str(addresses[0]), port
