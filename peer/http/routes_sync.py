"""Sync status, manual controls, and tickets with their final invoices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from tillsync.peer.http.context import context
from tillsync.peer.http.errors import ApiError
from tillsync.peer.http.invoice import invoice, receipt_json, render_text, ticket_row
from tillsync.peer.log import Entry
from tillsync.peer.store import Till

routes = web.RouteTableDef()
HISTORY_LIMIT = 100


@routes.get("/api/sync")
async def sync_status(request: web.Request) -> web.Response:
    """Pending count, last contact and error, rejected and waiting entries, LAN peers."""
    ctx = context(request)
    till = ctx.till
    status = await till.status()
    waiting = [receipt_json(r) for r in await till.receipts("waiting")]
    daemon = ctx.daemon_status()
    return web.json_response({
        "pending": status["pending"], "relay": status["relay"],
        "last_contact": status["last_contact"], "last_error": status["last_error"],
        "receipts_position": status["receipts_position"],
        "rejected": status["rejected"], "waiting": waiting,
        "last_round": daemon.get("relay") or None,
        "peers": [{"device_id": p["device_id"], "name": p["name"], "address": p["address"],
                   "connected": p["connected"], "behind_entries": p["behind_entries"],
                   "behind_receipts": p["behind_receipts"], "last_error": p["last_error"]}
                  for p in daemon.get("peers", [])],
    })


@routes.post("/api/sync/push")
async def push(request: web.Request) -> web.Response:
    """A round with the relay now: entries up, receipts and document changes down."""
    return web.json_response(await context(request).sync_round(False))


@routes.post("/api/sync/pull")
async def pull(request: web.Request) -> web.Response:
    """The same round: a round always does both ways."""
    return web.json_response(await context(request).sync_round(False))


@routes.post("/api/sync/resync")
async def resync(request: web.Request) -> web.Response:
    """Ask the relay for its whole receipt stream again, verify it, lose nothing."""
    return web.json_response(await context(request).sync_round(True))


async def _sales(till: Till) -> list[Entry]:
    return [e for e in await till.entries("sale") if e.ticket]


async def _receipts(till: Till) -> dict[str, dict[str, Any]]:
    return {r["client_id"]: r for r in await till.receipts()}


async def _by_ticket(till: Till, ticket: str) -> Entry:
    for entry in await _sales(till):
        if entry.ticket == ticket:
            return entry
    raise ApiError(404, "not_found", f"no sale with ticket {ticket!r} on this till")


def _moment(request: web.Request, name: str) -> str | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} is not an ISO 8601 time",
                       [{"path": name, "message": "not an ISO 8601 time"}]) from None
    return text


@routes.get("/api/tickets")
async def tickets(request: web.Request) -> web.Response:
    """Ticket -> invoice history, newest first (``from``/``to``: client time, UTC)."""
    till = context(request).till
    start, end = _moment(request, "from"), _moment(request, "to")
    try:
        limit = int(request.query.get("limit", HISTORY_LIMIT))
    except ValueError:
        limit = -1
    if not 1 <= limit <= 10_000:
        raise ApiError(400, "bad_query", "limit is a whole number from 1 to 10000",
                       [{"path": "limit", "message": "out of range"}])
    receipts = await _receipts(till)
    rows = [e for e in await _sales(till)
            if (start is None or e.client_created_at >= start)
            and (end is None or e.client_created_at < end)]
    rows.sort(key=lambda e: (e.client_created_at, e.ticket or ""), reverse=True)
    return web.json_response({"tickets": [ticket_row(e, receipts.get(e.client_id))
                                          for e in rows[:limit]]})


@routes.get("/api/tickets/{ticket}")
async def ticket(request: web.Request) -> web.Response:
    till = context(request).till
    entry = await _by_ticket(till, request.match_info["ticket"])
    receipt = (await _receipts(till)).get(entry.client_id)
    return web.json_response({**ticket_row(entry, receipt), "receipt": receipt_json(receipt)})


async def _invoice(request: web.Request) -> dict[str, Any]:
    till = context(request).till
    entry = await _by_ticket(till, request.match_info["ticket"])
    return invoice(entry, (await _receipts(till)).get(entry.client_id), till)


@routes.get("/api/invoices/{ticket}")
async def invoice_json(request: web.Request) -> web.Response:
    doc = await _invoice(request)
    if request.query.get("format") == "text":
        return web.Response(text=render_text(doc), content_type="text/plain")
    if request.query.get("format", "json") != "json":
        raise ApiError(400, "bad_query", "format is json or text",
                       [{"path": "format", "message": "json or text"}])
    return web.json_response(doc)


@routes.get("/api/invoices/{ticket}/text")
async def invoice_text(request: web.Request) -> web.Response:
    return web.Response(text=render_text(await _invoice(request)), content_type="text/plain")
