"""Master data, the log and the views derived from it."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from tillsync.peer.http import delta
from tillsync.peer.http.context import context
from tillsync.peer.http.errors import ApiError, json_body
from tillsync.peer.http.invoice import PENDING_NOTE
from tillsync.peer.master.document import COLLECTIONS

routes = web.RouteTableDef()


def _collection(request: web.Request) -> str:
    name = request.match_info["collection"]
    if name not in COLLECTIONS:
        raise ApiError(404, "unknown_collection", f"no collection {name!r}; known: "
                       f"{', '.join(COLLECTIONS)}",
                       [{"path": "collection", "message": "unknown collection"}])
    return name


@routes.get("/api/master/{collection}")
async def master_read(request: web.Request) -> web.Response:
    ctx = context(request)
    return web.json_response(delta.read(ctx.till, _collection(request),
                                        request.query.get("since"), ctx.events.history))


@routes.get("/api/master/{collection}/{id}")
async def master_one(request: web.Request) -> web.Response:
    collection, record_id = _collection(request), request.match_info["id"]
    record = context(request).till.get(collection, record_id)
    if record is None:
        raise ApiError(404, "not_found", f"no {collection} record {record_id!r}")
    return web.json_response({"id": record_id, "record": record})


@routes.put("/api/master/{collection}/{id}")
async def master_put(request: web.Request) -> web.Response:
    collection, record_id = _collection(request), request.match_info["id"]
    fields = await json_body(request)
    record = await context(request).till.put(collection, record_id, fields)
    return web.json_response({"id": record_id, "record": record})


@routes.post("/api/entries")
async def record(request: web.Request) -> web.Response:
    """Record one entry; a retry with the same ``client_id`` returns the stored one."""
    ctx = context(request)
    data = await json_body(request)
    kind, body, client_id = data.get("kind"), data.get("body"), data.get("client_id")
    problems = []
    if not isinstance(kind, str):
        problems.append({"path": "kind", "message": "required, a string"})
    if not isinstance(body, dict):
        problems.append({"path": "body", "message": "required, a JSON object"})
    if client_id is not None:
        try:
            client_id = str(uuid.UUID(client_id))
        except (TypeError, ValueError, AttributeError):
            problems.append({"path": "client_id", "message": "not a UUID"})
    if problems:
        raise ApiError(422, "invalid_request", "the request is not a valid entry; nothing "
                       "was stored", problems)
    assert isinstance(kind, str) and isinstance(body, dict)
    replay = False
    if client_id is None:
        entry = await ctx.till.record(kind, body)
    else:
        # One request per key at a time, so "replay" is exact even for retries that race.
        async with ctx.client_ids.hold(client_id):
            before = await ctx.till.entry(client_id)
            entry = await ctx.till.record(kind, body, client_id=client_id)
            replay = before is not None
    answer: dict[str, Any] = {"entry": entry.to_json(), "replay": replay}
    if entry.ticket is not None:
        answer.update(ticket=entry.ticket, provisional=True, invoice=None,
                      note=PENDING_NOTE)
    return web.json_response(answer, status=200 if replay else 201)


@routes.get("/api/entries/{client_id}")
async def entry(request: web.Request) -> web.Response:
    client_id = request.match_info["client_id"]
    found = await context(request).till.entry(client_id)
    if found is None:
        raise ApiError(404, "not_found", f"no entry with client_id {client_id!r} here")
    return web.json_response({"entry": found.to_json()})


@routes.get("/api/stock")
async def stock(request: web.Request) -> web.Response:
    return web.json_response({"stock": await context(request).till.stock()})


@routes.get("/api/held-sales")
async def held(request: web.Request) -> web.Response:
    return web.json_response({"held_sales": await context(request).till.held_sales()})


@routes.get("/api/shifts")
async def shifts(request: web.Request) -> web.Response:
    """Shifts with their expected cash, who opened each, and whether this till did: a
    till records only in a shift it opened itself, and it holds its LAN peers' too."""
    till = context(request).till
    rows = await till.shifts()
    if request.query.get("open") in ("1", "true"):
        rows = [s for s in rows if s["open"]]
    for row in rows:
        opened = await till.entry(row["shift_client_id"])
        row["device_id"] = opened.device_id if opened else None
        row["mine"] = opened is not None and opened.device_id == till.device_id
    return web.json_response({"shifts": rows})


@routes.get("/api/balances")
async def balances(request: web.Request) -> web.Response:
    return web.json_response({"balances": await context(request).till.balances()})


@routes.get("/api/balances/{customer_id}")
async def balance(request: web.Request) -> web.Response:
    till, customer = context(request).till, request.match_info["customer_id"]
    if not till.master.has("customers", customer):
        raise ApiError(404, "not_found", f"no customer {customer!r}")
    return web.json_response({"customer_id": customer, "balance": await till.balance(customer)})
