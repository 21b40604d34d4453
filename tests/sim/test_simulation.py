"""The deterministic simulation, driven by Hypothesis (see ``tests/sim/machine.py``).

CI runs a quick profile; ``TILLSYNC_HYPOTHESIS_PROFILE=long`` runs the long one, and
``TILLSYNC_SIM_STATS=FILE`` writes its figures (examples, steps, faults, violations).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.sim.machine import STATS, ShopMachine, machine_settings, summary


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    STATS.clear()
    yield
    figures = summary()
    print(f"\nsimulation figures: {json.dumps(figures, sort_keys=True)}")
    if os.environ.get("TILLSYNC_SIM_STATS"):
        with open(os.environ["TILLSYNC_SIM_STATS"], "w") as out:
            json.dump(figures, out, indent=1, sort_keys=True)


TestShop = ShopMachine.TestCase
TestShop.settings = machine_settings(ci_examples=100, long_examples=10_000, steps=40)
