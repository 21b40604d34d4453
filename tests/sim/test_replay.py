"""The simulation itself: a seed replays exactly, and a run without faults is quiet."""

from __future__ import annotations

from pathlib import Path

from tests.sim.run import random_run


async def test_the_same_seed_replays_the_same_run(tmp_path: Path) -> None:
    """Frame for frame, when no master data is edited (Automerge stamps new changes with
    the wall clock, see ``random_run``)."""
    first = await random_run(tmp_path / "a", seed=11, steps=150, edits=False, trace=True)
    again = await random_run(tmp_path / "b", seed=11, steps=150, edits=False, trace=True)
    other = await random_run(tmp_path / "c", seed=12, steps=150, edits=False, trace=True)

    assert len(first.net.trace) > 100  # frames really moved
    assert first.net.trace == again.net.trace
    assert first.stats == again.stats and first.sched.now == again.sched.now
    assert first.net.trace != other.net.trace


async def test_without_faults_every_round_succeeds(tmp_path: Path) -> None:
    world = await random_run(tmp_path, seed=5, steps=120, faults=False)

    assert world.stats["rounds_ok"] > 10
    assert world.stats["rounds_failed"] == 0
    assert world.stats["entries_sale"] > 10
    assert not any(k.startswith("frames_") and k != "frames_delivered" for k in world.stats)
