"""The OpenAPI 3.1 document of the till's HTTP API, written as data.

Tests fetch it from a running daemon and check every live answer against the schema
declared here for its route and status, so it cannot drift from the code unnoticed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tillsync.peer.files import MEDIA_TYPES
from tillsync.peer.master.document import COLLECTIONS
from tillsync.schemas import ENTRY_KINDS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
NSTR = {"type": ["string", "null"]}
NINT = {"type": ["integer", "null"]}
OBJ: dict[str, Any] = {"type": "object"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_obj(
        ["code", "message", "details"], code=STR, message=STR,
        details={"type": "array", "items": _obj(["path", "message"], path=STR,
                                                 message=STR)})),
    "Record": {"type": "object", "description": "a master-data record; see "
               "schemas/master/<collection>.json"},
    "Delta": _obj(["records", "deleted_ids", "sync_cursor", "full"],
                  records={"type": "object", "additionalProperties": _ref("Record")},
                  deleted_ids={"type": "array", "items": STR},
                  sync_cursor=STR, full=BOOL),
    "OneRecord": _obj(["id", "record"], id=STR, record=_ref("Record")),
    "Deleted": _obj(["id", "deleted"], id=STR, deleted={"const": True}),
    "Entry": _obj(["client_id", "device_id", "seq", "prev", "kind", "client_created_at",
                   "body", "hash", "sig"],
                  client_id=STR, device_id=STR, seq=INT, prev=STR,
                  kind={"enum": list(ENTRY_KINDS)}, client_created_at=STR, body=OBJ,
                  hash=STR, sig=STR, ticket=STR),
    "NewEntry": _obj(["kind", "body"], kind={"enum": list(ENTRY_KINDS)}, body=OBJ,
                     client_id={"type": "string", "format": "uuid"}),
    "Recorded": _obj(["entry", "replay"], entry=_ref("Entry"), replay=BOOL, ticket=STR,
                     provisional=BOOL, invoice={"type": "null"}, note=STR),
    "OneEntry": _obj(["entry"], entry=_ref("Entry")),
    "FileRef": _obj(["sha256", "size", "media_type"],
                    sha256={"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    size={"type": "integer", "minimum": 1},
                    media_type={"enum": list(MEDIA_TYPES)}),
    "Uploaded": _obj(["file", "new"], file=_ref("FileRef"), new=BOOL),
    "Files": _obj(["files"], files={"type": "array", "items": {"allOf": [
        _ref("FileRef"), _obj(["at_relay"], at_relay=BOOL)]}}),
    "Stock": _obj(["stock"], stock={"type": "array", "items": _obj(
        ["product_id", "name", "sku", "volatile"], product_id=STR, name=NSTR, sku=NSTR,
        volatile=BOOL, qty=STR, reorder_level=STR, low=BOOL, suggested_price=INT)}),
    "AutomergeDocument": _obj(["document_id", "url", "path", "store_id"], document_id=STR,
                              url=STR, path=STR, store_id=STR),
    "HeldSales": _obj(["held_sales"], held_sales={"type": "array", "items": STR}),
    "Shifts": _obj(["shifts"], shifts={"type": "array", "items": _obj(
        ["shift_client_id", "open", "expected_cash", "device_id", "mine"],
        shift_client_id=STR, open=BOOL, expected_cash=INT, device_id=NSTR, mine=BOOL)}),
    "Balances": _obj(["balances"], balances={"type": "object",
                                             "additionalProperties": INT}),
    "Balance": _obj(["customer_id", "balance"], customer_id=STR, balance=INT),
    "SyncStatus": _obj(
        ["pending", "relay", "last_contact", "last_error", "receipts_position", "rejected",
         "waiting", "last_round", "peers"],
        pending=INT, relay=NSTR, last_contact=NSTR, last_error=NSTR,
        receipts_position=INT,
        rejected={"type": "array", "items": _obj(["client_id", "code", "message"],
                                                 client_id=STR, kind=NSTR, seq=NINT,
                                                 device_id=NSTR, code=STR, message=STR)},
        waiting={"type": "array", "items": _obj(["client_id", "status"], client_id=STR,
                                                status={"const": "waiting"})},
        last_round={"type": ["object", "null"]},
        peers={"type": "array", "items": _obj(
            ["device_id", "name", "address", "connected", "behind_entries",
             "behind_receipts", "last_error"], device_id=STR, name=STR, address=STR,
            connected=BOOL, behind_entries=INT, behind_receipts=INT, last_error=STR)}),
    "Round": _obj(["pushed", "receipts", "accepted", "rejected", "waiting", "doc_changes",
                   "pending", "errors", "full", "receipts_position_before",
                   "receipts_position", "verified", "lost"],
                  pushed=INT, receipts=INT, accepted=INT, rejected=INT, waiting=INT,
                  doc_changes=INT, pending=INT, errors={"type": "array", "items": STR},
                  full=BOOL, receipts_position_before=INT, receipts_position=INT,
                  verified=BOOL, lost={"type": "array", "items": STR}),
    "TicketRow": _obj(["ticket", "client_id", "device_id", "created_at", "total", "status",
                       "invoice"], ticket=STR, client_id=STR, device_id=STR,
                      created_at=STR, total=INT,
                      status={"enum": ["pending", "accepted", "waiting", "rejected"]},
                      invoice=NSTR),
    "Tickets": _obj(["tickets"], tickets={"type": "array", "items": _ref("TicketRow")}),
    "Ticket": {"allOf": [_ref("TicketRow"), _obj(["receipt"],
                                                 receipt={"type": ["object", "null"]})]},
    "Invoice": _obj(
        ["ticket", "client_id", "device_id", "till", "created_at", "status", "invoice",
         "official", "note", "header", "footer", "currency", "lines", "total", "payments",
         "customer_id"],
        ticket=STR, client_id=STR, device_id=STR, till=NSTR, created_at=STR,
        status=STR, invoice=NSTR, official=BOOL, note=NSTR,
        header=_obj(["store_name", "text"], store_name=STR, text=STR), footer=STR,
        currency=STR, total=INT, customer_id=NSTR,
        lines={"type": "array", "items": _obj(
            ["product_id", "name", "qty", "unit_price", "discount", "amount"],
            product_id=STR, name=STR, qty=STR, unit_price=INT, discount=INT, amount=INT)},
        payments={"type": "array", "items": _obj(["method", "amount"], method=STR,
                                                 amount=INT)}),
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error answers: 401 (no or a bad token) and 500 (an unexpected failure, logged;
    nothing the store refused is ever one) on every route, and ``statuses``."""
    return {str(s): _json("Error", "refused; nothing was stored")
            for s in sorted({401, 500, *statuses})}


