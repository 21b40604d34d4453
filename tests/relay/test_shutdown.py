"""``relay serve`` (one process, or ``--workers N``) stops when told to (SIGTERM,
SIGINT): the batches it has taken in commit and are answered, the rest is not stored
and goes up again; links are closed with 1001; a second signal exits at once.

Real processes throughout (``tests/relay/processes.py``); the time bounds are liveness
checks, not benchmarks.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles import SHIFT
from tests.peer.lan_processes import wait_until
from tests.relay.processes import ENV, RelayProcess, Relays, TillDir, query
from tests.relay.stops import intact, record_sales, stopped

PRODUCTS = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
            ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})]
PHASES = ("SIGTERM received", "no longer accepting connections", "batches in flight",
          "links (going away", "the relay stopped")


def shop_till(tmp_path: Path, relay: RelayProcess) -> TillDir:
    till = TillDir(tmp_path / "till", "Till 1")
    till.init(relay, "shop")
    till.put_many(PRODUCTS)
    till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
    return till


def stop_relay(relay: RelayProcess, signum: int) -> int:
    assert relay.proc is not None
    return stopped(relay.proc, signum, "the relay", relay.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_relay_stops_in_the_middle_of_an_ingest_and_loses_nothing(
    tmp_path: Path, relay_db: str | None, signum: int
) -> None:
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start()
        till = shop_till(tmp_path, relay)
        recorded = record_sales(till, 6000)
        pushing = subprocess.Popen(
            [sys.executable, "-m", "tillsync.tools.cli", "peer", "sync", str(till.path), "--once"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            wait_until(lambda: query(relay, "SELECT count(*) FROM invoices")[0][0] > 0,
                       "the first sales to be numbered")
            assert stop_relay(relay, signum) == 0, relay.stderr()[-3000:]
            pushing.wait(timeout=60)  # its round fails (or had just finished)
        finally:
            if pushing.poll() is None:
                pushing.kill()
                pushing.wait()
        log = relay.stderr()
        for phase in PHASES:
            assert phase.replace("SIGTERM", signal.Signals(signum).name) in log, log[-3000:]
        intact(till, relay, recorded)


def frozen_link(port: int) -> socket.socket:
    """A websocket link that completes its opening handshake and then never reads or
    answers again (a device frozen with its connection open)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


@pytest.mark.slow
def test_a_second_signal_makes_the_relay_exit_at_once(tmp_path: Path) -> None:
    """The first stop waits for a frozen device to answer its closing frame; a second
    signal does not wait, and exits with 128 + its number.  Nothing it had stored is
    touched: the till's sales are all there after a restart."""
    with Relays(tmp_path) as relays:
        relay = relays.start()
        till = shop_till(tmp_path, relay)
        recorded = record_sales(till, 20)
        till.sync()
        frozen = frozen_link(relay.port)
        try:
            assert relay.proc is not None
            relay.proc.send_signal(signal.SIGTERM)
            assert relay.wait_log("closing 1 links"), relay.stderr()[-3000:]
            assert stop_relay(relay, signal.SIGINT) == 128 + signal.SIGINT
        finally:
            frozen.close()
        assert "second signal (SIGINT)" in relay.stderr()
        intact(till, relay, recorded)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_relay_workers_stop_gracefully_and_take_their_workers_with_them(
    tmp_path: Path, pg_db: str, signum: int
) -> None:
    out = tmp_path / "workers.out"
    with open(out, "wb") as stdout:
        parent = subprocess.Popen(
            [sys.executable, "-m", "tillsync.tools.cli", "relay", "serve", "--data",
             str(tmp_path / "data"), "--db", pg_db, "--port", "0", "--workers", "2"],
            stdout=stdout, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        listening = wait_until(lambda: re.search(r"worker processes: (\d+), (\d+)",
                                                 out.read_text()), "the workers to listen")
        workers = [int(pid) for pid in listening.groups()]
        assert stopped(parent, signum, "the relay's parent", out.read_text) == 0
        log = out.read_text()
        assert log.count("the relay stopped") == 2, log[-3000:]
        assert "the relay workers stopped" in log, log[-3000:]
        for pid in workers:
            wait_until(lambda pid=pid: not _alive(pid), f"worker {pid} to be gone", 5.0)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
