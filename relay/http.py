"""The relay's HTTP side: the reporting API, on the same port as the websockets.

    GET /api/v1/stores/STORE/reports/NAME?from=YYYY-MM-DD&to=...&period=...&by=...
    Authorization: Bearer TOKEN            (a token from `tillsync relay token`)

NAME is one of sales, invoices, shifts, stock, alerts, devices, refunds, expenses,
cash, product, mismatches, held, drafts, waiting, settings, credit (the same reports as
`tillsync report`, as JSON); ``invoices`` also takes ``ticket=`` (one ticket's invoice)
or ``limit=N`` (the N invoices of the range sold last, by sale time);
``sales?by=product`` takes ``product=ID`` and ``period=`` (then one row per period and
product); ``product`` (one product's analytics) needs ``product=ID``; ``settings`` is
the store's name and currency from its master data.
``GET /api/v1/stores/STORE/files/SHA256`` serves a file the store's tills sent
(``relay.files``), with its media type.  A token belongs to one store: it
reads that store and no other.  Errors are JSON ``{"error": message}`` with 400 (bad parameter), 401
(missing or wrong token, or a token of another store) or 404 (unknown path or report).
``GET /healthz``, ``/readyz`` and ``/metrics`` need no token (``relay.ops``).
``/automerge?token=TOKEN`` (the same tokens) is automerge-repo's websocket for the
store's master document (``relay.amrepo``); a missing or wrong token is refused here,
with 401, before the websocket handshake.
``GET /dashboard`` serves the dashboard, one self-contained page (no CDN) that reads
the store and token from its URL fragment (``/dashboard#store=S&token=T``: a fragment
never reaches the server or its logs) or typed in, and draws these reports
(``relay.dashboard``).

Any other path is left to the websocket handshake.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tillsync.peer.amrepo.protocol import PATH as AMREPO_PATH
from tillsync.peer.errors import InvalidInput
from tillsync.peer.files import HASH_RE
from tillsync.relay import credit, dashboard, ops, reports, reports_lists, reports_money
from tillsync.relay.files import store_files
from tillsync.relay.storage import RelayStorage

PREFIX = "/api/v1/stores/"


def new_token() -> tuple[str, bytes]:
    """A fresh API token and the hash the relay keeps of it."""
    token = "tsk_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def store_of(storage: RelayStorage, path: str, headers: Headers) -> str | None:
    """The store a request's token opens (``Authorization: Bearer TOKEN``, else the
    ``token`` query parameter), or None."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        token = parse_qs(urlsplit(path).query).get("token", [""])[-1]
    if not token.strip():
        return None
    rows = await storage.read("SELECT store FROM admin_tokens WHERE token_hash = ?",
                              (token_hash(token.strip()),))
    return str(rows[0][0]) if rows else None


async def _report(storage: RelayStorage, store: str, name: str,
                  query: dict[str, str]) -> Any:
    within = reports.Range.parse(query.get("from"), query.get("to"))
    if name == "sales":
        by = query.get("by", "period")
        if "product" in query and by != "product":
            raise InvalidInput("product= goes with by=product")
        if "period" in query and by not in ("period", "product"):
            raise InvalidInput("period= goes with by=period or by=product")
        if by == "product":
            return await reports.sales_by_product(storage, store, within, query.get("product"),
                                                  query.get("period"))
        if by == "till":
            return await reports.sales_by_till(storage, store, within)
        if by == "cashier":
            return await reports.sales_by_cashier(storage, store, within)
        if by != "period":
            raise InvalidInput(f"by={by!r}: one of period, product, till, cashier")
        return await reports.sales_by_period(storage, store, query.get("period", "day"),
                                             within)
    if name == "invoices":
        if "ticket" in query:
            return await reports.invoice_of_ticket(storage, store, query["ticket"])
        limit = query.get("limit")
        if limit is not None and not (limit.isascii() and limit.isdigit()):
            raise InvalidInput(f"limit={limit!r}: a number of invoices (those sold last)")
        return await reports.invoice_register(storage, store, within,
                                              None if limit is None else int(limit))
    period = query.get("period", "day")
    simple: dict[str, Callable[[], Awaitable[Any]]] = {
        "shifts": lambda: reports.shifts(storage, store, within),
        "stock": lambda: reports.stock(storage, store),
        "alerts": lambda: reports.alerts(storage, store, within),
        "devices": lambda: reports.devices(storage, store),
        "refunds": lambda: reports_money.refunds(storage, store, period, within),
        "expenses": lambda: reports_money.expenses(storage, store, period, within),
        "cash": lambda: reports_money.cash_movements(storage, store, period, within),
        "product": lambda: reports_money.product(storage, store, query.get("product"),
                                                 period, within),
        "settings": lambda: reports_money.settings(storage, store),
        "credit": lambda: credit.over_limit(storage, store),
    }
    if name in reports_lists.LISTS:
        return await reports_lists.listing(storage, store, name, within)
    return await simple[name]()