BODY_ERRORS = (400, 413)  # a body that is not a JSON object; one over the size limit


def _param(name: str, where: str = "path", description: str = "",
           schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path",
            "description": description, "schema": schema or STR}


COLLECTION = _param("collection", schema={"enum": list(COLLECTIONS)})
TICKET = _param("ticket", description="provisional ticket, e.g. T1-000042")
BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}
TEXT = {"description": "the invoice for a receipt printer, fixed width",
        "content": {"text/plain": {"schema": STR}}}


def _get(summary: str, schema: str, *errors: int, params: list[Any] | None = None
         ) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": _json(schema, summary), **_errors(*errors)}}}


def _round(summary: str) -> dict[str, Any]:
    return {"post": {"summary": summary,
                     "responses": {"200": _json("Round", "the round's report"),
                                   **_errors(502)}}}


PATHS: dict[str, Any] = {
    "/api/master/{collection}": _get(
        "all records of a collection, or (since=CURSOR) those changed since, with the ids "
        "deleted since and the next cursor", "Delta", 400, 404, 410,
        params=[COLLECTION, _param("since", "query", "a sync_cursor from an earlier read")]),
    "/api/master/{collection}/{id}": {
        **_get("one record", "OneRecord", 404, params=[COLLECTION, _param("id")]),
        "put": {"summary": "create or update a record (fields merge; null removes one)",
                "parameters": [COLLECTION, _param("id")],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("Record")}}},
                "responses": {"200": _json("OneRecord", "the record as stored"),
                              **_errors(*BODY_ERRORS, 403, 404, 422)}},
        "delete": {"summary": "delete a record (a product: back-office or admin device "
                              "only); delta reads then list its id in deleted_ids",
                   "parameters": [COLLECTION, _param("id")],
                   "responses": {"200": _json("Deleted", "deleted"),
                                 **_errors(403, 404, 422)}}},
    "/api/entries": {"post": {
        "summary": "record an entry; a retry with the same client_id returns the stored "
                   "entry (replay: true), the same client_id with other content is 409",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("NewEntry")}}},
        "responses": {"201": _json("Recorded", "recorded"),
                      "200": _json("Recorded", "a replay: the entry already stored"),
                      **_errors(*BODY_ERRORS, 409, 422)}}},
    "/api/entries/{client_id}": _get("one entry", "OneEntry", 404,
                                     params=[_param("client_id")]),
    "/api/stock": _get("stock of tracked products, suggested price of volatile ones",
                       "Stock"),
    "/api/held-sales": _get("held sales not yet resumed", "HeldSales"),
    "/api/shifts": _get("shifts with expected cash", "Shifts", params=[
        _param("open", "query", "true: open shifts only")]),
    "/api/balances": _get("what each customer owes", "Balances"),
    "/api/balances/{customer_id}": _get("what one customer owes", "Balance", 404,
                                        params=[_param("customer_id")]),
    "/api/files": {
        "post": {"summary": "upload a file: the raw bytes as the body, Content-Type its "
                            "media type (or application/octet-stream: the bytes say)",
                 "requestBody": {"required": True, "content": {
                     media: {"schema": BINARY}
                     for media in (*MEDIA_TYPES, "application/octet-stream")}},
                 "responses": {"201": _json("Uploaded", "stored; put `file` in an entry "
                                            "or record"),
                               "200": _json("Uploaded", "the till held it already"),
                               **_errors(413, 415, 422)}},
        **_get("every file the till holds, and whether the relay has confirmed it",
               "Files")},
    "/api/files/{sha256}": {"get": {
        "summary": "one file, with its media type",
        "parameters": [_param("sha256", schema={"type": "string"})],
        "responses": {"200": {"description": "the file", "content": {
            media: {"schema": BINARY} for media in MEDIA_TYPES}}, **_errors(400, 404)}}},
    "/api/sync": _get("sync status: pending, last contact and error, rejected and waiting "
                      "entries, LAN peers and how far behind each is", "SyncStatus"),
    "/api/sync/push": _round("push now (a round with the relay)"),
    "/api/sync/pull": _round("pull now (a round with the relay)"),
    "/api/sync/resync": _round("full resync: the relay's whole receipt stream again, "
                               "verified; nothing held is lost"),
    "/api/tickets": _get("ticket -> invoice history, newest first", "Tickets", 400, params=[
        _param("from", "query", "ISO time, inclusive"),
        _param("to", "query", "ISO time, exclusive"),
        _param("limit", "query", "at most this many (default 100)", INT)]),
    "/api/tickets/{ticket}": _get("one ticket and its receipt", "Ticket", 404,
                                  params=[TICKET]),
    "/api/invoices/{ticket}": {"get": {
        "summary": "the printable final invoice (format=text: for receipt printers)",
        "parameters": [TICKET, _param("format", "query", "", {"enum": ["json", "text"]})],
        "responses": {"200": {"description": "the invoice", "content": {
            "application/json": {"schema": _ref("Invoice")},
            "text/plain": {"schema": STR}}}, **_errors(400, 404)}}},
    "/api/invoices/{ticket}/text": {"get": {
        "summary": "the invoice as fixed-width text", "parameters": [TICKET],
        "responses": {"200": TEXT, **_errors(404)}}},
    "/api/automerge": _get(
        "the store's automerge-repo document: its id (the same on every till and at the "
        "relay), its automerge: URL, and the websocket path (path?token=TOKEN)",
        "AutomergeDocument"),
    "/api/events": {"get": {
        "summary": "Server-Sent Events: master, receipt, entry, sync, peer",
        "responses": {"200": {"description": "an event stream", "content": {
            "text/event-stream": {"schema": STR}}}, **_errors()}}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tillsync till API", "version": "1",
             "description": "The HTTP API of a till's daemon (`tillsync peer run`). Send "
                            "`Authorization: Bearer TOKEN` (`tillsync peer token DIR`). "
                            "Money is integer minor units."},
    "components": {"schemas": SCHEMAS, "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": PATHS,
}


async def handler(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
