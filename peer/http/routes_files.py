"""Files of the till's HTTP API: upload one (the raw bytes as the request body, with
its media type), list them, fetch one.  An entry or a record refers to an uploaded file
by the ``file_ref`` the upload answers (``receipt_file`` of an expense, ``image`` of a
product)."""

from __future__ import annotations

import asyncio
import io

from aiohttp import web

from tillsync.peer.errors import InvalidInput
from tillsync.peer.files import HASH_RE, MAX_FILE, TillFiles
from tillsync.peer.http.context import context
from tillsync.peer.http.errors import ApiError

routes = web.RouteTableDef()


def _files(request: web.Request) -> TillFiles:
    return TillFiles(context(request).till.path)


@routes.post("/api/files")
async def upload(request: web.Request) -> web.Response:
    """The body is the file; ``Content-Type`` its media type (or omitted: the bytes say).
    201 with its ``file_ref``, or 200 if the till held it already."""
    media = request.content_type
    given = None if media in ("", "application/octet-stream") else media
    if request.content_length is not None and request.content_length > MAX_FILE:
        raise ApiError(413, "too_large", f"the file is larger than {MAX_FILE} bytes, the "
                       "most a file may be; nothing was stored")
    data = bytearray()
    async for block in request.content.iter_chunked(256 * 1024):
        data += block
        if len(data) > MAX_FILE:
            raise ApiError(413, "too_large", f"the file is larger than {MAX_FILE} bytes, "
                           "the most a file may be; nothing was stored")
    files = _files(request)
    try:
        ref, new = await asyncio.to_thread(files.add, io.BytesIO(bytes(data)), given)
    except InvalidInput as exc:
        raise ApiError(415 if "type" in str(exc) else 422, "bad_file",
                       f"{exc}; nothing was stored") from None
    if new:
        context(request).till.touch_files()
    return web.json_response({"file": ref.to_json(), "new": new}, status=201 if new else 200)


@routes.get("/api/files")
async def listing(request: web.Request) -> web.Response:
    """Every file the till holds, and whether the relay has confirmed it."""
    return web.json_response({"files": await asyncio.to_thread(_files(request).listing)})


@routes.get("/api/files/{sha256}")
async def fetch(request: web.Request) -> web.StreamResponse:
    sha = request.match_info["sha256"]
    if not HASH_RE.match(sha):
        raise ApiError(400, "bad_hash", f"{sha[:80]!r} is not a SHA-256 (64 lowercase hex "
                       "digits)")
    files = _files(request)
    ref = await asyncio.to_thread(files.ref, sha)
    if ref is None:
        raise ApiError(404, "not_found", f"this till holds no file {sha}")
    return web.FileResponse(files.path_of(sha), headers={"Content-Type": ref.media_type})
