"""Check an access policy before it is deployed: `python -m securecore.policy.check < POLICY.json`.

roles/securecore runs it on the controller with the inventory's securecore_policy,
before anything is written to a host: a policy the service would refuse at start
(and so a host that would not come back after its restart) stops the run there,
with the same message the service would give. Exit status 0 when the policy is
taken, 1 with the problem on stderr when it is not.
"""

from __future__ import annotations

import json
import math
import sys

from securecore.policy.engine import Policy

# What a policy may hold. A key outside these is refused, not ignored: a misspelt
# "acls" or "denny" ignored would deploy no rule at all, open where it was meant shut.
SECTIONS = {
    "acl": {"allow", "deny", "regions", "allowed_regions", "windows"},
    "client_limit": {"rate", "burst"},
    "plugin_limit": {"rate", "burst"},
}
LISTS = ("allow", "deny", "allowed_regions", "windows")


def _check_shape(mapping: dict) -> None:
    unknown = sorted(set(mapping) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)} (a policy has {', '.join(SECTIONS)})")
    for section, keys in SECTIONS.items():
        value = mapping.get(section, {})
        if not isinstance(value, dict):
            raise ValueError(f"{section}: a mapping is wanted, not {value!r}")
        unknown = sorted(set(value) - keys)
        if unknown:
            raise ValueError(
                f"{section}: unknown {', '.join(unknown)} (it has {', '.join(sorted(keys))})"
            )
    for name in LISTS:
        value = mapping.get("acl", {}).get(name, [])
        if not isinstance(value, list):
            raise ValueError(f"acl.{name}: a list is wanted, not {value!r}")
    for section in ("client_limit", "plugin_limit"):
        for key, value in mapping.get(section, {}).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{section}.{key}: a positive number is wanted, not {value!r}")


def policy_from_mapping(mapping: object) -> Policy:
    """The policy MAPPING describes (as a policy file holds it); ValueError naming the
    part that is wrong."""
    if not isinstance(mapping, dict):
        raise ValueError(f"a mapping (acl, client_limit, plugin_limit) is wanted, not {mapping!r}")
    _check_shape(mapping)
    try:
        return Policy.from_mapping(mapping)
    except (TypeError, AttributeError, KeyError) as error:
        raise ValueError(f"malformed policy: {error}") from error


def main() -> int:
    try:
        policy_from_mapping(json.load(sys.stdin))
    except ValueError as error:  # json.JSONDecodeError included
        print(f"securecore_policy: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
