"""``peer run``: the daemon keeps a till in step while the relay comes and goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doubles import REPO
from tests.relay.processes import Relays, TillDir, stop

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PRODUCTS = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
            ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})]
SHIFT = "7d3f5c1a-1b2c-4d3e-8f4a-5b6c7d8e9f00"


def sale() -> dict[str, object]:
    return {"lines": [{"product_id": "bread", "qty": 1, "unit_price": 320}],
            "payments": [{"method": "cash", "amount": 320}], "shift_client_id": SHIFT}


def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_daemon_syncs_backs_off_while_the_relay_is_down_and_catches_up(
    tmp_path: Path, relay_db: str | None
) -> None:
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start()
        till = TillDir(tmp_path / "till", "Till 1")
        till.init(relay, "shop")
        till.put_many(PRODUCTS)
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
        log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tillsync.tools.cli",
             "peer", "run", str(till.path), "--interval",
             "0.3", "--lan-port", "0", "--no-mdns", "--api-port", "0"],
            stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        try:
            # Sales recorded through the CLI while the daemon runs: the daemon holds the
            # store, so the CLI records through its HTTP API (DIR/api.json says where), once
            # the daemon serves it (between taking the store and serving its API, a CLI
            # write is refused: a loaded machine widens that window to seconds).
            wait_until(lambda: (till.path / "api.json").exists(), "the daemon's HTTP API")
            online = [till.record("sale", sale())["client_id"] for _ in range(3)]
            wait_until(lambda: {r["client_id"] for r in till.receipts(mine=True)
                                if r["status"] == "accepted"} >= set(online),
                       "the online sales to be numbered")

            relay.kill()
            offline = [till.record("sale", sale())["client_id"] for _ in range(3)]
            wait_until(lambda: till.status().get("last_error"), "a failed round to be noted")
            assert till.status()["pending"] == 3

            relay.start()  # same data, same port
            wait_until(lambda: till.status()["pending"] == 0, "the offline sales to go up")
            mine = {r["client_id"]: r for r in till.receipts(mine=True)}
            numbers = sorted(mine[c]["invoice_no"] for c in online + offline)
            assert numbers == [1, 2, 3, 4, 5, 6]
            assert [mine[c]["invoice_no"] for c in offline] == [4, 5, 6]
            wait_until(lambda: till.status()["last_error"] is None, "a clean round")
            status = till.status()
            assert status["last_contact"] and status["relay"] == relay.url
        finally:
            stop(daemon, signal.SIGINT, timeout=10)
            log.close()
        output = (tmp_path / "run.log").read_text()
        assert "sync failed" in output and "retrying in" in output, output[-2000:]
        assert "Traceback" not in output.split("KeyboardInterrupt")[0], output[-3000:]
