"""Access control lists (REQ-ACL-1..4): CIDR allow/deny, time windows, regions, dynamic blocks.

Order: a dynamic block or a denied CIDR refuses; then the source must be in an
allowed CIDR (when any are listed); its region (from the configured
CIDR-to-region table; REQ-ACL-1 asks for geographic rules without naming a
database, and hosts of this site sit in private networks) must be allowed;
and the time must fall in an allowed window (UTC).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass, field

from securecore.policy.state import PolicyView

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class TimeWindow:
    days: tuple[str, ...]
    start: datetime.time
    end: datetime.time

    def contains(self, moment: datetime.datetime) -> bool:
        day = DAYS[moment.weekday()]
        return day in self.days and self.start <= moment.time() < self.end


@dataclass(frozen=True)
class AclRules:
    allow: tuple = ()
    deny: tuple = ()
    regions: dict = field(default_factory=dict)  # network -> region
    allowed_regions: tuple[str, ...] = ()
    windows: tuple[TimeWindow, ...] = ()

    @classmethod
    def from_mapping(cls, data: dict) -> AclRules:
        def networks(key: str) -> tuple:
            try:
                return tuple(ipaddress.ip_network(v, strict=False) for v in data.get(key, ()))
            except ValueError as error:
                raise ValueError(f"acl.{key}: {error}") from error

        windows = []
        for index, window in enumerate(data.get("windows", ())):
            days = tuple(d.lower()[:3] for d in window.get("days", DAYS))
            if any(d not in DAYS for d in days):
                raise ValueError(f"acl.windows[{index}].days: {window.get('days')}")
            try:
                start = datetime.time.fromisoformat(window["start"])
                end = datetime.time.fromisoformat(window["end"])
            except (KeyError, ValueError) as error:
                raise ValueError(f"acl.windows[{index}]: start and end as HH:MM") from error
            windows.append(TimeWindow(days, start, end))
        regions = {}
        for cidr, region in data.get("regions", {}).items():
            try:
                regions[ipaddress.ip_network(cidr, strict=False)] = region
            except ValueError as error:
                raise ValueError(f"acl.regions: {error}") from error
        return cls(
            networks("allow"),
            networks("deny"),
            regions,
            tuple(data.get("allowed_regions", ())),
            tuple(windows),
        )

    def region_of(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        matches = [
            (net.prefixlen, region) for net, region in self.regions.items() if address in net
        ]
        return max(matches)[1] if matches else None


@functools.lru_cache(maxsize=4096)
def parsed_address(source: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ipaddress.ip_address, remembered for the sources seen last: parsing the
    client's address again for each of its requests was a measurable part of
    a decision. Bounded, whatever addresses clients come from."""
    return ipaddress.ip_address(source)


def check_acl(
    rules: AclRules, state: PolicyView, source: str, moment: datetime.datetime
) -> str | None:
    """None when allowed, else the reason for the refusal."""
    address = parsed_address(source)
    blocked = state.blocked("ip", source, moment.timestamp())
    if blocked:
        return f"source {source} is blocked: {blocked}"
    if any(address in net for net in rules.deny):
        return f"source {source} is in a denied network"
    if rules.allow and not any(address in net for net in rules.allow):
        return f"source {source} is not in an allowed network"
    if rules.allowed_regions:
        region = rules.region_of(address)
        if region not in rules.allowed_regions:
            return f"source {source} is in region {region or 'unknown'}, not allowed"
    if rules.windows and not any(w.contains(moment) for w in rules.windows):
        return f"outside the allowed time windows ({moment:%a %H:%M} UTC)"
    return None
