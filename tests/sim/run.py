"""Run the simulation from a seed alone, without Hypothesis: the seed picks the actions
too.  ``python -m tests.sim.run --seed 7 --steps 200`` (add ``--trace`` to print what
happened); the same seed always does the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.sim.machine import OTHER_KINDS
from tests.sim.network import Faults
from tests.sim.world import World, template


async def random_run(base: Path, seed: int, steps: int, n_tills: int = 3,
                     faults: bool = True, edits: bool = True, trace: bool = False) -> World:
    """``steps`` actions picked by ``random.Random(seed)``, then heal, settle and check
    everything.  Returns the world (stopped); raises ``Violation`` if anything fails.

    Everything the simulation decides comes from the seed, but Automerge stamps each new
    change with the wall clock, so a run with ``edits`` makes other change hashes each
    time, and the document exchange may take another number of messages; without edits
    a run repeats frame for frame."""
    tpl = await template(n_tills)
    world = World(base / f"seed-{seed}", tpl, seed)
    world.net.tracing = trace
    pick = random.Random(seed ^ 0x5EED)
    await world.start()
    try:
        for _ in range(steps):
            i = pick.randrange(n_tills)
            roll = pick.random()
            world.stats["steps"] += 1
            if roll < 0.25:
                await world.sale(i, pick.randint(1, 3), pick.choice(("cash", "card", "account")),
                                 pick.random() < 0.5)
            elif roll < 0.30:
                await world.hold(i, pick.randint(1, 2))
            elif roll < 0.34:
                await world.open_shift(i)
            elif roll < 0.37:
                await world.close_shift(i)
            elif roll < 0.45:
                await world.other(i, pick.choice(OTHER_KINDS))
            elif roll < 0.47:
                await world.retry_last(i)
            elif edits and roll < 0.53:
                products = world.products_at(i)
                if products:
                    await world.put_price(i, pick.choice(products))
            elif edits and roll < 0.55:
                await world.new_product(i, pick.random() < 0.5)
            elif faults and roll < 0.58:
                world.net.partition(world.tills[i].name, world.relay.name)
            elif faults and roll < 0.61:
                world.net.heal(world.tills[i].name, world.relay.name)
            elif faults and roll < 0.63:
                world.net.faults = Faults(*(pick.choice((0.0, 0.05, 0.2)) for _ in range(5)))
            elif faults and roll < 0.65:
                await world.crash_till(i)
            elif faults and roll < 0.67:
                await world.crash_relay(pick.choice((0.0, 2.0, 20.0)))
            elif faults and roll < 0.68 and world.relay.up:
                world.relay.fail_next_commit = True
            elif faults and roll < 0.69 and world.relay.up:
                world.relay.stall = pick.choice((5.0, 35.0))
            else:
                await world.advance(pick.choice((0.002, 0.02, 0.2, 1.0, 5.0, 20.0)))
            world.check_relay()
        await world.settle()
        await world.check_final()
    finally:
        await world.stop()
    return world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tills", type=int, default=3)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tillsync-sim-"))
    try:
        world = asyncio.run(random_run(base, args.seed, args.steps, args.tills, trace=args.trace))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    figures: dict[str, Any] = dict(world.stats)
    figures.update(virtual_seconds=round(world.sched.now, 3), events=world.sched.events_run)
    if args.trace:
        print("\n".join(world.net.trace))
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
