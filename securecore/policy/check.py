"""Check an access policy before it is deployed: `python -m securecore.policy.check < POLICY.json`.

roles/securecore runs it on the controller with the inventory's securecore_policy,
before anything is written to a host: a policy the service would refuse at start
(and so a host that would not come back after its restart) stops the run there,
with the same message the service would give. Exit status 0 when the policy is
taken, 1 with the problem on stderr when it is not.
"""

from __future__ import annotations

import json
import sys

from securecore.policy.engine import Policy


def policy_from_mapping(mapping: object) -> Policy:
    """The policy MAPPING describes (as a policy file holds it); ValueError naming the
    part that is wrong."""
    if not isinstance(mapping, dict):
        raise ValueError(f"a mapping (acl, client_limit, plugin_limit) is wanted, not {mapping!r}")
    try:
        return Policy.from_mapping(mapping)
    except (TypeError, AttributeError) as error:
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
