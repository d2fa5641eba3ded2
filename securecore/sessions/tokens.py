"""JWT access tokens (RFC 7519) as JWS compact ES256 (RFC 7515/7518), signed by the key ring.

Only what this service issues is accepted: header {"alg": "ES256", "typ":
"at+jwt", "kid": "<signing key id>"} exactly; "none", HS256 (algorithm
confusion with a public key as HMAC secret) and any other algorithm are
refused before any key is touched; an unknown or retired kid is refused;
issuer, audience, expiry and not-before are required and checked.

A kid of this host's signing key is verified by its key ring (the HSM's
public key, within the rotation grace period). In cluster mode a kid of
another host's signing key is verified with the public key `peers` gives
for it - the pinned key of that host (securecore.sessions.cluster) - so a
token issued by one host is honoured by all without any private key leaving
its HSM; a kid that `peers` does not vouch for is refused like an unknown one.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from securecore.errors import SecureCoreError
from securecore.keys.base import KeyRing, KeyStoreError, parse_key_id

ALGORITHM = "ES256"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret


class TokenError(SecureCoreError):
    """A token is refused; `code` is stable and safe to return to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or any(c not in _ALPHABET for c in text):
        raise TokenError("malformed", "a token part is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# A kid of another host -> its public key while that key is accepted, else None.
PeerKeys = Callable[[str], ec.EllipticCurvePublicKey | None]


def issue(ring: KeyRing, claims: dict[str, Any], kid: str | None = None) -> str:
    """Signed with KID while the ring accepts it (cluster mode: the newest version the
    other hosts have pinned), else with the newest signing key."""
    kid = ring.signing_kid(kid)
    header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": kid}
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    )
    _, der = ring.sign(signing_input.encode(), kid)
    r, s = decode_dss_signature(der)
    # JWS ES256 signatures are raw r || s, 32 bytes each (RFC 7518 3.4), not DER.
    return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def verify(
    ring: KeyRing,
    token: str,
    *,
    issuer: str,
    audience: str,
    now: float | None = None,
    leeway: int = 30,
    peers: PeerKeys | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a valid token, or TokenError."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed", "a token has three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as error:
        raise TokenError("malformed", "the header or claims are not JSON") from error
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("malformed", "the header and claims must be objects")
    if header.get("alg") != ALGORITHM:
        raise TokenError("alg_not_allowed", f"alg {header.get('alg')!r}: only {ALGORITHM}")
    if set(header) != {"alg", "typ", "kid"} or header["typ"] != TOKEN_TYPE:
        raise TokenError("malformed", f"the header must be exactly alg, typ={TOKEN_TYPE}, kid")
    kid = header["kid"]
    try:
        name, _ = parse_key_id(str(kid))
    except KeyStoreError as error:
        raise TokenError("unknown_kid", f"kid {kid!r} is not a key id") from error
    own = name == ring.signing_key
    peer = None if own or peers is None else peers(str(kid))
    if not (peer is not None or (own and ring.accepts(kid))):
        raise TokenError("unknown_kid", f"kid {kid!r} is not a current signing key")
    raw = _unb64(parts[2])
    if len(raw) != 64:
        raise TokenError("bad_signature", "an ES256 signature has 64 bytes")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signed = f"{parts[0]}.{parts[1]}".encode()
    if not (ring.verify(kid, signed, der) if peer is None else _verifies(peer, signed, der)):
        raise TokenError("bad_signature", "the signature does not verify")
    moment = time.time() if now is None else now
    for claim in ("iss", "aud", "sub", "exp", "nbf", "iat", "jti", "sid"):
        if claim not in claims:
            raise TokenError("malformed", f"claim {claim} is required")
    if claims["iss"] != issuer:
        raise TokenError("wrong_issuer", f"issuer {claims['iss']!r} is not {issuer!r}")
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if audience not in audiences:
        raise TokenError("wrong_audience", f"the token is not for {audience!r}")
    if not isinstance(claims["exp"], int | float) or moment > claims["exp"] + leeway:
        raise TokenError("expired", "the token has expired")
    if not isinstance(claims["nbf"], int | float) or moment < claims["nbf"] - leeway:
        raise TokenError("not_yet_valid", "the token is not valid yet")
    return header, claims


def _verifies(public: ec.EllipticCurvePublicKey, data: bytes, der: bytes) -> bool:
    try:
        public.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
