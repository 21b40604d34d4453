"""The baseline for ``tools.bench_relay``: a sales API as a typical REST back end does it.

    python -m tillsync.tools.naive_rest --db PATH [--host 127.0.0.1] [--port 0]

prints ``naive-rest listening on http://HOST:PORT`` once it accepts connections, then
serves until interrupted.  One request and one transaction per sale:

``POST /sales`` with an ``Idempotency-Key`` header and a JSON body
``{"store", "device_id", "ticket", "client_created_at", "sale": {...}}``:

1. parse the JSON;
2. ``BEGIN IMMEDIATE``; look the idempotency key up (a replay answers the stored number);
3. bump the store's invoice counter and read it back;
4. INSERT the sale (its JSON, as received) with that number;
5. ``COMMIT`` (SQLite, WAL, ``synchronous=FULL``: one fsync per sale) and answer
   ``{"series", "invoice_no"}``.

No schema validation, signatures, hash chains, totals, stock or receipts: it does less
than the relay per sale, on purpose, so the comparison flatters the baseline.  HTTP/1.1
with keep-alive on asyncio streams, and the standard ``sqlite3`` module called directly in
the handler (SQLite has one writer at a time anyway, so a thread pool would only add
hand-offs).  No dependency beyond the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SERIES = "INV"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sales (
    id INTEGER PRIMARY KEY, store TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    series TEXT NOT NULL, invoice_no INTEGER NOT NULL, device_id TEXT NOT NULL,
    ticket TEXT, client_created_at TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (store, idempotency_key),
    UNIQUE (store, series, invoice_no)
);
CREATE TABLE IF NOT EXISTS counters (
    store TEXT NOT NULL, series TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (store, series)
);
"""


class HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SalesApi:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def post_sale(self, key: str | None, raw: bytes) -> dict[str, Any]:
        if not key:
            raise HttpError("400 Bad Request", "an Idempotency-Key header is required")
        try:
            doc = json.loads(raw)
            store, device = str(doc["store"]), str(doc["device_id"])
            sale = doc["sale"]
            ticket, created = doc.get("ticket"), str(doc["client_created_at"])
        except (ValueError, KeyError, TypeError):
            raise HttpError("400 Bad Request", "the body is not a sale document") from None
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT series, invoice_no FROM sales WHERE store = ? AND "
                             "idempotency_key = ?", (store, key)).fetchone()
            if row is not None:
                db.execute("COMMIT")
                return {"series": row[0], "invoice_no": row[1], "replayed": True}
            db.execute("INSERT INTO counters (store, series, value) VALUES (?, ?, 1) "
                       "ON CONFLICT (store, series) DO UPDATE SET value = value + 1",
                       (store, SERIES))
            number = db.execute("SELECT value FROM counters WHERE store = ? AND series = ?",
                                (store, SERIES)).fetchone()[0]
            db.execute("INSERT INTO sales (store, idempotency_key, series, invoice_no, "
                       "device_id, ticket, client_created_at, body, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (store, key, SERIES, number, device, ticket, created,
                        json.dumps(sale, separators=(",", ":")),
                        datetime.now(UTC).isoformat(timespec="milliseconds")))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"series": SERIES, "invoice_no": number}


def _response(status: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n").encode() + data


async def handle(api: SalesApi, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            try:
                if method == "POST" and path == "/sales":
                    out = _response("200 OK", api.post_sale(headers.get("idempotency-key"),
                                                            body))
                elif method == "GET" and path == "/health":
                    out = _response("200 OK", {"ok": True})
                else:
                    raise HttpError("404 Not Found", f"no route {method} {path}")
            except HttpError as exc:
                out = _response(exc.status, {"error": exc.message})
            writer.write(out)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
            ValueError):
        pass
    finally:
        writer.close()


async def serve(db: Path, host: str, port: int) -> None:
    api = SalesApi(db)
    server = await asyncio.start_server(lambda r, w: handle(api, r, w), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        bound = server.sockets[0].getsockname()[1]
        print(f"naive-rest listening on http://{host}:{bound}", flush=True)
        await stop.wait()
    api.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tillsync.tools.naive_rest",
                                description="naive REST sales API (benchmark baseline)")
    p.add_argument("--db", required=True, type=Path, help="SQLite file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = p.parse_args(argv)
    asyncio.run(serve(args.db, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
