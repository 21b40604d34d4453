"""Command-line checks and verbs about running a shop: what ``relay serve`` checks before
it starts, and the limits of ``relay enroll``'s arguments.  Kept apart from
``tools.cli`` so that it stays a parser and a list of verbs."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tillsync.peer.enrollment import holds_store
from tillsync.relay.startup import DataLock, StartRefused, check_port, check_writable
from tillsync.tools.cli_common import relay_url

EXIT_BAD_INPUT, EXIT_STORE = 2, 3


class OpsError(Exception):
    """A refusal of a command, with its exit status (``tools.cli`` prints it)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def before_serve(args: argparse.Namespace) -> DataLock | None:
    """``relay serve``: refuse to start, creating nothing, when the port is taken, the
    SQLite data folder cannot be written, or another relay process serves it.  Returns
    the data folder's lock (SQLite), to be held as long as the relay runs."""
    try:
        if not args.reuse_port and args.worker_of is None:
            check_port(args.host, args.port)
        if args.db is not None:
            return None
        check_writable(Path(args.data))
        return DataLock(Path(args.data))
    except StartRefused as exc:
        raise OpsError(str(exc), EXIT_STORE if exc.busy else EXIT_BAD_INPUT) from None


def check_hours(hours: float) -> None:
    """``relay enroll --hours``: a code must live for some time."""
    if not math.isfinite(hours) or hours <= 0:
        raise OpsError(f"--hours must be a number of hours above 0, not {hours:g} (a code "
                       "valid for no time could never be used)", EXIT_BAD_INPUT)


async def peer_enroll_new_device(args: argparse.Namespace) -> int:
    """``peer enroll DIR --relay URL --code CODE --new-device`` (``peer.carry``)."""
    import json
    import sys

    from tillsync.peer.carry import carry_again, enroll_new_device

    if args.carry:
        done = await carry_again(Path(args.dir))
    else:
        if not (args.relay and args.code):
            raise OpsError("--new-device needs --relay URL and --code CODE (a new code from "
                           "`tillsync relay enroll`)", EXIT_BAD_INPUT)
        done = await enroll_new_device(Path(args.dir), url=args.relay, code=args.code,
                                       name=args.name, series=args.series,
                                       tls_pin=args.tls_pin, tls_ca=args.tls_ca)
    if args.json:
        print(json.dumps(vars(done), indent=2, sort_keys=True))
    else:
        print(f"{args.dir} is the new device {done.new_device} (was {done.old_device}), "
              f"tickets {done.series}-000001, ...\ncarried {len(done.carried)} entries the "
              "relay could not number; they go up at the next sync\nthen retire the old "
              f"device at the relay: tillsync relay revoke --store STORE --device "
              f"{done.old_device}")
        for row in done.carried:
            print(f"  seq {row['seq']} {row['kind']} {row['ticket'] or ''} -> seq "
                  f"{row['new_seq']} {row['new_ticket'] or ''}".rstrip())
    for row in done.not_carried:
        print(f"tillsync: not carried: seq {row['seq']} {row['kind']} ({row['client_id']}): "
              f"{row['reason']}", file=sys.stderr)
    return 0


Verb = Callable[..., argparse.ArgumentParser]
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_peer_enroll(verb: Verb, peer_init: Handler) -> None:
    """Register ``peer enroll`` with the parser's ``verb`` helper; enrolling a store as
    it is goes through ``peer_init`` (which enrolls a directory holding a store)."""

    async def peer_enroll(args: argparse.Namespace) -> int:
        if not holds_store(Path(args.dir)):
            raise OpsError(f"no tillsync store in {args.dir}: `tillsync peer init "
                           f"{args.dir} --name NAME --relay URL --code CODE` makes one",
                           EXIT_BAD_INPUT)
        if args.new_device or args.carry:
            return await peer_enroll_new_device(args)
        if not (args.relay and args.code):
            raise OpsError("peer enroll needs --relay URL and --code CODE (from `tillsync "
                           "relay enroll`)", EXIT_BAD_INPUT)
        return await peer_init(args)

    sub = verb("enroll", peer_enroll, "enroll a store that exists (a till that sold on its "
               "own) at a relay: its log, tickets and master data are kept and go up")
    sub.add_argument("--relay", metavar="URL", type=relay_url, help="relay, ws://host:port")
    sub.add_argument("--code", help="one-time code from `relay enroll`")
    sub.add_argument("--tls-pin", metavar="SHA256", help="as for `peer init`")
    sub.add_argument("--tls-ca", metavar="FILE", type=os.path.abspath, help="as for `peer init`")
    sub.add_argument("--new-device", action="store_true",
                     help="enrolled already, but the relay will not number this device's "
                          "later entries (revoked, or an entry refused): enroll it as a new "
                          "device with a new ticket series and record those entries again")
    sub.add_argument("--carry", action="store_true",
                     help="after --new-device could not reach the relay: carry now")
    sub.add_argument("--name", help="with --new-device: the new device's name (default: "
                                    "the same)")
    sub.add_argument("--series", help="with --new-device: its ticket series (default: the "
                                      "old one + R1)")
