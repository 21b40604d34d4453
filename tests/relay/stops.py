"""Checks for the shutdown tests (tests/peer/test_shutdown.py, tests/relay/test_shutdown.py):
a process stopped by a signal within a liveness bound, and a store left intact."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

from tests.doubles import sale
from tests.relay.processes import RelayProcess, TillDir, cli_json, in_thread, run_cli
from tillsync.peer.store import Till

STOP_BOUND = 10.0  # seconds: a stop that takes longer is a hang (not a benchmark)


def stopped(proc: subprocess.Popen[bytes], signum: int, what: str,
            log: Callable[[], str]) -> int:
    """Signal ``proc``; its exit status, which must come within ``STOP_BOUND``."""
    proc.send_signal(signum)
    try:
        return proc.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} did not exit within {STOP_BOUND} s of "
                             f"{signal.Signals(signum).name}:\n{log()[-3000:]}") from None


def record_sales(till: TillDir, n: int) -> list[str]:
    """``n`` sales recorded in this process (no daemon holding the store): client ids."""
    async def record() -> list[str]:
        async with await Till.open(till.path, wait=10.0) as opened:
            return [(await opened.record("sale", sale(("bread", 1, 320)))).client_id
                    for _ in range(n)]
    return in_thread(record)


def numbered(till: TillDir) -> dict[str, int]:
    """client id -> invoice number of the till's sales the relay numbered."""
    return {r["client_id"]: r["invoice_no"] for r in till.receipts(mine=True)
            if r["status"] == "accepted" and "invoice_no" in r}


def intact(till: TillDir, relay: RelayProcess, recorded: list[str], store: str = "shop"
           ) -> None:
    """The till's chain verifies and holds every sale recorded; after one more round
    with the relay (started again if it is down), every sale is numbered once, with no
    gap, and what the till held receipts for kept its number: nothing acknowledged was
    lost."""
    run_cli("peer", "verify", str(till.path))
    assert till.status()["entries"]["sale"] == len(recorded)
    before = numbered(till)
    if not relay.alive:
        relay.start()
    till.sync()
    register = cli_json("report", "invoices", "--data", str(relay.data), "--store", store,
                        *(("--db", relay.db) if relay.db else ()))
    assert all(not s["missing"] for s in register["series"]), register["series"]
    after = numbered(till)
    assert set(after) == set(recorded)  # every sale numbered, none twice
    assert sorted(after.values()) == list(range(1, len(recorded) + 1))
    assert {c: after[c] for c in before} == before
    assert till.status()["pending"] == 0
