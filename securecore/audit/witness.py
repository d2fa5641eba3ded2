"""Checkpoint witnesses: the audit log's anchor outside the service's own reach.

Whoever can write the service's data directory (the service user, root on the
core host) can rewrite the database, the local leaf-hash file and the local
checkpoints together, and can even have the HSM sign a new checkpoint over the
rewritten tree. What they cannot do is make a *witness* - a small service on
another host, under another user - forget what it has already seen.

This follows c2sp.org/tlog-witness and c2sp.org/tlog-cosignature (the
protocol of Certificate Transparency and sigsum witnesses):

* The witness holds, per origin, the latest checkpoint it accepted. It accepts
  a new one only if the origin's signature verifies against public keys PINNED
  at deploy time (a file the role writes; nothing in a request names a key)
  and an RFC 9162 consistency proof from the size it holds to the new size
  verifies. A rollback, a fork or a proof from a size it does not hold is
  refused (409 Conflict with the size it holds, as tlog-witness specifies).
* It answers an accepted checkpoint with a cosignature (cosignature/v1,
  Ed25519, over "cosignature/v1\\ntime T\\n" + the checkpoint text) made with
  its own key, generated on the witness host and never leaving it.
* `GET /checkpoint?origin=O` returns the cosigned checkpoint it holds.

The core service pushes every checkpoint it signs (WitnessPusher: a
background thread, retried with back-off, never in a request's path) and keeps
the cosigned notes: in witness_dir/cosigned and, written by the audit writer,
in the audit store (audit_cosigned), so that a backup of the database carries
the anchors of the records it holds. A witness keeps only its newest checkpoint:
after a disaster it is beyond what the backup holds, and a log restored from
the backup is proved against the cosigned notes the backup carried.
`securecore audit verify` checks the log against the newest checkpoint a
pinned witness key cosigned.

Wire format of POST /add-checkpoint (text/plain, tlog-witness):
    old <size held by the witness>\\n
    <base64 consistency proof hash>\\n   (zero or more)
    \\n
    <signed checkpoint note>
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from securecore.audit import merkle
from securecore.audit.checkpoint import (
    EM_DASH,
    Checkpoint,
    CheckpointError,
    parse_checkpoint,
    verify_checkpoint,
)
from securecore.errors import SecureCoreError

if TYPE_CHECKING:
    from starlette.applications import Starlette

COSIGNATURE_ALGORITHM = 0x04  # c2sp.org/signed-note: timestamped Ed25519 cosignature
MAX_BODY = 64 * 1024  # a checkpoint and at most 64 proof hashes fit many times over
MAX_PROOF = 64
SIZE_TYPE = "text/x.tlog.size"
KEY_FILE = "witness.key"


class WitnessError(SecureCoreError):
    """A witness, its key, its pinned keys or its answer is not as it must be."""


# --- keys and cosignatures ---------------------------------------------------------------


def _raw(public: ed25519.Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def cosigner_key_id(name: str, public: ed25519.Ed25519PublicKey) -> bytes:
    """c2sp.org/signed-note key ID: SHA-256(name || 0x0A || type || public key)[:4]."""
    material = name.encode() + b"\n" + bytes([COSIGNATURE_ALGORITHM]) + _raw(public)
    return hashlib.sha256(material).digest()[:4]


def vkey(name: str, public: ed25519.Ed25519PublicKey) -> str:
    """The verifier key, as operators pin it: NAME+KEYID+base64(type || key)."""
    blob = base64.b64encode(bytes([COSIGNATURE_ALGORITHM]) + _raw(public)).decode()
    return f"{name}+{cosigner_key_id(name, public).hex()}+{blob}"


def parse_vkey(text: str, where: str = "<vkey>") -> tuple[str, ed25519.Ed25519PublicKey]:
    name, _, rest = text.strip().partition("+")
    key_hash, _, blob = rest.partition("+")
    try:
        raw = base64.b64decode(blob, validate=True)
        if not name or len(raw) != 33 or raw[0] != COSIGNATURE_ALGORITHM:
            raise ValueError("not NAME+HASH+base64(0x04 || Ed25519 key)")
        public = ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])
        if cosigner_key_id(name, public).hex() != key_hash:
            raise ValueError("its key hash does not match its name and key")
    except ValueError as error:
        raise WitnessError(f"{where}: not a witness verifier key: {error}") from error
    return name, public


def load_witness_keys(path: str | Path) -> dict[str, ed25519.Ed25519PublicKey]:
    """Pinned witness verifier keys, one vkey a line (# comments), by witness name."""
    keys = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise WitnessError(f"{path}: cannot read the witness keys ({error.strerror})") from error
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, public = parse_vkey(line, f"{path}:{number}")
            keys[name] = public
    return keys


def load_origin_keys(path: str | Path) -> dict[str, dict[str, ec.EllipticCurvePublicKey]]:
    """Pinned checkpoint keys: JSON {ORIGIN: {KEY_ID: PUBLIC KEY PEM}} (deployed, not asked)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise WitnessError(f"{path}: cannot read the origin keys ({error.strerror})") from error
    except ValueError as error:
        raise WitnessError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise WitnessError(f"{path}: must map each origin to {{key id: PEM}}")
    origins: dict[str, dict[str, ec.EllipticCurvePublicKey]] = {}
    for origin, keys in data.items():
        if not isinstance(keys, dict) or not keys:
            raise WitnessError(f"{path}: origin {origin!r}: needs at least one {{key id: PEM}}")
        origins[origin] = {}
        for kid, pem in keys.items():
            try:
                public = serialization.load_pem_public_key(str(pem).encode())
            except ValueError as error:
                raise WitnessError(f"{path}: {origin} key {kid}: not a PEM public key") from error
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise WitnessError(f"{path}: {origin} key {kid}: not an EC public key")
            origins[origin][kid] = public
    return origins


def origin_keys_document(origin: str, keys: dict[str, ec.EllipticCurvePublicKey]) -> str:
    """The pinned-keys JSON for one origin (what `securecore audit public-keys` prints)."""
    pems = {
        kid: key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        for kid, key in keys.items()
    }
    return json.dumps({origin: pems}, indent=2, sort_keys=True)


def cosignature_line(
    name: str, private: ed25519.Ed25519PrivateKey, checkpoint: Checkpoint, timestamp: int
) -> str:
    message = f"cosignature/v1\ntime {timestamp}\n{checkpoint.text()}".encode()
    blob = (
        cosigner_key_id(name, private.public_key())
        + timestamp.to_bytes(8, "big")
        + private.sign(message)
    )
    return f"{EM_DASH} {name} {base64.b64encode(blob).decode()}\n"


def verified_cosigners(
    note: str, witness_keys: dict[str, ed25519.Ed25519PublicKey]
) -> tuple[Checkpoint, list[str]]:
    """The checkpoint and the names of the pinned witnesses whose cosignature verifies."""
    checkpoint, signatures = parse_checkpoint(note)
    names = []
    for key_name, key_hash, blob in signatures:
        public = witness_keys.get(key_name)
        if public is None or key_hash != cosigner_key_id(key_name, public) or len(blob) != 72:
            continue
        timestamp = int.from_bytes(blob[:8], "big")
        message = f"cosignature/v1\ntime {timestamp}\n{checkpoint.text()}".encode()
        try:
            public.verify(blob[8:], message)
        except InvalidSignature:
            continue
        names.append(key_name)
    return checkpoint, names


def witnessed_checkpoint(
    note: str,
    origin_keys: dict[str, ec.EllipticCurvePublicKey],
    witness_keys: dict[str, ed25519.Ed25519PublicKey],
    origin: str | None = None,
) -> tuple[Checkpoint, list[str]]:
    """A checkpoint signed by the origin (pinned keys) AND cosigned by a pinned witness."""
    checkpoint = verify_checkpoint(note, origin_keys)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint of origin {checkpoint.origin!r}, not {origin!r}")
    _, names = verified_cosigners(note, witness_keys)
    if not names:
        raise CheckpointError("no cosignature by a pinned witness key")
    return checkpoint, names


def merge_signatures(note: str, lines: Iterable[str]) -> str:
    """NOTE with signature LINES added (each once)."""
    text = note if note.endswith("\n") else note + "\n"
    present = set(text.split("\n\n", 1)[-1].splitlines())
    added = [line.rstrip("\n") for line in lines if line.strip()]
    return text + "".join(f"{line}\n" for line in added if line not in present)


# --- the witness service ------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessSettings:
    name: str
    listen: str
    state_dir: Path
    origin_keys: Path
    tls_policy: Path
    trust_domain: str = "securecore"
    # Principal kinds (spiffe://DOMAIN/KIND/NAME) that may submit checkpoints.
    submitters: tuple[str, ...] = ("core",)


def load_settings(path: str | Path) -> WitnessSettings:
    """The witness's TOML file: [witness] name, listen, state_dir, origin_keys, tls_policy."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise WitnessError(f"{path}: cannot read it ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise WitnessError(f"{path}: not valid TOML ({error})") from error
    section = raw.get("witness")
    if not isinstance(section, dict):
        raise WitnessError(f"{path}: a [witness] section is required")
    required = ("name", "state_dir", "origin_keys", "tls_policy")
    problems = [f"[witness] {key} is required" for key in required if not section.get(key)]
    unknown = set(section) - {
        "name",
        "listen",
        "state_dir",
        "origin_keys",
        "tls_policy",
        "trust_domain",
        "submitters",
    }
    problems += [f"[witness] {key}: unknown key" for key in sorted(unknown)]
    name = str(section.get("name", ""))
    if name and any(c.isspace() or c == "+" for c in name):
        problems.append(f"[witness] name = {name!r}: no spaces or '+'")
    if problems:
        raise WitnessError(f"{path}: " + "; ".join(problems))
    base = path.resolve().parent
    return WitnessSettings(
        name=name,
        listen=str(section.get("listen", "0.0.0.0:8444")),
        state_dir=base / section["state_dir"],
        origin_keys=base / section["origin_keys"],
        tls_policy=base / section["tls_policy"],
        trust_domain=str(section.get("trust_domain", "securecore")),
        submitters=tuple(section.get("submitters", ("core",))),
    )


def check_state_dir(directory: Path) -> None:
    """The state must be this process's alone: no other user may write (or read) it."""
    try:
        info = directory.stat()
    except OSError as error:
        raise WitnessError(f"{directory}: the witness state directory: {error.strerror}") from error
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise WitnessError(
            f"{directory}: the witness state directory must be owned by the witness user and "
            f"mode 0700 (it is uid {info.st_uid}, mode {oct(info.st_mode & 0o777)})"
        )


def ensure_key(settings: WitnessSettings) -> ed25519.Ed25519PrivateKey:
    """The witness's signing key, made on this host the first time (0600, never exported)."""
    path = settings.state_dir / KEY_FILE
    if not path.exists():
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise WitnessError(f"{path}: not an Ed25519 private key")
    return loaded


@dataclass
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


def atomic_write(path: Path, text: str) -> None:
    """PATH holds TEXT or what it held before, whatever crashes (file and directory fsynced)."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Witness:
    """The witness's state: per origin the latest checkpoint accepted (cosigned note)."""

    def __init__(
        self,
        name: str,
        private: ed25519.Ed25519PrivateKey,
        state_dir: Path,
        origin_keys: dict[str, dict[str, ec.EllipticCurvePublicKey]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name, self.private, self.state_dir = name, private, Path(state_dir)
        self.origin_keys, self.clock = origin_keys, clock
        self._lock = threading.Lock()
        (self.state_dir / "origins").mkdir(mode=0o700, exist_ok=True)

    def _path(self, origin: str) -> Path:
        return self.state_dir / "origins" / hashlib.sha256(origin.encode()).hexdigest()

    def latest(self, origin: str) -> str | None:
        path = self._path(origin)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def _held(self, origin: str) -> Checkpoint | None:
        note = self.latest(origin)
        if note is None:
            return None
        # Re-checked on every use: a state file that does not verify stops the witness
        # from accepting anything for this origin rather than from a forged start.
        return verify_checkpoint(note, self.origin_keys[origin])

    def add_checkpoint(self, body: str) -> Answer:
        try:
            old, proof, note = parse_add_checkpoint(body)
            checkpoint = parse_checkpoint(note)[0]
        except (WitnessError, CheckpointError) as error:
            return Answer(400, f"{error}\n")
        keys = self.origin_keys.get(checkpoint.origin)
        if keys is None:
            return Answer(404, f"unknown origin {checkpoint.origin!r}\n")
        try:
            verify_checkpoint(note, keys)
        except CheckpointError as error:
            return Answer(403, f"the origin's signature does not verify: {error}\n")
        if old > checkpoint.size:
            return Answer(400, f"old size {old} is beyond the checkpoint's {checkpoint.size}\n")
        with self._lock:
            try:
                held = self._held(checkpoint.origin)
            except CheckpointError as error:
                return Answer(500, f"the witness's own state does not verify: {error}\n")
            held_size = held.size if held else 0
            if old != held_size:
                return Answer(409, f"{held_size}\n", SIZE_TYPE)
            held_root = held.root if held else merkle.EMPTY_ROOT
            if old == checkpoint.size:
                if held_root != checkpoint.root:  # a fork at the size held
                    return Answer(409, f"{held_size}\n", SIZE_TYPE)
            elif not merkle.verify_consistency(
                old, checkpoint.size, held_root, checkpoint.root, proof
            ):
                return Answer(422, f"the consistency proof from {old} does not verify\n")
            line = cosignature_line(self.name, self.private, checkpoint, int(self.clock()))
            stored = note if note.endswith("\n") else note + "\n"
            stored = merge_signatures(_origin_only(stored, keys), [line])
            atomic_write(self._path(checkpoint.origin), stored)
        return Answer(200, line)


def _origin_only(note: str, keys: dict[str, ec.EllipticCurvePublicKey]) -> str:
    """NOTE without other cosigners' lines: the witness holds what it checked and signed."""
    text, _, signatures = note.rpartition("\n\n")
    wanted = {f"/{kid}" for kid in keys}
    kept = [
        line
        for line in signatures.splitlines()
        if any(line.split(" ")[1].endswith(suffix) for suffix in wanted)
    ]
    return f"{text}\n\n" + "".join(f"{line}\n" for line in kept)


def parse_add_checkpoint(body: str) -> tuple[int, list[bytes], str]:
    head, separator, note = body.partition("\n\n")
    if not separator:
        raise WitnessError("an add-checkpoint body is 'old N', proof lines, a blank line, a note")
    lines = head.split("\n")
    first = lines[0].split(" ")
    if len(first) != 2 or first[0] != "old" or not first[1].isdigit():
        raise WitnessError(f"the first line must be 'old SIZE', not {lines[0][:40]!r}")
    if len(lines) - 1 > MAX_PROOF:
        raise WitnessError(f"a consistency proof has at most {MAX_PROOF} hashes")
    proof = []
    for line in lines[1:]:
        try:
            proof.append(base64.b64decode(line, validate=True))
        except ValueError as error:
            raise WitnessError(f"proof line {line[:60]!r} is not base64") from error
    return int(first[1]), proof, note


def add_checkpoint_body(old: int, proof: list[bytes], note: str) -> str:
    lines = [f"old {old}", *(base64.b64encode(p).decode() for p in proof)]
    return "\n".join(lines) + "\n\n" + note


def witness_app(witness: Witness, settings: WitnessSettings) -> Starlette:
    """Starlette routes of the witness, behind mutual TLS (the principal from the cert)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from securecore.server.identity import IdentityError, principal_from_scope

    def principal_kind(request: Request) -> str | None:
        try:
            return principal_from_scope(request.scope, settings.trust_domain).kind
        except IdentityError:
            return None

    def text(answer: Answer) -> PlainTextResponse:
        return PlainTextResponse(answer.body, answer.status, media_type=answer.content_type)

    async def add(request: Request) -> PlainTextResponse:
        if principal_kind(request) not in settings.submitters:
            return text(Answer(403, "only core hosts submit checkpoints\n"))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return text(Answer(413, f"a body of at most {MAX_BODY} bytes\n"))
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError:
            return text(Answer(400, "the body is not UTF-8\n"))
        import anyio.to_thread

        return text(await anyio.to_thread.run_sync(witness.add_checkpoint, decoded))

    async def latest(request: Request) -> PlainTextResponse:
        if principal_kind(request) is None:
            return text(Answer(403, "a site certificate is required\n"))
        origin = request.query_params.get("origin", "")
        note = witness.latest(origin)
        if note is None:
            return text(Answer(404, f"no checkpoint of origin {origin!r}\n"))
        return text(Answer(200, note))

    return Starlette(
        routes=[
            Route("/add-checkpoint", add, methods=["POST"]),
            Route("/checkpoint", latest, methods=["GET"]),
        ]
    )


def serve(settings: WitnessSettings) -> None:
    import uvicorn

    from securecore.server.logs import log_config
    from securecore.server.tls_scope import TLSScopeHttpToolsProtocol
    from securecore.tls import ReloadableServerContext

    check_state_dir(settings.state_dir)
    private = ensure_key(settings)
    witness = Witness(
        settings.name, private, settings.state_dir, load_origin_keys(settings.origin_keys)
    )
    tls = ReloadableServerContext(settings.tls_policy)
    host, _, port = settings.listen.rpartition(":")
    uvicorn.Server(
        uvicorn.Config(
            witness_app(witness, settings),
            host=host.strip("[]"),
            port=int(port),
            http=TLSScopeHttpToolsProtocol,
            ssl_context_factory=lambda _config, _default: tls.context,
            log_config=log_config(),
            server_header=False,
            proxy_headers=False,
        )
    ).run()


# --- the client side: asking and pushing ----------------------------------------------------


class WitnessClient:
    """One witness, over mutual TLS with the core host's certificate."""

    def __init__(self, name: str, url: str, context: ssl.SSLContext, timeout: float = 10):
        self.name, self.url, self.context, self.timeout = name, url, context, timeout
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise WitnessError(f"witness {name}: {url!r} is not an https:// URL")
        self._host, self._port = parts.hostname, parts.port or 443

    def _request(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        connection = http.client.HTTPSConnection(
            self._host, self._port, context=self.context, timeout=self.timeout
        )
        try:
            headers = {"Content-Type": "text/plain; charset=utf-8"} if body is not None else {}
            connection.request(method, path, body=body.encode() if body else None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(MAX_BODY + 1).decode("utf-8", "replace")
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            raise WitnessError(f"witness {self.name} ({self.url}): {error}") from error
        finally:
            connection.close()

    def latest(self, origin: str) -> str | None:
        status, body = self._request("GET", f"/checkpoint?origin={quote(origin, safe='')}")
        if status == 404:
            return None
        if status != 200:
            raise WitnessError(f"witness {self.name} answered {status}: {body.strip()[:200]}")
        return body

    def add(self, old: int, proof: list[bytes], note: str) -> tuple[int, str]:
        return self._request("POST", "/add-checkpoint", add_checkpoint_body(old, proof, note))


def read_leaves(path: Path, size: int) -> list[bytes]:
    with path.open("rb") as handle:
        data = handle.read(size * 32)
    if len(data) != size * 32:
        raise WitnessError(f"{path}: holds fewer than {size} leaf hashes")
    return [data[i : i + 32] for i in range(0, len(data), 32)]


@dataclass
class WitnessStatus:
    url: str
    size: int | None = None  # the size this witness cosigned last
    cosigned_at: float | None = None
    error: str = ""
    attempts: int = 0
    conflict: bool = False  # the witness holds something this log cannot extend

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


COSIGNED_DIR = "cosigned"
STATUS_FILE = "witness-status.json"


def save_cosigned(directory: Path, size: int, note: str) -> str:
    """Keep NOTE (origin signature + cosignatures) as cosigned/<size>, merged with what is
    there; returns the note as now kept."""
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{size:012d}"
    if path.exists():
        known = path.read_text(encoding="utf-8")
        note = merge_signatures(known, note.rpartition("\n\n")[2].splitlines())
    atomic_write(path, note)
    return note


def stored_cosigned(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return [p.read_text(encoding="utf-8") for p in sorted(directory.glob("[0-9]*"))]


@dataclass
class _Pending:
    size: int = 0
    note: str = ""
    wake: threading.Condition = field(default_factory=threading.Condition)


class WitnessPusher:
    """Sends each new checkpoint to every witness from a thread of its own.

    `submit` only records the newest checkpoint and wakes the thread: the audit
    writer (and so no request) ever waits for a witness. A witness that fails
    is retried with exponential back-off (at most RETRY_MAX s apart, well within
    the default witness_grace_seconds of 60); only the newest checkpoint is
    pushed, so the queue is bounded at one note.

    Each cosigned note is kept in witness_dir/cosigned and handed, merged with the
    cosignatures kept before, to ON_COSIGNED (the audit log's `record_cosigned`,
    which only queues it for the audit writer: this thread never uses the store).
    The database then carries the anchors into its backups.
    """

    RETRY_MIN, RETRY_MAX = 1.0, 30.0

    def __init__(
        self,
        clients: list[WitnessClient],
        witness_keys: dict[str, ed25519.Ed25519PublicKey],
        origin_keys: Callable[[], dict[str, ec.EllipticCurvePublicKey]],
        origin: str,
        witness_dir: Path,
        on_cosigned: Callable[[int, str], None] | None = None,
    ) -> None:
        # ORIGIN_KEYS is asked each time: a key rotated in while the service
        # runs signs the next checkpoint, and the witnesses then hold one signed
        # by a version this process did not know at start.
        self.clients, self.witness_keys = clients, witness_keys
        self.origin_keys, self.origin = origin_keys, origin
        self.on_cosigned = on_cosigned
        self.leaves_path = Path(witness_dir) / "leaves"
        self.cosigned_dir = Path(witness_dir) / COSIGNED_DIR
        self.status_path = Path(witness_dir) / STATUS_FILE
        self.status = {c.name: WitnessStatus(c.url) for c in clients}
        self._pending = _Pending()
        self._held: dict[str, int | None] = {c.name: None for c in clients}
        self._retry_at = dict.fromkeys(self._held, 0.0)
        self._delay = dict.fromkeys(self._held, self.RETRY_MIN)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="witness-pusher", daemon=True)
        self._thread.start()

    def submit(self, size: int, note: str) -> None:
        with self._pending.wake:
            # A witness in back-off keeps its back-off: a down witness is asked at
            # most every RETRY_MAX s, whatever the checkpoint rate.
            if size >= self._pending.size:
                self._pending.size, self._pending.note = size, note
            self._pending.wake.notify()

    def _due(self) -> list[WitnessClient]:
        now = time.monotonic()
        return [
            c
            for c in self.clients
            if (self.status[c.name].size or 0) < self._pending.size
            and self._retry_at[c.name] <= now
        ]

    def _run(self) -> None:
        while True:
            with self._pending.wake:
                while not self._stopping and (not self._pending.size or not self._due()):
                    waits = [
                        t - time.monotonic()
                        for n, t in self._retry_at.items()
                        if (self.status[n].size or 0) < self._pending.size
                    ]
                    self._pending.wake.wait(max(0.05, min(waits)) if waits else None)
                if self._stopping:
                    return
                size, note, due = self._pending.size, self._pending.note, self._due()
            for client in due:
                self._push(client, size, note)
            self._write_status()

    def _push(self, client: WitnessClient, size: int, note: str) -> None:
        status = self.status[client.name]
        status.attempts += 1
        try:
            for _ in range(3):  # a 409 teaches the size held; then try once more
                old = self._held[client.name]
                if old is None:
                    old = self._learn(client)
                if old > size:
                    raise WitnessError(
                        f"the witness holds a checkpoint of {old} records, this log signed "
                        f"{size}: the log lost records (restored or rewritten?)"
                    )
                proof = (
                    merkle.consistency_proof(read_leaves(self.leaves_path, size), old)
                    if 0 < old < size
                    else []
                )
                answer, body = client.add(old, proof, note)
                if answer == 409:
                    self._held[client.name] = int(body.strip() or 0)
                    if self._held[client.name] == old:
                        raise WitnessError(f"refused a fork at size {old}")
                    continue
                if answer != 200:
                    raise WitnessError(f"answered {answer}: {body.strip()[:200]}")
                cosigned = merge_signatures(note, body.splitlines())
                if client.name not in verified_cosigners(cosigned, self.witness_keys)[1]:
                    raise WitnessError("its cosignature does not verify with its pinned key")
                kept = save_cosigned(self.cosigned_dir, size, cosigned)
                if self.on_cosigned is not None:
                    self.on_cosigned(size, kept)
                self._held[client.name] = size
                status.size, status.cosigned_at = size, time.time()
                status.error, status.conflict = "", False
                self._delay[client.name] = self.RETRY_MIN
                return
            raise WitnessError("kept answering 409")
        except (WitnessError, CheckpointError, OSError, ValueError) as error:
            status.error = str(error)
            status.conflict = "lost records" in str(error) or "fork" in str(error)
            self._held[client.name] = None  # ask again next time
            delay = self._delay[client.name]
            self._retry_at[client.name] = time.monotonic() + delay
            self._delay[client.name] = min(delay * 2, self.RETRY_MAX)

    def _learn(self, client: WitnessClient) -> int:
        note = client.latest(self.origin)
        if note is None:
            return 0
        checkpoint, _ = witnessed_checkpoint(
            note, self.origin_keys(), self.witness_keys, self.origin
        )
        return checkpoint.size

    def _write_status(self) -> None:
        document = {name: s.as_dict() for name, s in self.status.items()}
        with contextlib.suppress(OSError):
            atomic_write(self.status_path, json.dumps(document, sort_keys=True))

    def close(self, timeout: float = 10.0) -> None:
        """Give the newest checkpoint up to TIMEOUT s to reach the witnesses, then stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            (s.size or 0) < self._pending.size and not s.conflict for s in self.status.values()
        ):
            time.sleep(0.1)
        with self._pending.wake:
            self._stopping = True
            self._pending.wake.notify()
        self._thread.join(timeout=max(1.0, deadline - time.monotonic()))


def newest_witnessed(
    notes: Iterable[str],
    origin_keys: dict[str, ec.EllipticCurvePublicKey],
    witness_keys: dict[str, ed25519.Ed25519PublicKey],
    origin: str,
) -> list[tuple[Checkpoint, list[str]]]:
    """Every note that is origin-signed and witness-cosigned, by size (invalid ones skipped)."""
    found = []
    for note in notes:
        with contextlib.suppress(CheckpointError, ValueError):
            found.append(witnessed_checkpoint(note, origin_keys, witness_keys, origin))
    return sorted(found, key=lambda item: item[0].size)
