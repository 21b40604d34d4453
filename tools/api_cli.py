"""The command line's side of the till's HTTP API: ``peer token``, the ``peer run``
options that serve it, and writes through it while the daemon holds the store."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tillsync.peer.amrepo.till import ClientLimits
from tillsync.peer.errors import InvalidInput, StoreError
from tillsync.peer.http import auth
from tillsync.peer.http.app import API_HOST, API_PORT, served_url
from tillsync.peer.sync.deadlines import (
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_IDLE,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
)
from tillsync.tools.cli_common import above_zero

CALL_TIMEOUT = 30.0


def add_run_arguments(sub: argparse.ArgumentParser, port_type: Any) -> None:
    sub.add_argument("--api-host", default=API_HOST, metavar="H",
                     help=f"address of the HTTP API for front ends (default {API_HOST}: "
                          "this machine only; other machines need a token from `peer token "
                          "DIR --issue NAME`)")
    sub.add_argument("--api-port", type=port_type, default=API_PORT, metavar="P",
                     help=f"port of the HTTP API (default {API_PORT}; 0 picks a free one)")
    sub.add_argument("--no-api", action="store_true", help="do not serve the HTTP API")
    sub.add_argument("--automerge-handshake-timeout", type=above_zero(float),
                     default=HANDSHAKE_TIMEOUT, metavar="SECONDS",
                     help="close an automerge-repo connection (/automerge) whose join has "
                     f"not come this long after opening (default {HANDSHAKE_TIMEOUT:g}; "
                     f"close code {CLOSE_HANDSHAKE_TIMEOUT})")
    sub.add_argument("--automerge-idle-timeout", type=above_zero(float),
                     default=IDLE_TIMEOUT, metavar="SECONDS",
                     help="close an automerge-repo connection on which no frame passed "
                     "either way this long; websocket pings do not count (default "
                     f"{IDLE_TIMEOUT:g}; close code {CLOSE_IDLE})")


def automerge_limits(args: argparse.Namespace) -> ClientLimits:
    """The limits ``add_run_arguments``'s flags set for /automerge connections."""
    return ClientLimits(args.automerge_handshake_timeout, args.automerge_idle_timeout)


def add_token_verb(sub: argparse.ArgumentParser) -> None:
    group = sub.add_mutually_exclusive_group()
    group.add_argument("--issue", metavar="NAME",
                       help="make a token for another machine (printed once; replaces an "
                            "earlier token of that name)")
    group.add_argument("--revoke", metavar="NAME", help="revoke the token of that name")
    group.add_argument("--list", action="store_true", help="list the issued tokens")


async def peer_token(args: argparse.Namespace) -> int:
    """Print the owner's token (made now for an older store), or manage issued ones."""
    path = Path(args.dir)
    if not (path / "device.key").exists():
        raise InvalidInput(f"no tillsync store in {path} (run `tillsync peer init {path}`)")
    if args.issue:
        print(auth.issue(path, args.issue))
    elif args.revoke:
        auth.revoke(path, args.revoke)
        print(f"revoked the token {args.revoke!r}")
    elif args.list:
        tokens = auth.issued(path)
        if args.json:
            print(json.dumps({k: {"created": v.get("created")} for k, v in tokens.items()},
                             indent=2, sort_keys=True))
        else:
            for name, info in sorted(tokens.items()):
                made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.get("created", 0)))
                print(f"{name:<24} issued {made} UTC")
            if not tokens:
                print("no issued tokens")
    else:
        print(auth.owner_token(path))
    return 0


def serving(path: Path) -> bool:
    return served_url(path) is not None


async def call(path: Path, method: str, route: str, body: dict[str, Any]
               ) -> tuple[int, dict[str, Any]]:
    """One request to the API of the daemon holding the store at ``path``."""
    url = served_url(path)
    if url is None:
        raise StoreError(f"the daemon holding {path} serves no API (started with --no-api?)")
    headers = {"Authorization": f"Bearer {auth.owner_token(path)}"}
    try:
        async with asyncio.timeout(CALL_TIMEOUT), aiohttp.ClientSession() as session, \
                session.request(method, url + route, json=body, headers=headers) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            return response.status, answer
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise StoreError(f"the daemon holding {path} does not answer on {url}: "
                         f"{exc or type(exc).__name__}") from None


def refusal(answer: dict[str, Any]) -> str:
    """One line per problem of an API error body."""
    error = answer.get("error") or {}
    lines = [str(error.get("message", "refused"))]
    lines += [f"  {d.get('path')}: {d.get('message')}" for d in error.get("details", [])
              if d.get("path")]
    return "\n".join(lines)
