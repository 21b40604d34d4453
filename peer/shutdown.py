"""Graceful shutdown of the long-running processes: ``tillsync relay serve`` and
``tillsync peer run``.

The first SIGTERM or SIGINT starts an orderly stop, in phases, each logged on one line
and each bounded by a deadline (``Deadlines``): stop accepting; finish what is in flight
(a batch being committed is committed and answered) or leave it unstored (the till
sends it again); close the links with code 1001 (going away); cancel what is left;
close the stores.  The process then exits with status 0.

A second signal exits at once, with 128 + the signal's number (130 for SIGINT, 143 for
SIGTERM); so does a stop that has not finished ``Deadlines.exit`` seconds after the
first signal.  Nothing is lost either way: an entry is acknowledged only once it is
committed, and a commit is all or nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tillsync.shutdown")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_GRACE = 5.0  # seconds from the first signal to the exit, at most
SHUTDOWN_HELP = ("seconds a graceful stop on SIGTERM or SIGINT may take before the process "
                 f"exits all the same (default {SHUTDOWN_GRACE:g}); a second signal exits at once")


@dataclass(frozen=True)
class Deadlines:
    """Seconds each phase of a graceful stop may take; ``exit`` bounds them all."""

    drain: float = 1.5  # work in flight (the relay's batches being committed) to finish
    close: float = 1.5  # links to finish their closing handshake (code 1001)
    cancel: float = 1.0  # cancelled tasks to end
    exit: float = SHUTDOWN_GRACE  # from the first signal to the exit, whatever happens

    @classmethod
    def within(cls, grace: float) -> Deadlines:
        """Deadlines whose phases fit in ``grace`` seconds (``--shutdown-grace``), in
        the default proportions, leaving a fifth for closing the stores."""
        if not grace > 0:
            raise ValueError(f"the shutdown grace must be more than 0 seconds, not {grace}")
        scale = grace / SHUTDOWN_GRACE
        base = cls()
        return cls(drain=base.drain * scale, close=base.close * scale,
                   cancel=base.cancel * scale, exit=grace)


class Shutdown:
    """The signal handlers of a serving process.  The first signal calls ``stop`` (which
    makes the process wind down) and arms a watchdog that exits if the process is still
    there ``deadlines.exit`` seconds later; a second signal exits at once."""

    def __init__(self, what: str, stop: Callable[[], object], deadlines: Deadlines) -> None:
        self.what = what
        self._stop = stop
        self.deadlines = deadlines
        self.signum: int | None = None
        self._watchdog: threading.Timer | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self.received, signum)

    def received(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("shutdown: second signal (%s): %s exits now", name, self.what)
            force_exit(128 + signum)
        self.signum = signum
        log.info("shutdown: %s received: %s stops within %.1f s (a second signal exits at "
                 "once)", name, self.what, self.deadlines.exit)
        self._watchdog = threading.Timer(self.deadlines.exit, self._late, args=(signum,))
        self._watchdog.daemon = True
        self._watchdog.start()
        self._stop()

    def _late(self, signum: int) -> None:
        log.error("shutdown: %s did not stop within %.1f s: exiting now", self.what,
                  self.deadlines.exit)
        force_exit(128 + signum)

    def done(self) -> None:
        """The orderly part of the stop is over.  The watchdog stays armed until the
        process exits: the interpreter's own clean-up (cancelling what is left) is
        bounded by it too."""
        if self.signum is not None:
            log.info("shutdown: %s stopped", self.what)


async def run_until_signal(what: str, deadlines: Deadlines,
                           work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends, or until a signal cancels it (its own clean-up then
    runs: stores closed, links closed)."""
    task = asyncio.ensure_future(work)
    shutdown = Shutdown(what, task.cancel, deadlines)
    shutdown.install(asyncio.get_running_loop())
    try:
        await task
    except asyncio.CancelledError:
        if shutdown.signum is None:  # not our doing: pass it on
            raise
    shutdown.done()


def force_exit(code: int) -> None:
    """Exit now, without unwinding: what is committed stays, the rest was never
    acknowledged."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], within: float,
                          what: str) -> None:
    """Cancel ``tasks`` and wait up to ``within`` seconds for them to end.

    Unlike ``task.cancel(); with suppress(CancelledError): await task``, this never
    swallows a cancellation of the caller itself (awaiting a cancelled task hands the
    caller's own cancellation to that task, and the suppression then eats it), and a
    task that does not end in time is left behind instead of holding the caller."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    done, late = await asyncio.wait(pending, timeout=within)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: it ended, as it should, however it ended
    if late:
        log.warning("shutdown: %d %s still running %.1f s after being cancelled: %s",
                    len(late), what, within, ", ".join(sorted(t.get_name() for t in late)))