REPORTS = ("sales", "invoices", "shifts", "stock", "alerts", "devices", "refunds",
           "expenses", "cash", "product", "settings", "credit", *reports_lists.LISTS)


def _json(connection: ServerConnection, status: http.HTTPStatus, data: Any) -> Response:
    return _reply(connection, status, ops.JSON, json.dumps(data, sort_keys=True) + "\n")


def _reply(connection: ServerConnection, status: http.HTTPStatus, content_type: str,
           body: str) -> Response:
    response = connection.respond(status, body)
    del response.headers["Content-Type"]  # Headers is a multidict: replace, not add
    response.headers["Content-Type"] = content_type
    return response


def _read_file(data: Path, store: str, sha: str) -> tuple[str, bytes] | None:
    """A file's media type and bytes, or None (blocking: run in a thread)."""
    files = store_files(data, store)
    ref = files.ref(sha)
    if ref is None:
        return None
    try:
        return ref.media_type, files.path_of(sha).read_bytes()
    except FileNotFoundError:
        return None


async def _file(connection: ServerConnection, data: Path | None, store: str, sha: str
                ) -> Response:
    """A file, read in a thread: up to ``--max-file-mib`` from disk must not hold the
    event loop that serves every till's link."""
    if not HASH_RE.match(sha):
        return _json(connection, http.HTTPStatus.BAD_REQUEST,
                     {"error": f"{sha[:80]!r} is not a SHA-256 (64 lowercase hex digits)"})
    found = None if data is None else await asyncio.to_thread(_read_file, data, store, sha)
    if found is None:
        return _json(connection, http.HTTPStatus.NOT_FOUND,
                     {"error": f"store {store!r} has no file {sha} at the relay"})
    media_type, body = found
    headers = Headers([("Content-Type", media_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "private, max-age=31536000, immutable")])
    return Response(http.HTTPStatus.OK.value, "OK", headers, body)


def handler(storage: RelayStorage, files_data: Path | None = None
            ) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """websockets' ``process_request`` hook: answers the API's paths, lets every other
    request go on to the websocket handshake."""

    async def process_request(connection: ServerConnection, request: Request
                              ) -> Response | None:
        url = urlsplit(request.path)
        if url.path in ops.PATHS:  # health and metrics, for the operator's tools
            return _reply(connection, *await ops.answer(url.path, storage))
        if url.path in (dashboard.PATH, dashboard.PATH + "/"):
            return dashboard.response(connection)
        if url.path == AMREPO_PATH:
            if await store_of(storage, request.path, request.headers) is None:
                return _json(connection, http.HTTPStatus.UNAUTHORIZED,
                             {"error": f"connect to {AMREPO_PATH}?token=TOKEN with a token "
                                       "of the store (`tillsync relay token`)"})
            return None  # on to the handshake: relay.amrepo serves it
        if not url.path.startswith(PREFIX):
            return None
        parts = [unquote(p) for p in url.path[len(PREFIX):].split("/")]
        is_file = len(parts) == 3 and parts[1] == "files"
        if not is_file and (len(parts) != 3 or parts[1] != "reports"
                            or parts[2] not in REPORTS):
            return _json(connection, http.HTTPStatus.NOT_FOUND,
                         {"error": f"no such report: {url.path}; reports are "
                                   f"{PREFIX}STORE/reports/({'|'.join(REPORTS)})"})
        store, name = parts[0], parts[2]
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _json(connection, http.HTTPStatus.UNAUTHORIZED,
                         {"error": "missing token: send Authorization: Bearer TOKEN (from "
                                   "`tillsync relay token`)"})
        opens = await store_of(storage, "", request.headers)
        if opens is None or not hmac.compare_digest(opens, store):
            return _json(connection, http.HTTPStatus.UNAUTHORIZED,
                         {"error": f"this token does not open store {store!r}"})
        if is_file:
            return await _file(connection, files_data, store, parts[2])
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            data = await _report(storage, store, name, query)
        except InvalidInput as exc:
            return _json(connection, http.HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        if data is None:  # a ticket with no invoice
            return _json(connection, http.HTTPStatus.NOT_FOUND,
                         {"error": f"ticket {query.get('ticket')} has no invoice number"})
        return _json(connection, http.HTTPStatus.OK, data)

    return process_request
