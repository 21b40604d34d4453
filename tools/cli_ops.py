"""Command-line checks and verbs about running a shop: what ``relay serve`` checks before
it starts, and the limits of ``relay enroll``'s arguments.  Kept apart from
``tools.cli`` so that it stays a parser and a list of verbs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from relay.startup import DataLock, StartRefused, check_port, check_writable

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

    from peer.carry import carry_again, enroll_new_device

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
