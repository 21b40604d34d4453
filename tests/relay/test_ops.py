"""Running a relay: what it refuses at start, and faults of its disk named as what they
are, against real relay processes and tills driven by the command line.

SQLite only where the case is SQLite's (one process per data folder, the data folder's
disk); the disk faults are real (a small tmpfs filled up or mounted read-only,
``tests/disks.py``).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.disks import Disk, tiny_disk
from tests.relay.databases import pg_query
from tests.relay.processes import RelayProcess, Relays, TillDir, run_cli
from tillsync.relay.faults import storage_fault


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    yield from tiny_disk(tmp_path / "disk")


def one_line_refusal(result: Any, code: int) -> str:
    """The command failed with ``code`` and said why in one line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tillsync: "), result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


def shop(relay: RelayProcess, till: TillDir, store: str = "shop1") -> str:
    """An enrolled till with a product, a cashier and an open shift; returns the shift."""
    till.init(relay, store)
    till.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
    till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    shift: str = till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})["client_id"]
    return shift


def sell(till: TillDir, shift: str) -> dict[str, Any]:
    return till.record("sale", {"lines": [{"product_id": "bread", "qty": "1", "unit_price": 320}],
                                "payments": [{"method": "cash", "amount": 320}],
                                "shift_client_id": shift})


def test_serve_on_a_busy_port_says_so_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "relay"
        result = run_cli("relay", "serve", "--data", str(data), "--port", str(port),
                         check=False)
        line = one_line_refusal(result, 2)
        assert f"port {port}" in line and "already in use" in line
        assert not data.exists()


def test_a_second_relay_on_one_sqlite_data_folder_is_refused(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        first = relays.start()
        result = run_cli("relay", "serve", "--data", str(first.data), "--port", "0",
                         check=False)
        line = one_line_refusal(result, 3)
        assert "already served by a relay" in line
        first.kill()  # a kill -9 leaves no lock behind: the relay starts again
        first.start(port=0)
        till = TillDir(tmp_path / "till", "Till 1")
        shift = shop(first, till)
        sell(till, shift)
        assert till.sync_json()["pending"] == 0


def test_serve_on_a_read_only_data_folder_refuses_to_start(tmp_path: Path, disk: Disk
                                                           ) -> None:
    data = disk.mount / "relay"
    run_cli("relay", "migrate", "--data", str(data))
    disk.remount("ro")
    result = run_cli("relay", "serve", "--data", str(data), "--port", "0", check=False)
    line = one_line_refusal(result, 2)
    assert "read-only" in line and str(data) in line


@pytest.mark.parametrize("verb", [["enroll", "--name", "Till 1"], ["token"],
                                  ["revoke", "--device", "d"]])
def test_a_verb_on_a_relay_refuses_a_folder_without_one(tmp_path: Path, verb: list[str]
                                                       ) -> None:
    """A mistyped --data is not a new relay: its codes would be for no running relay."""
    typo = tmp_path / "rleay"
    result = run_cli("relay", verb[0], "--data", str(typo), "--store", "s", *verb[1:],
                     check=False)
    line = one_line_refusal(result, 2)
    assert "no relay in" in line and "relay migrate --data" in line
    assert not typo.exists()


@pytest.mark.parametrize("hours", ["0", "-1", "nan"])
def test_enroll_refuses_a_code_dead_on_arrival(tmp_path: Path, hours: str) -> None:
    result = run_cli("relay", "enroll", "--data", str(tmp_path / "relay"), "--store", "s",
                     "--name", "Till 1", "--hours", hours, check=False)
    assert "--hours must be" in one_line_refusal(result, 2)


def test_a_full_relay_disk_is_named_to_the_till_and_in_the_log(tmp_path: Path, disk: Disk
                                                                ) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start(data=disk.mount / "relay")
        till = TillDir(tmp_path / "till", "Till 1")
        shift = shop(relay, till)
        assert till.sync_json()["pending"] == 0
        disk.fill()
        sold = [sell(till, shift) for _ in range(20)]
        result = till.sync(check=False)
        assert result.returncode == 4, (result.stdout, result.stderr)
        assert "the relay's disk is full" in result.stderr
        assert "internal error" not in result.stderr
        assert relay.wait_log("storage_full")
        log = relay.stderr()
        assert "database or disk is full" in log and "Traceback" not in log
        assert "disk is full" in json.dumps(till.status()["last_error"])
        disk.free()  # space again: everything goes up, nothing was lost
        assert till.sync_json()["pending"] == 0
        numbered = {r["client_id"] for r in till.receipts(mine=True) if "invoice_no" in r}
        assert {s["client_id"] for s in sold} <= numbered


def test_storage_faults_are_told_apart(tmp_path: Path) -> None:
    """The codes on the wire for what SQLite and the OS say (the read-only case as SQLite
    raises it on a database it may only read)."""
    db = tmp_path / "r.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        reader.execute("INSERT INTO t VALUES (1)")
    fault = storage_fault(readonly.value)
    assert fault is not None and fault.code == "storage_read_only"
    wrapped = RuntimeError("ingest failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    fault = storage_fault(wrapped)
    assert fault is not None and fault.code == "storage_full"
    assert storage_fault(ValueError("a bug")) is None


@pytest.mark.postgres
def test_a_database_out_of_reach_is_named_to_the_till_and_in_the_log(tmp_path: Path,
                                                                     pg_db: str) -> None:
    with Relays(tmp_path, pg_db) as relays:
        relay = relays.start()
        till = TillDir(tmp_path / "till", "Till 1")
        shift = shop(relay, till)
        assert till.sync_json()["pending"] == 0
        name = pg_db.rsplit("/", 1)[1]
        admin = pg_db.rsplit("/", 1)[0] + "/postgres"
        pg_query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pg_query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        f"datname = '{name}'")
        try:
            sell(till, shift)
            result = till.sync(check=False)
            assert result.returncode == 4, (result.stdout, result.stderr)
            assert "cannot reach its database" in result.stderr, relay.stderr()[-1500:]
            assert relay.wait_log("storage_unavailable")
            assert "Traceback" not in relay.stderr(), relay.stderr()[-3000:]
        finally:
            pg_query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert till.sync_json()["pending"] == 0  # back: nothing was lost
