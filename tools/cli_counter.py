"""``peer delete``: remove a master-data record.  Kept apart from ``tools.cli`` so that
it stays a parser and a list of verbs.

The delete is an Automerge change like any edit (``peer.master.document``): it reaches
every till over the LAN and the relay by the usual document sync.  While ``peer run``
holds the store the delete goes through its HTTP API, as ``peer put`` does."""

from __future__ import annotations

import argparse
import json
from urllib.parse import quote

from tillsync.peer.master.document import COLLECTIONS
from tillsync.peer.store import Till
from tillsync.tools.cli_common import EXIT_OK, LOCK_WAIT
from tillsync.tools.cli_ops import Verb


async def peer_delete(args: argparse.Namespace) -> int:
    from tillsync.tools.cli import _daemon_serves, _through_daemon

    if await _daemon_serves(args.dir):
        await _through_daemon(args.dir, "DELETE", f"/api/master/{args.collection}/"
                              f"{quote(args.id, safe='')}", {})
    else:
        async with await Till.open(args.dir, wait=LOCK_WAIT) as till:
            await till.delete(args.collection, args.id)
    if args.json:
        print(json.dumps({"collection": args.collection, "id": args.id, "deleted": True},
                         indent=2, sort_keys=True))
    else:
        print(f"deleted {args.collection} record {args.id!r}; every till and the relay "
              "drop it at their next sync")
    return EXIT_OK


def add_peer_delete(verb: Verb) -> None:
    """Register ``peer delete DIR COLLECTION ID`` with the parser's ``verb`` helper."""
    sub = verb("delete", peer_delete, "delete a master-data record (a product: back-office "
               "or admin device only); a delete wins over edits made elsewhere before it "
               "arrived")
    sub.add_argument("collection", choices=[c for c in COLLECTIONS if c != "settings"])
    sub.add_argument("id", metavar="ID", help="record id")
