"""Who may use the till's HTTP API.

- ``DIR/api.token``: the owner's token, made on ``peer init`` (or on first use for an
  older store), owner-only (0600) like the device key.  It opens the API to clients on
  this machine (loopback) only.
- ``DIR/api-tokens.json``: tokens the owner issues to other machines by name
  (``peer token DIR --issue NAME``), kept as SHA-256 digests, owner-only; revoked by
  name (``--revoke NAME``).  They open the API from anywhere the daemon listens, which
  is loopback unless the owner says otherwise (``peer run --api-host``).

Clients send ``Authorization: Bearer TOKEN``.  The daemon rereads the issued tokens
when the file changes, so a revocation holds at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tillsync.peer.errors import InvalidInput
from tillsync.peer.http.errors import ApiError, Handler

OWNER_FILE = "api.token"
ISSUED_FILE = "api-tokens.json"
PUBLIC_PATHS = frozenset({"/openapi.json"})


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner alone."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def owner_token(path: Path) -> str:
    """The store's owner token, made now if the store has none yet."""
    file = path / OWNER_FILE
    try:
        return file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    if not path.is_dir():
        raise InvalidInput(f"no tillsync store in {path}")
    token = secrets.token_urlsafe(32)
    _write_private(file, token + "\n")
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issued(path: Path) -> dict[str, dict[str, Any]]:
    """Issued tokens by name: {"sha256": ..., "created": unix time}."""
    try:
        data = json.loads((path / ISSUED_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        raise InvalidInput(f"{path / ISSUED_FILE} is damaged; remove it and issue the "
                           "tokens again") from None
    return data if isinstance(data, dict) else {}


def issue(path: Path, name: str) -> str:
    """A new token for ``name`` (replacing an earlier one of that name); shown once."""
    if not name or len(name) > 100 or not name.isprintable():
        raise InvalidInput("a token name is 1-100 printable characters")
    owner_token(path)  # the store exists and has its owner token
    tokens = issued(path)
    token = secrets.token_urlsafe(32)
    tokens[name] = {"sha256": _digest(token), "created": int(time.time())}
    _write_private(path / ISSUED_FILE, json.dumps(tokens, indent=1, sort_keys=True))
    return token


def revoke(path: Path, name: str) -> None:
    tokens = issued(path)
    if name not in tokens:
        raise InvalidInput(f"no token named {name!r} (see `peer token DIR --list`)")
    del tokens[name]
    _write_private(path / ISSUED_FILE, json.dumps(tokens, indent=1, sort_keys=True))


class Gate:
    """Checks the bearer token of each request against the store's token files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owner = owner_token(path)
        self._stamp: tuple[int, int] | None = None
        self._digests: dict[str, str] = {}

    def _issued(self) -> dict[str, str]:
        """Digest -> name, reread when the file changes."""
        try:
            info = (self.path / ISSUED_FILE).stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            digests: dict[str, str] = {}
            with contextlib.suppress(InvalidInput):
                digests = {str(v.get("sha256")): k for k, v in issued(self.path).items()
                           if isinstance(v, dict)}
            self._stamp, self._digests = stamp, digests
        return self._digests

    def who(self, token: str, remote: str | None) -> str | None:
        """The client's name ("owner" or the issued name), or None if refused."""
        if hmac.compare_digest(token.encode(), self.owner.encode()):
            return "owner" if _loopback(remote) else None
        digest = _digest(token)
        for known, name in self._issued().items():
            if hmac.compare_digest(known, digest):
                return name
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or not request.path.startswith("/api/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send the till's API token as "
                           "'Authorization: Bearer TOKEN' (`tillsync peer token DIR`)")
        name = self.who(token.strip(), request.remote)
        if name is None:
            raise ApiError(401, "unauthorized", "this token is not valid here (revoked, "
                           "mistyped, or the owner's token used from another machine)")
        request["client"] = name
        return await handler(request)


def _loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False
