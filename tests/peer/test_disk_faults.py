"""A till on a full or read-only disk says so, and calls nothing damaged: real CLI
processes on a small tmpfs (``tests/disks.py``) filled to the last byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.disks import Disk, tiny_disk
from tests.relay.processes import run_cli


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    yield from tiny_disk(tmp_path / "disk", size="4m")


def put(path: Path, record_id: str) -> object:
    return run_cli("peer", "put", str(path), "products", record_id, "--body",
                   json.dumps({"name": "Bread", "sku": record_id, "price": 320}), check=False)


def test_a_full_disk_is_named_full_not_damaged(disk: Disk) -> None:
    till = disk.mount / "till"
    run_cli("peer", "init", str(till), "--name", "Till 1")
    assert put(till, "bread").returncode == 0  # type: ignore[attr-defined]
    disk.fill()
    for result in (put(till, "rolls"),
                   run_cli("peer", "status", str(till), check=False),
                   run_cli("peer", "verify", str(till), check=False)):
        if result.returncode == 0:  # a read may still work on a full disk: fine
            assert "FAILED" not in result.stdout
            continue
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert "disk holding the store is full" in result.stderr
        assert "damaged" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
    disk.free()  # nothing was damaged: it works again
    assert put(till, "rolls").returncode == 0  # type: ignore[attr-defined]
    assert "ok:" in run_cli("peer", "verify", str(till)).stdout


def test_a_read_only_disk_is_named_read_only(disk: Disk) -> None:
    till = disk.mount / "till"
    run_cli("peer", "init", str(till), "--name", "Till 1")
    disk.remount("ro")
    result = run_cli("peer", "status", str(till), check=False)
    assert result.returncode in (0, 3), result.stderr
    if result.returncode:
        assert "read-only" in result.stderr and "damaged" not in result.stderr
    result = put(till, "bread")
    assert result.returncode == 3  # type: ignore[attr-defined]
    assert "read-only" in result.stderr and "Traceback" not in result.stderr  # type: ignore[attr-defined]
