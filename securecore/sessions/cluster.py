"""Cluster mode: access tokens issued by one host are honoured by every host.

Each host signs tokens with its own non-extractable HSM key, under a key name
of its own (`[keys] signing_key`, e.g. securecore-signing-core-01), so no host
can verify another's tokens with its key ring. The other hosts' public keys
come from `[audit] origin_keys` - the document cluster mode already requires,
every host's `securecore audit public-keys` merged: one signing key per host
signs both checkpoints and tokens, so one pinned document is the single
source of truth for the cluster's keys, deployed and rotated by one playbook.
The keys are pinned, never fetched from the shared database: whoever can
write the database cannot make a key that signs tokens.

A peer's key version is accepted while it is pinned and, once a later
version of the same key is pinned, for the key ring's grace period after
that later version was made (as on the host that owns it, REQ-SVC-12). The
owning host notes when each of its versions was made in the shared state
database (`signing_key_versions`); a version whose successor's date is not
noted is accepted until it is unpinned, as the key ring does for its own.

Tokens are signed with the newest version of this host's key that is pinned
(the version the other hosts can check), as checkpoints are: a rotation's
new version signs once its pin has been deployed everywhere.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from securecore.audit.witness import WitnessError, load_origin_keys
from securecore.config import Config
from securecore.keys.base import KeyRing, KeyStoreError, key_id, parse_key_id
from securecore.storage.state_db import StateDatabase

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS signing_key_versions (
    kid TEXT PRIMARY KEY,
    created REAL NOT NULL
);
"""


class ClusterKeys:
    """The pinned signing keys of the other hosts of a cluster, for token verification.

    `pins` is the [audit] origin_keys file and `origin` the cluster's audit origin;
    the file is read again when it changes (a rotation's new pins take effect
    without a restart), and a file being replaced keeps the last good pins."""

    def __init__(
        self,
        ring: KeyRing,
        pins: str | Path,
        origin: str,
        database: StateDatabase,  # a connection of its own: ClusterKeys closes it
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ring, self.path, self.origin, self.clock = ring, Path(pins), origin, clock
        self._db = database
        self._db.create(SCHEMA)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._pinned: dict[str, ec.EllipticCurvePublicKey] = {}
        self._noted: set[str] = set()
        self._made_at: dict[str, float] = {}
        self._own_for: dict | None = None  # the pins _own_newest was found in
        self._own_newest: str | None = None
        self.note_own_versions()

    def _pins(self) -> dict[str, ec.EllipticCurvePublicKey]:
        with self._lock:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if stamp != self._stamp:
                    self._pinned = load_origin_keys(self.path).get(self.origin, {})
                    self._stamp = stamp
            except (OSError, WitnessError) as error:
                log.warning(
                    "%s: the pinned keys are unreadable, the last ones hold: %s", self.path, error
                )
            return self._pinned

    def peer_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The pinned public key of KID, a version of another host's signing key, while
        it is accepted; None for this host's own key, an unpinned kid or a version
        past its grace period."""
        try:
            name, version = parse_key_id(kid)
        except KeyStoreError:
            return None
        pinned = self._pins()
        public = pinned.get(kid)
        if name == self.ring.signing_key or public is None:
            return None
        if not isinstance(public.curve, ec.SECP256R1):
            return None  # ES256 is P-256 only
        later = sorted(
            v
            for n, v in (parse_key_id(k) for k in pinned if _is_key_id(k))
            if n == name and v > version
        )
        if not later:
            return public
        made = self._made(key_id(name, later[0]))
        if made is None:
            return public
        return public if self.clock() - made <= self.ring.grace_period.total_seconds() else None

    def _made(self, kid: str) -> float | None:
        """When KID was made, as its host noted it (kept once known: it never changes)."""
        with self._lock:
            if kid not in self._made_at:
                row = self._db.execute(
                    "SELECT created FROM signing_key_versions WHERE kid = ?", (kid,)
                ).fetchone()
                if row is None:
                    return None
                self._made_at[kid] = row[0]
            return self._made_at[kid]

    def issuing_kid(self) -> str:
        """The newest version of this host's signing key that is pinned, else the newest."""
        pinned = self._pins()
        if self._own_for is not pinned:  # the HSM is asked once per reading of the pins
            own = [
                kid
                for kid, public in pinned.items()
                if _is_key_id(kid)
                and parse_key_id(kid)[0] == self.ring.signing_key
                and self._matches(kid, public)
            ]
            self._own_newest = max(own, key=lambda kid: parse_key_id(kid)[1], default=None)
            self._own_for = pinned
        kid = self.ring.signing_kid(self._own_newest)
        if kid not in self._noted:
            self.note_own_versions()
        return kid

    def _matches(self, kid: str, public: ec.EllipticCurvePublicKey) -> bool:
        try:
            return self.ring.backend.public_key(kid).public_numbers() == public.public_numbers()
        except KeyStoreError:
            return False

    def note_own_versions(self) -> None:
        """Note in the shared database when each version of this host's key was made,
        so that the other hosts time the grace period of the version it replaced."""
        name = self.ring.signing_key
        rows = []
        for version in self.ring.backend.versions(name):
            kid = key_id(name, version)
            made: datetime.datetime | None = self.ring.backend.created(kid)
            if made is not None:
                rows.append((kid, made.timestamp()))
            self._noted.add(kid)
        if rows:
            with self._lock, self._db.write_transaction():
                self._db.executemany(
                    "INSERT INTO signing_key_versions (kid, created) VALUES (?, ?) "
                    "ON CONFLICT (kid) DO NOTHING",
                    rows,
                )

    def close(self) -> None:
        self._db.close()


def open_cluster_keys(config: Config, ring: KeyRing, state: StateDatabase) -> ClusterKeys | None:
    """In cluster mode ([audit] cluster = true, which requires origin_keys), the other
    hosts' pinned keys on a connection of its own to STATE; else None (one host)."""
    if not config.get("audit", "cluster"):
        return None
    return ClusterKeys(
        ring, config.get("audit", "origin_keys"), config.get("audit", "origin"), state.another()
    )


def _is_key_id(value: str) -> bool:
    try:
        parse_key_id(value)
    except KeyStoreError:
        return False
    return True
