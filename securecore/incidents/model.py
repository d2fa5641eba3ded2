"""What an incident is made of: ids, severities, impacts, phases and the escalation matrix.

One source for these facts: the store validates with them, the admin API's
schemas are built from them, and the playbooks' refusals name the same id form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# INC-YEAR-NUMBER, numbered from 1 within each year of opening (REQ-IR-1).
ID_PATTERN = r"^INC-[0-9]{4}-[0-9]{4,6}$"
ID = re.compile(ID_PATTERN)

SOURCES = ("monitoring", "user_report", "external_notice")
IMPACTS = ("outage", "data_leak", "degradation", "compromise")
# In the order an incident goes through them; `closed` only by closing it.
PHASES = ("detection", "containment", "eradication", "recovery")
CLOSED = "closed"
# What must be verified, and passed, before an incident closes (REQ-IR-4).
VERIFIED_STAGES = ("eradication", "recovery")
VERIFICATION_METHODS = {
    "eradication": ("test", "audit", "verification"),
    "recovery": ("function", "performance", "security"),
}


@dataclass(frozen=True)
class Response:
    """How an incident of one severity is answered (REQ-OPS-10, REQ-IR-5)."""

    severity: str
    response_level: int  # 1 (information) to 4 (emergency)
    respond_within_seconds: int
    escalation_level: int  # the escalation matrix's 1 (minor) to 3 (emergency)
    team: str
    channels: tuple[str, ...]


RESPONSES = {
    r.severity: r
    for r in (
        Response("low", 1, 24 * 3600, 1, "operations", ("mail",)),
        Response("medium", 2, 4 * 3600, 1, "operations", ("mail",)),
        Response("high", 3, 3600, 2, "security", ("phone", "mail")),
        Response("critical", 4, 15 * 60, 3, "crisis", ("phone", "mail", "pager")),
    )
}
SEVERITIES = tuple(RESPONSES)

# Hosts as the inventory names them; actions as the playbooks name them.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ACTION_PATTERN = r"^[a-z][a-z_]{1,31}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


def choice_pattern(choices: tuple[str, ...]) -> str:
    return "^(" + "|".join(choices) + ")$"
