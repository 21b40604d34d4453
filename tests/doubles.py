"""Shared test doubles and builders: one place, imported by every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tillsync.peer.store import Till

REPO = Path(__file__).resolve().parent.parent
SHIFT = "11111111-1111-4111-8111-111111111111"


def cli(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the real ``tillsync`` command line in a separate process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.cli", *args],
        capture_output=True, text=True, env=env, timeout=60, **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"tillsync {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


async def stocked_till(path: Path, name: str = "Till 1") -> Till:
    """A store with a few products, a cashier, a customer and an open shift (SHIFT)."""
    await Till.init(path, name=name)
    till = await Till.open(path)
    await till.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320,
                                         "reorder_level": "5"})
    await till.put("products", "tomato", {"name": "Tomatoes", "sku": "T1", "price": 450,
                                          "volatile": True, "unit": "kg"})
    await till.put("products", "cheese", {"name": "Cheese", "sku": "C1", "price": 1890,
                                          "unit": "kg"})
    await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    await till.put("customers", "bob", {"name": "Bob", "credit_limit": 50000})
    await till.put("suppliers", "mill", {"name": "The Mill"})
    await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 10000},
                      client_id=SHIFT)
    return till


def sale(*lines: tuple[str, int | str, int], cash: int | None = None,
         **extra: Any) -> dict[str, Any]:
    """A sale body: lines of (product, qty, unit price), paid in cash by default."""
    body_lines = [{"product_id": p, "qty": q, "unit_price": u} for p, q, u in lines]
    if cash is None:
        from decimal import Decimal

        cash = int(sum(Decimal(q) * u for _, q, u in lines))
    body: dict[str, Any] = {"lines": body_lines,
                            "payments": [{"method": "cash", "amount": cash}],
                            "shift_client_id": SHIFT}
    body.update(extra)
    return body


def deliver(a: Any, b: Any, events_a: list[Any], events_b: list[Any], sent_by_a: list[bytes],
            sent_by_b: list[bytes]) -> None:
    """Wire two sans-I/O links (``data_to_send``/``receive_data``/``events_received``)
    back to back: deliver frames both ways until neither has anything left to send,
    collecting each side's events and the frames each sent."""
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_b and not to_a:
            return
        sent_by_a += to_b
        sent_by_b += to_a
        for frame in to_b:
            b.receive_data(frame)
            events_b += b.events_received()
        for frame in to_a:
            a.receive_data(frame)
            events_a += a.events_received()
