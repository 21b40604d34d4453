"""``tillsync peer invoice DIR TICKET``: reprint a sale's final invoice.

The same document the till's HTTP API serves (``peer.invoice``): the store's header and
footer from settings, the lines, total and payments, the provisional ticket, and the
official invoice number once the relay's receipt has come back, or "assigned at sync"
until then.  The store is opened read-only, so it works whether or not a ``peer run``
daemon holds it.
"""

from __future__ import annotations

import argparse
import json

from tillsync.peer.invoice import invoice_of_ticket, render_text
from tillsync.peer.store import Till
from tillsync.tools.cli_ops import EXIT_BAD_INPUT, OpsError, Verb


async def peer_invoice(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        doc = await invoice_of_ticket(till, args.ticket)
    if doc is None:
        raise OpsError(f"no sale with ticket {args.ticket!r} in {args.dir} (tickets look like "
                       "T1-000042; `tillsync peer log DIR --kind sale` lists them)",
                       EXIT_BAD_INPUT)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_text(doc), end="")
    return 0


def add_peer_invoice(verb: Verb) -> None:
    """Register ``peer invoice`` with the parser's ``verb`` helper."""
    sub = verb("invoice", peer_invoice, "reprint a sale's final invoice: for a receipt "
               "printer (42 columns), or JSON with --json; the official number once synced, "
               "'assigned at sync' until then")
    sub.add_argument("ticket", metavar="TICKET",
                     help="the sale's provisional ticket, e.g. T1-000042 (any till's sale "
                          "this till holds)")
