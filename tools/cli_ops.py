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
