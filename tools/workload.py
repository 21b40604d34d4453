"""What the benchmarks share: the machine line, percentiles, progress, the generated
catalogue and sales, so every benchmark measures the same work the same way."""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from tillsync.peer.totals import sale_total

WEIGHT = "0.75"  # kg of a weighed line
PIECE_PRODUCTS = 40
WEIGHED_PRODUCTS = 10


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100), at least 1
    return ordered[min(len(ordered), int(rank)) - 1]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "automerge": version("automerge"),
        "sqlite": sqlite3.sqlite_version,
        "aiosqlite": version("aiosqlite"),
        "jsonschema": version("jsonschema"),
        "cryptography": version("cryptography"),
    }


def products_for_sales() -> dict[str, dict[str, Any]]:
    """A small shop: pieces with stock, and weighed goods sold by the kg."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(PIECE_PRODUCTS):
        out[f"piece-{i:03d}"] = {"name": f"Item {i}", "sku": f"P{i:05d}", "price": 99 + 37 * i,
                                 "reorder_level": "5", "unit": "each"}
    for i in range(WEIGHED_PRODUCTS):
        out[f"kg-{i:03d}"] = {"name": f"Loose goods {i}", "sku": f"W{i:05d}",
                              "price": 249 + 110 * i, "unit": "kg", "volatile": i % 2 == 0}
    return out


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def sale_body(rng: random.Random, catalogue: dict[str, dict[str, Any]], pieces: list[str],
              weighed: list[str], shift: str) -> dict[str, Any]:
    """A valid sale (schemas/entries/sale.json): 1-5 lines, about one in four weighed at a
    market price; paid in cash or by card, with the till's own total."""
    lines: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.25:
            product = rng.choice(weighed)
            qty: int | str = WEIGHT
            price = catalogue[product]["price"] + rng.randint(-20, 20)  # market price
        else:
            product = rng.choice(pieces)
            qty = rng.randint(1, 3)
            price = catalogue[product]["price"]
        lines.append({"product_id": product, "qty": qty, "unit_price": price})
    amount = sale_total(lines)
    method = "cash" if rng.random() < 0.6 else "card"
    return {"lines": lines, "payments": [{"method": method, "amount": amount}],
            "shift_client_id": shift, "client_total": amount}
