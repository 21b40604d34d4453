"""The store dashboard: one self-contained page (``dashboard.html`` beside this module,
inline CSS, JS and SVG charts, nothing fetched from elsewhere) served by the relay at
``/dashboard``.  The page itself holds no data and needs no token to load; it reads the
reporting API (``relay.http``) with the token given in the URL fragment
(``/dashboard#store=S&token=T``, never sent to the server) or typed in.
"""

from __future__ import annotations

import base64
import hashlib
import http
import re
from functools import cache
from importlib.resources import files

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

PATH = "/dashboard"


@cache
def page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: only its own inline script and style
    run (by hash), it may talk only to this relay, and no other site may frame it."""
    html = files("tillsync.relay").joinpath("dashboard.html").read_text(encoding="utf-8")
    hashes = {tag: [_sha256(body) for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)]
              for tag in ("script", "style")}
    policy = ("default-src 'none'; connect-src 'self'; img-src 'self' data:; "
              f"script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, policy


def _sha256(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def response(connection: ServerConnection) -> Response:
    """The page as an HTTP response on a websocket connection's ``process_request``."""
    html, policy = page()
    answer = connection.respond(http.HTTPStatus.OK, html)
    del answer.headers["Content-Type"]  # Headers is a multidict: replace, not add
    answer.headers["Content-Type"] = "text/html; charset=utf-8"
    answer.headers["Content-Security-Policy"] = policy
    answer.headers["Referrer-Policy"] = "no-referrer"
    answer.headers["X-Content-Type-Options"] = "nosniff"
    answer.headers["Cache-Control"] = "no-cache"
    return answer
