"""``peer run`` stops when told to (SIGTERM, SIGINT), whatever its links are doing, and
loses nothing; a second signal exits at once.

The process tests start real daemons (``tests/peer/lan_processes.py``) and a real relay
(``tests/relay/processes.py``).  Their time bounds are liveness checks, not benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from websockets.exceptions import ConnectionClosedError

from tests.doubles import SHIFT, sale
from tests.peer.lan_processes import LanTill, wait_until
from tests.relay.processes import RelayProcess, Relays
from tests.relay.stops import STOP_BOUND, intact, record_sales, stopped
from tillsync.peer.lan.session import PeerSession

PRODUCTS = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
            ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})]


async def test_a_link_ending_while_its_task_is_cancelled_passes_the_cancellation_on(
        tmp_path: Path) -> None:
    """The hang's cause: a link's session ended (its peer went away) and, while it was
    waiting for its own tasks to end, the daemon cancelled it to stop.  The session
    swallowed that cancellation, so its dialling loop went on redialling forever and the
    daemon never exited."""
    lost = asyncio.Event()
    ending = asyncio.Event()

    class GoneSocket:
        async def send(self, message: bytes) -> None:
            pass

        async def recv(self) -> bytes:
            await lost.wait()
            raise ConnectionClosedError(None, None)

    link = SimpleNamespace(closed=False, data_to_send=lambda: [])
    till = SimpleNamespace(path=tmp_path)  # the session reads only its files' folder here
    session = PeerSession(cast(Any, till), cast(Any, link), GoneSocket(), "gone", {})

    async def slow_to_end() -> None:  # e.g. a task inside a database call
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ending.set()
            await asyncio.sleep(0.05)
            raise

    session._watch = slow_to_end  # type: ignore[method-assign]
    running = asyncio.create_task(session.run())
    lost.set()
    await ending.wait()  # the session is ending, waiting for its tasks
    running.cancel()  # ... and the daemon stops now
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(running), STOP_BOUND)
    assert running.cancelled(), "the session swallowed the cancellation of its task"


# -- real processes -------------------------------------------------------------------


def stop(till: LanTill, signum: int = signal.SIGTERM) -> int:
    assert till.daemon is not None
    return stopped(till.daemon, signum, f"{till.name}'s daemon", till.log)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Relays, RelayProcess, LanTill, LanTill]]:
    """A relay and two tills of one store; A dials B.  Every process is gone after."""
    with Relays(tmp_path) as relays:
        relay = relays.start()
        a, b = LanTill(tmp_path / "a", "Till A"), LanTill(tmp_path / "b", "Till B")
        a.init(relay, "shop")
        b.init(relay, "shop")
        a.put_many(PRODUCTS)
        a.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
        try:
            yield relays, relay, a, b
        finally:
            for till in (a, b):
                if till.daemon is not None and till.daemon.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(till.daemon.pid, signal.SIGCONT)
                    till.kill()


def linked(a: LanTill, b: LanTill) -> None:
    b.start([])
    a.start([b])
    wait_until(lambda: any(p["connected"] for p in a.lan()["peers"]), "A's link with B")


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["killed", "frozen", "stopping"])
def test_the_daemon_stops_while_its_lan_peer_goes_away_and_the_relay_is_down(
    shop: tuple[Relays, RelayProcess, LanTill, LanTill], peer: str
) -> None:
    """The state of the hang: the relay down, the LAN peer going away (killed, frozen
    with its link open, or stopping itself), SIGTERM."""
    _, relay, a, b = shop
    recorded = [a.record("sale", sale(("bread", 1, 320)))["client_id"] for _ in range(3)]
    linked(a, b)
    relay.kill()
    assert b.daemon is not None
    if peer == "killed":
        b.kill()
    elif peer == "frozen":  # its link stays open and never answers the closing frame
        os.killpg(b.daemon.pid, signal.SIGSTOP)
    else:
        b.daemon.send_signal(signal.SIGTERM)
    assert stop(a) == 0, a.log()[-3000:]
    log = a.log()
    for phase in ("SIGTERM received", "LAN links (going away", "cancelling", "store closed",
                  "stopped"):
        assert phase in log, log[-3000:]
    intact(a, relay, recorded)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_daemon_stops_in_the_middle_of_pushing_sales_and_loses_none(
    shop: tuple[Relays, RelayProcess, LanTill, LanTill], signum: int
) -> None:
    """A load of sales going up to the relay when the signal arrives: whatever the relay
    numbered is kept, the rest is pending at the till and goes up next time."""
    _, relay, a, b = shop
    recorded = record_sales(a, 5000)
    linked(a, b)
    assert stop(a, signum) == 0, a.log()[-3000:]
    b.stop()
    intact(a, relay, recorded)


@pytest.mark.slow
def test_a_second_signal_exits_at_once(
    shop: tuple[Relays, RelayProcess, LanTill, LanTill]
) -> None:
    """The first stop waits for a frozen LAN peer's closing handshake; a second signal
    does not wait, and exits with 128 + its number.  The store is intact all the same."""
    _, relay, a, b = shop
    recorded = [a.record("sale", sale(("bread", 1, 320)))["client_id"] for _ in range(2)]
    linked(a, b)
    assert a.daemon is not None and b.daemon is not None
    os.killpg(b.daemon.pid, signal.SIGSTOP)
    a.daemon.send_signal(signal.SIGTERM)
    wait_until(lambda: "closing 1 LAN links" in a.log(), "the first stop to begin")
    assert stop(a, signal.SIGINT) == 128 + signal.SIGINT, a.log()[-3000:]
    assert "second signal (SIGINT)" in a.log()
    os.killpg(b.daemon.pid, signal.SIGCONT)
    intact(a, relay, recorded)
