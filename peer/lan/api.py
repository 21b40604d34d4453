"""The local API of a running daemon: ``DIR/api.sock``, one JSON object per line.

While ``peer run`` holds a store, it is the only process that may write it; a process
on this machine may record and edit through this socket instead (``tools/bench_lan``
does).  Front ends and the CLI use the HTTP API (``peer.http``).  The socket is created
owner-only, like the key.

Requests and answers::

    {"op": "record", "kind": "sale", "body": {...}, "client_id": "..."?}
        -> {"ok": true, "entry": {...}}
    {"op": "put", "collection": "products", "id": "p1", "body": {...}}
        -> {"ok": true, "record": {...}}
    -> {"ok": false, "error": "...", "type": "InvalidInput"}   on any refusal
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from tillsync.peer.errors import InvalidInput, StoreError, TillsyncError
from tillsync.peer.store import Till
from tillsync.schemas import SchemaViolation

SOCKET = "api.sock"
MAX_REQUEST = 4 * 1024 * 1024


async def serve(path: Path, till: Till) -> asyncio.Server:
    sock = path / SOCKET
    sock.unlink(missing_ok=True)  # a daemon that died leaves its socket behind
    old = os.umask(0o077)
    try:
        return await asyncio.start_unix_server(lambda r, w: _client(till, r, w), str(sock),
                                               limit=MAX_REQUEST)
    finally:
        os.umask(old)


async def _client(till: Till, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            answer = await _answer(till, line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, ValueError):
        pass  # the caller went away, or sent a line over the limit
    finally:
        writer.close()


async def _answer(till: Till, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise InvalidInput("a request is a JSON object")
        op = request.get("op")
        if op == "record":
            entry = await till.record(request["kind"], request["body"],
                                      client_id=request.get("client_id"))
            return {"ok": True, "entry": entry.to_json()}
        if op == "put":
            record = await till.put(request["collection"], request["id"], request["body"])
            return {"ok": True, "record": record}
        raise InvalidInput(f"unknown op {op!r} (record, put)")
    except (TillsyncError, SchemaViolation) as exc:
        return {"ok": False, "error": str(exc), "type": type(exc).__name__}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"bad request: {exc}", "type": "InvalidInput"}


async def call(path: Path, request: dict[str, Any], within: float = 30.0) -> dict[str, Any]:
    """Send one request to the daemon holding the store at ``path``."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(path / SOCKET),
                                                                limit=MAX_REQUEST)
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise StoreError(f"the daemon holding {path} does not answer on {SOCKET}: {exc}") \
            from None
    answer: dict[str, Any] = json.loads(line)
    return answer


def available(path: Path) -> bool:
    return (path / SOCKET).exists()
