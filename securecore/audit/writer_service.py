"""One audit log writer for several worker processes, over a Unix socket.

The audit log has one writer per host (one Merkle tree, group commit; in
cluster mode the hosts' writers share the database's sequence). When
`securecore serve` runs several workers, the supervisor keeps the AuditLog
and serves it here; each worker holds a RemoteAuditLog with the
same methods. A worker's append returns only once the writer has made the
record durable, exactly as in-process.

Wire format: frames of a 4-byte big-endian length and a JSON object.
Requests: {"op": "append", "record": [actor, action, target, outcome, details]},
{"op": "state"}, {"op": "checkpoint"}, {"op": "check"}; answers come in
request order on each connection: {"seq": N}, {"size": N, "uncheckpointed": N,
"latest_checkpoint": NOTE}, {"size": N}, {"ok": true}, or {"error": MESSAGE}.
A writer that stopped after an error answers every request with an error
(a worker's readiness asks "check"), and the supervisor ends the service.
The socket is created 0600 in the service's data directory: only the service
user reaches the writer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from securecore.audit.log import AuditError, AuditLog

LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 20  # a record with details far beyond any real one


def _frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return LENGTH.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if length > MAX_FRAME:
        raise AuditError(f"audit writer: a frame of {length} bytes is refused")
    return json.loads(await reader.readexactly(length))


def _recv_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(left)
        if not chunk:
            raise AuditError("the audit writer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class AuditWriterServer:
    """Serves LOG on a Unix socket from a thread of its own (in the supervisor)."""

    def __init__(self, log: AuditLog, path: str | Path) -> None:
        self.log, self.path = log, Path(path)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer-service", daemon=True)

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # left by a supervisor that was killed
        self._thread.start()
        self._ready.wait(10)
        if self._server is None:
            raise AuditError(f"{self.path}: the audit writer socket could not be opened")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_unix_server(self._serve, path=str(self.path))
            )
        finally:
            os.umask(old_umask)
            self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()

        async def answer_in_order() -> None:
            while (pending := await answers.get()) is not None:
                try:
                    reply = await pending
                except Exception as error:  # the worker is told; the writer goes on
                    reply = {"error": str(error)}
                writer.write(_frame(reply))
                await writer.drain()

        answering = asyncio.create_task(answer_in_order())
        try:
            while True:
                request = await _read_frame(reader)
                answers.put_nowait(asyncio.ensure_future(self._handle(request)))
        except (asyncio.IncompleteReadError, ConnectionError, AuditError, ValueError):
            pass  # the worker went away (or spoke nonsense): its connection ends
        finally:
            answers.put_nowait(None)
            with contextlib.suppress(ConnectionError):
                await answering
            writer.close()

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "append":
            actor, action, target, outcome, details = request["record"]
            return {"seq": await self.log.append_async(actor, action, target, outcome, details)}
        if op == "check":
            self.log.check()
            return {"ok": True}
        if op == "state":
            self.log.check()  # a stopped writer's size is no state to report
            return {
                "size": self.log.size,
                "uncheckpointed": self.log.uncheckpointed,
                "latest_checkpoint": self.log.latest_checkpoint(),
            }
        if op == "checkpoint":
            return {"size": await asyncio.to_thread(self.log.checkpoint_now)}
        raise AuditError(f"unknown audit writer operation {op!r}")

    @property
    def alive(self) -> bool:
        """Whether the thread that serves the workers is still running."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (workers first, then this, then the log's own close)."""
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.path.unlink(missing_ok=True)


class _LoopConnection:
    """One pipelined connection per event loop: answers arrive in request order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.broken: BaseException | None = None
        self.reading = asyncio.get_running_loop().create_task(self._read_answers())

    async def _read_answers(self) -> None:
        try:
            while True:
                reply = await _read_frame(self.reader)
                self.waiting.popleft().set_result(reply)
        except Exception as error:  # every waiter learns that the writer is gone
            self.broken = error
            while self.waiting:
                self.waiting.popleft().set_exception(
                    AuditError(f"lost the audit writer: {error!r}")
                )

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.broken is not None:
            raise AuditError(f"lost the audit writer: {self.broken!r}")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(_frame(message))
        return await future


class RemoteAuditLog:
    """The AuditLog interface of a worker, backed by the supervisor's writer."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}

    # --- from threads (blocking) ----------------------------------------------------

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(60)
            try:
                connection.connect(self.path)
            except OSError as error:
                raise AuditError(f"{self.path}: the audit writer is not there: {error}") from error
            self._local.connection = connection
        try:
            connection.sendall(_frame(message))
            (length,) = LENGTH.unpack(_recv_exactly(connection, LENGTH.size))
            reply = json.loads(_recv_exactly(connection, length))
        except (OSError, AuditError):
            self._local.connection = None
            connection.close()
            raise
        if "error" in reply:
            raise AuditError(reply["error"])
        return reply

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        details: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> int:
        record = [actor, action, target, outcome, details or {}]
        return self._ask({"op": "append", "record": record})["seq"]

    def checkpoint_now(self, timeout: float = 30.0) -> int:
        return self._ask({"op": "checkpoint"})["size"]

    def check(self) -> None:
        """Raise AuditError unless the supervisor's writer takes records (readiness)."""
        self._ask({"op": "check"})

    @property
    def size(self) -> int:
        return self._ask({"op": "state"})["size"]

    @property
    def uncheckpointed(self) -> int:
        return self._ask({"op": "state"})["uncheckpointed"]

    def latest_checkpoint(self) -> str | None:
        return self._ask({"op": "state"})["latest_checkpoint"]

    # --- from the event loop ----------------------------------------------------------

    async def append_async(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> int:
        connection = await self._loop_connection()
        record = [actor, action, target, outcome, details or {}]
        reply = await connection.ask({"op": "append", "record": record})
        if "error" in reply:
            raise AuditError(reply["error"])
        return reply["seq"]

    async def _loop_connection(self) -> _LoopConnection:
        loop = asyncio.get_running_loop()
        opening = self._loops.get(loop)
        if opening is None or (opening.done() and self._is_broken(opening)):
            opening = self._loops[loop] = loop.create_task(self._open())
        return await opening

    @staticmethod
    def _is_broken(opening: asyncio.Future) -> bool:
        return opening.exception() is not None or opening.result().broken is not None

    async def _open(self) -> _LoopConnection:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as error:
            raise AuditError(f"{self.path}: the audit writer is not there: {error}") from error
        return _LoopConnection(reader, writer)

    def close(self) -> None:
        """The worker's connections end; the log itself stays with the supervisor."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
