"""The aiohttp application of the till's HTTP API, served inside the daemon's loop."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from tillsync.peer.amrepo import till as amrepo
from tillsync.peer.errors import InvalidInput
from tillsync.peer.http import openapi, routes_data, routes_files, routes_sync
from tillsync.peer.http.auth import Gate
from tillsync.peer.http.context import KEY, ApiContext
from tillsync.peer.http.errors import errors_middleware
from tillsync.peer.http.events import stream
from tillsync.peer.http.ops import TillOps

API_HOST = "127.0.0.1"
API_PORT = 8767
URL_FILE = "api.json"  # where the daemon says it serves, for the CLI
MAX_BODY = 4 * 1024 * 1024
STATIC = Path(__file__).resolve().parent / "static"  # resolved: aiohttp serves no symlinks


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def build(ctx: ApiContext, gate: Gate, ops: TillOps | None = None,
          amrepo_limits: amrepo.ClientLimits = amrepo.DEFAULT_LIMITS) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, gate.middleware],
                          client_max_size=MAX_BODY)
    app[KEY] = ctx
    if ops is not None:  # /healthz, /readyz, /metrics: for operators, no token
        ops.add_routes(app)
    app.router.add_get("/openapi.json", openapi.handler)
    # The reference till page: static files, no token needed to load them (the page asks
    # for the token, and every call it makes sends it).
    app.router.add_get("/", _page)
    app.router.add_static("/static/", STATIC)

    async def events(request: web.Request) -> web.StreamResponse:
        return await stream(request, ctx.events)

    app.router.add_get("/api/events", events)
    app.router.add_routes(routes_data.routes)
    app.router.add_routes(routes_sync.routes)
    app.router.add_routes(routes_files.routes)
    amrepo.add_routes(app, gate, amrepo_limits)  # automerge-repo clients, same tokens
    return app


async def serve(path: Path, ctx: ApiContext, host: str, port: int,
                ops: TillOps | None = None,
                amrepo_limits: amrepo.ClientLimits = amrepo.DEFAULT_LIMITS,
                ) -> tuple[web.AppRunner, str]:
    """Start serving; returns the runner (``cleanup()`` stops it) and the base URL."""
    # Master data read into memory once, now: a front end's first full read (the whole
    # catalogue, at start-up) then costs no Automerge read (~0.2-0.3 s at 20,000 products).
    ctx.till.master.warm()
    runner = web.AppRunner(build(ctx, Gate(path), ops, amrepo_limits), access_log=None,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InvalidInput(f"cannot serve the API on {host}:{port}: {exc.strerror}; pick "
                           "another --api-port") from None
    bound = site.port  # the one the kernel picked, for port 0
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound}"
    tmp = path / (URL_FILE + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
    os.replace(tmp, path / URL_FILE)
    return runner, url


def served_url(path: Path) -> str | None:
    """The URL the daemon holding ``path`` serves the API on, if it still runs."""
    try:
        data: dict[str, Any] = json.loads((path / URL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url, pid = data.get("url"), data.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)  # a daemon killed outright leaves the file behind
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return url


async def stop(path: Path, runner: web.AppRunner) -> None:
    with contextlib.suppress(FileNotFoundError):
        (path / URL_FILE).unlink()
    await runner.cleanup()
