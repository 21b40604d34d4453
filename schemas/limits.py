"""The one integer range of tillsync, read from ``common.json``.

Every integer in an entry body or a master record (money, integer quantities) lies within
``-INTEGER_MAX .. INTEGER_MAX`` (2^53 - 1: JavaScript front ends read such numbers
exactly, and sums of very many of them stay far inside the signed 64-bit integers both
relay databases store), and quantities are below ``QUANTITY_LIMIT`` units, so a quantity
in millionths is inside the range too.  The schema files say so for what they can; the
figures an entry implies but no schema can bound (a line's ``qty * unit_price -
discount``, a sale's total) are checked by ``peer.totals.figures_problem``, the same
code at the till (``Till.record`` refuses the entry) and at the relay (a ``rejected``
receipt with code ``out_of_range``).
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from typing import Any

__all__ = ["INTEGER_MAX", "OUT_OF_RANGE", "QUANTITY_LIMIT", "in_range"]

OUT_OF_RANGE = "out_of_range"
"""The code of a receipt refusing an entry whose figures leave the range."""


@functools.cache
def _defs() -> dict[str, Any]:
    text = (files(__name__.rpartition(".")[0] or "schemas") / "common.json").read_text(
        encoding="utf-8")
    defs: dict[str, Any] = json.loads(text)["$defs"]
    return defs


INTEGER_MAX: int = int(_defs()["money"]["maximum"])
"""2^53 - 1: the greatest magnitude of any integer tillsync stores or computes per entry."""

QUANTITY_LIMIT: int = int(_defs()["quantity"]["anyOf"][0]["maximum"]) + 1
"""Quantities are smaller than this in size (10^9 units)."""


def in_range(value: int) -> bool:
    """True if ``value`` is within ``-INTEGER_MAX .. INTEGER_MAX``."""
    return -INTEGER_MAX <= value <= INTEGER_MAX
