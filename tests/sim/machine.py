"""The Hypothesis state machine over the simulated shop.

Rules act on tills (sales, held sales, shifts, every other entry kind, concurrent edits
of the same product fields), on the network (partitions, dropped, duplicated, reordered
and delayed frames) and on processes (kill -9 and restart of a till or the relay, a
commit the disk refuses), and let simulated time pass.  The relay's invariants are
checked after every step; at the end everything is healed, run until quiescent, and
the whole system is checked (``World.check_final``).

Figures of every run are added to ``STATS`` (examples, steps, faults injected,
violations found); ``TILLSYNC_SIM_STATS=FILE`` makes the test module write them as JSON.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.sim.network import Faults
from tests.sim.world import World, scratch, template

T = TypeVar("T")
N_TILLS = 3
PROFILE = os.environ.get("TILLSYNC_HYPOTHESIS_PROFILE", "ci")
STATS: Counter[str] = Counter()
OTHER_KINDS = ("cash_movement", "stock_move", "refund", "customer_payment", "purchase_order",
               "journal_entry", "attendance", "leave_request", "expense")
FAULT_KEYS = ("connections_reset", "frames_duplicated", "frames_reordered", "frames_delayed",
              "frames_tampered",
              "frames_lost_to_faults", "partitions", "till_crashes", "relay_crashes",
              "commit_faults", "disk_stalls")

def machine_settings(ci_examples: int, long_examples: int, steps: int) -> settings:
    return settings(max_examples=long_examples if PROFILE == "long" else ci_examples,
                    stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


tills = st.integers(0, N_TILLS - 1)
rates = st.sampled_from((0.0, 0.0, 0.02, 0.1, 0.3))


class ShopMachine(RuleBasedStateMachine):
    runs = 0
    strict_doc = True
    lan = True  # tills also link to each other on the shop's LAN

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world: World | None = None
        self.broken = False
        self.steps = 0
        self.started = time.monotonic()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        self.broken = True  # stays so if this raises: teardown then only cleans up
        result = self.loop.run_until_complete(coro)
        self.broken = False
        return result

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    def act(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.steps += 1
        self.run(coro)

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        tpl = self.run(template(N_TILLS))
        ShopMachine.runs += 1
        self.world = World(scratch() / f"run-{os.getpid()}-{ShopMachine.runs}", tpl, seed)
        self.world.strict_doc = self.strict_doc
        self.world.lan = self.lan
        self.run(self.w.start())

    # -- the counter ------------------------------------------------------------------

    @rule(i=tills, n=st.integers(1, 3), method=st.sampled_from(("cash", "card", "account")),
          resume=st.booleans())
    def sale(self, i: int, n: int, method: str, resume: bool) -> None:
        self.act(self.w.sale(i, n, method, resume))

    @rule(i=tills, n=st.integers(1, 2))
    def hold(self, i: int, n: int) -> None:
        self.act(self.w.hold(i, n))

    @rule(i=tills)
    def open_shift(self, i: int) -> None:
        self.act(self.w.open_shift(i))

    @rule(i=tills)
    def close_shift(self, i: int) -> None:
        self.act(self.w.close_shift(i))

    @rule(i=tills, kind=st.sampled_from(OTHER_KINDS))
    def other_entry(self, i: int, kind: str) -> None:
        self.act(self.w.other(i, kind))

    @rule(i=tills)
    def retry_last(self, i: int) -> None:
        self.act(self.w.retry_last(i))

    # -- master data, edited concurrently ----------------------------------------------

    @rule(i=tills, k=st.integers(0, 7))
    def edit_price(self, i: int, k: int) -> None:
        products = self.w.products_at(i)
        if products:
            self.act(self.w.put_price(i, products[k % len(products)]))

    @rule(i=tills, k=st.integers(0, 7), field=st.sampled_from(("name", "reorder_level")))
    def edit_field(self, i: int, k: int, field: str) -> None:
        products = self.w.products_at(i)
        if products:
            self.act(self.w.put_field(i, products[k % len(products)], field))

    @rule(i=tills, volatile=st.booleans())
    def new_product(self, i: int, volatile: bool) -> None:
        self.act(self.w.new_product(i, volatile))

    # -- faults ------------------------------------------------------------------------

    @rule(i=tills, op=st.sampled_from(("partition", "heal", "frames", "frames", "clean")),
          drop=rates, duplicate=rates, reorder=rates, delay=rates, tamper=rates)
    def network(self, i: int, op: str, drop: float, duplicate: float, reorder: float,
                delay: float, tamper: float) -> None:
        """Cut or heal a till's link to the relay; set the per-frame fault rates."""
        self.steps += 1
        net, till = self.w.net, self.w.tills[i].name
        if op == "partition":
            net.partition(till, self.w.relay.name)
        elif op == "heal":
            net.heal(till, self.w.relay.name)
        else:
            net.faults = (Faults(drop, duplicate, reorder, delay, tamper) if op == "frames"
                          else Faults())

    @rule(i=tills, op=st.sampled_from(("partition", "heal")))
    def lan_link(self, i: int, op: str) -> None:
        """Cut or heal the LAN between two tills."""
        self.steps += 1
        a, b = self.w.tills[i].name, self.w.tills[(i + 1) % N_TILLS].name
        if op == "partition":
            self.w.net.partition(a, b)
        else:
            self.w.net.heal(a, b)

    @rule(i=tills, op=st.sampled_from(("till", "till", "relay", "commit")),
          seconds=st.sampled_from((0.0, 0.5, 3.0, 20.0)))
    def process(self, i: int, op: str, seconds: float) -> None:
        """kill -9 and restart a till or the relay (down for ``seconds``), or make the
        relay's next commit fail."""
        if op == "till":
            self.act(self.w.crash_till(i))
        elif op == "relay":
            self.act(self.w.crash_relay(seconds))
        elif self.w.relay.up:
            self.steps += 1
            self.w.relay.fail_next_commit = True

    @rule(seconds=st.sampled_from((5.0, 35.0, 60.0)))
    def disk_stall(self, seconds: float) -> None:
        """The relay's next commit waits for the disk; past 30 s the tills give up on
        their round and send the same entries again."""
        self.steps += 1
        if self.w.relay.up:
            self.w.relay.stall = seconds
            self.w.stats["disk_stalls"] += 1

    # -- time ----------------------------------------------------------------------------

    @rule(dt=st.sampled_from((0.002, 0.01, 0.03, 0.1, 0.5)))
    def moment(self, dt: float) -> None:
        """A moment passes: a few frames move (crashes then land between them)."""
        self.act(self.w.advance(dt))

    @rule(dt=st.sampled_from((2.0, 6.0, 15.0, 40.0)))
    def wait(self, dt: float) -> None:
        """Seconds pass: sync rounds run."""
        self.act(self.w.advance(dt))

    @invariant()
    def relay_holds(self) -> None:
        if self.world is not None:
            self.broken = True
            self.w.raise_violations()
            self.w.check_relay()
            self.broken = False

    def teardown(self) -> None:
        world = self.world
        try:
            if world is not None and not self.broken:
                self.run(world.settle())
                self.run(world.check_final())
                STATS["examples"] += 1
            elif world is not None:
                STATS["violations"] += 1
        finally:
            try:
                if world is not None:
                    STATS["steps"] += self.steps
                    STATS["virtual_seconds"] += int(world.sched.now)
                    STATS["events"] += world.sched.events_run
                    STATS.update({k: v for k, v in world.stats.items()})
                    STATS.update({f"round_error_{k}": v for k, v in world.round_errors.items()})
                    STATS["relay_commits"] += world.relay.commits
                    self.loop.run_until_complete(world.stop())
                    shutil.rmtree(world.root, ignore_errors=True)
            finally:
                self.loop.close()
                STATS["wall_ms"] += int(1000 * (time.monotonic() - self.started))


def summary() -> dict[str, Any]:
    figures: dict[str, Any] = dict(STATS)
    figures["faults_injected"] = sum(STATS[k] for k in FAULT_KEYS if k != "frames_lost_to_faults")
    figures["profile"] = PROFILE
    return figures
