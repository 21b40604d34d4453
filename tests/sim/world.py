"""The simulated shop: a relay and N tills on a simulated network, plus what the test
knows independently of the code under test (the model) and the invariants checked
against it.

Everything runs on one asyncio loop, one event at a time: ``World.advance`` runs the
scheduler; the actions (record a sale, edit a price, crash a node, cut a link) run
between events.  Given the seed and the same sequence of actions, a run repeats exactly.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import random
import shutil
import sqlite3
import tempfile
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.sim.network import Network, Scheduler
from tests.sim.nodes import RelayNode, TillNode, Violation
from tillsync.peer.identity import DeviceKey
from tillsync.peer.master import MasterData
from tillsync.peer.store import Till
from tillsync.relay.server import code_hash
from tillsync.relay.storage import SQLiteStorage

STORE = "store-sim"
TAMPERED_CODES = ("bad_signature", "conflicting_entry", "broken_chain")
RELAY = "relay"


def det_key(label: str) -> DeviceKey:
    seed = hashlib.sha256(b"tillsync-sim/" + label.encode()).digest()
    return DeviceKey(Ed25519PrivateKey.from_private_bytes(seed))


def det_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(bytes=rng.randbytes(16), version=4))


def line_total(line: dict[str, Any]) -> int:
    """The spec, written again here: qty x unit price rounded half up, less discount."""
    gross = (Decimal(str(line["qty"])) * line["unit_price"]).quantize(Decimal(1), ROUND_HALF_UP)
    return int(gross) - int(line.get("discount", 0))


# -- the template: stores made once per process, copied for every run -----------------

PRODUCTS = {  # id -> (name, price, volatile, reorder level)
    "p-bread": ("Bread", 320, False, "5"),
    "p-milk": ("Milk", 115, False, None),
    "p-cheese": ("Cheese", 1890, False, "2"),
    "p-soap": ("Soap", 250, False, None),
    "p-tomato": ("Tomatoes", 450, True, None),
    "p-fish": ("Fish", 1200, True, None),
}
CASHIERS = ("c-ann", "c-bob")
CUSTOMERS = ("k-carl", "k-dora")
SUPPLIERS = ("s-mill",)


@dataclass
class Template:
    root: Path
    tills: list[str]
    device_ids: dict[str, str]


_TEMPLATES: dict[int, Template] = {}


_SCRATCH: Path | None = None


def scratch() -> Path:
    """One scratch directory per process, in memory when the machine has /dev/shm."""
    global _SCRATCH
    if _SCRATCH is None:
        parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _SCRATCH = Path(tempfile.mkdtemp(prefix="tillsync-sim-", dir=parent))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


async def template(n_tills: int) -> Template:
    """Relay with every till enrolled, tills holding the same seeded master data (all
    but the last, which starts with an empty document)."""
    if n_tills in _TEMPLATES:
        return _TEMPLATES[n_tills]
    base = scratch()
    root = base / f"template-{n_tills}"
    if root.exists():
        shutil.rmtree(root)
    relay_dir = root / RELAY / "gen0"
    relay_dir.mkdir(parents=True, mode=0o700)
    relay_key = det_key("relay")
    relay_key.write(relay_dir, "relay.key")
    storage = await SQLiteStorage.open(relay_dir / "relay.db")
    names = [f"till{i}" for i in range(n_tills)]
    device_ids = {}
    try:
        for name in names:
            key = det_key(name)
            device_id = str(uuid.UUID(bytes=hashlib.sha256(name.encode()).digest()[:16],
                                      version=4))
            device_ids[name] = device_id
            code = f"CODE-{name}"
            # Admin: every simulated till also edits prices (a till-role device would
            # refuse that itself, peer.store.Till.put).
            await storage.add_code(STORE, code_hash(code), name, "admin",
                                   "2099-01-01T00:00:00Z")
            row = await storage.enroll(code_hash(code), device_id, name, key.public_bytes,
                                       "2026-05-01T07:00:00.000Z")
            assert not isinstance(row, str), row
            await Till.init(root / name / "gen0", name=name.capitalize(), store_id=STORE,
                            key=key, device_id=device_id, relay_url="sim://relay",
                            relay_key=relay_key.public_bytes)
    finally:
        await storage.close()
    # Seed master data on till0 and let everyone sync it: the template is a converged shop.
    tpl = Template(root, names, device_ids)
    world = World(base / f"template-run-{n_tills}", tpl, seed=0)
    await world.start(n_tills - 1)  # the last till stays fresh: an empty document
    till = world.tills[0].till
    assert till is not None
    for pid, (name, price, volatile, level) in PRODUCTS.items():
        body: dict[str, Any] = {"name": name, "sku": pid.upper(), "price": price,
                                "volatile": volatile}
        if level is not None:
            body["reorder_level"] = level
        await till.put("products", pid, body)
    for cid in CASHIERS:
        await till.put("cashiers", cid, {"name": cid[2:].title(), "role": "cashier",
                                         "pin": "1234"})
    for cid in CUSTOMERS:
        await till.put("customers", cid, {"name": cid[2:].title(), "credit_limit": 100000})
    for sid in SUPPLIERS:
        await till.put("suppliers", sid, {"name": "The Mill"})
    await world.settle()
    await world.stop()
    # the run wrote to its own copy; keep its final disk state as the template
    shutil.rmtree(root)
    (base / f"template-run-{n_tills}").rename(root)
    for name in [RELAY, *names]:
        gen = max((p for p in (root / name).iterdir()), key=lambda p: int(p.name[3:]))
        if gen.name != "gen0":
            gen.rename(root / name / "gen0")
    _TEMPLATES[n_tills] = tpl
    return tpl


def check_relay_db(db: sqlite3.Connection, store: str, volatile: Mapping[str, bool],
                   tampered: Set[str] = frozenset()) -> int:
    """The relay's invariants, read from its database: the receipt stream is contiguous
    and decides each entry once, no honest entry is rejected, invoice numbers are gapless
    per series with one per sale, totals are the lines', every shift close and resumed
    held sale names its own, and the stock of every tracked product is the sum of its
    moves.  ``tampered`` names entries of which an altered copy was sent: those copies
    are rejected (and a rejection never replaces an acceptance).  Returns the stream
    position."""
    entries = {r[0]: (r[1], msgpack.unpackb(r[2], raw=False), r[3], r[4]) for r in
               db.execute("SELECT client_id, kind, body, device_id, seq FROM entries "
                          "WHERE store = ?", (store,))}
    stream = [msgpack.unpackb(r[0], raw=False) for r in
              db.execute("SELECT data FROM receipts WHERE store = ? ORDER BY server_seq",
                         (store,))]
    invoices = list(db.execute("SELECT series, invoice_no, client_id, total FROM invoices "
                               "WHERE store = ? ORDER BY series, invoice_no", (store,)))
    stock = {r[0]: r[1] for r in db.execute("SELECT product_id, qty FROM stock "
                                            "WHERE store = ?", (store,))}
    head = list(db.execute("SELECT seq FROM stream_heads WHERE store = ?", (store,)))
    position = head[0][0] if head else 0

    # the receipt stream: contiguous, chained, one decision per entry at a time
    if [r["server_seq"] for r in stream] != list(range(1, len(stream) + 1)) or \
            position != len(stream):
        raise Violation(f"receipt stream has gaps or a wrong head ({position})")
    latest: dict[str, dict[str, Any]] = {}
    accepted: dict[str, dict[str, Any]] = {}
    for r in stream:
        cid = r["client_id"]
        if r["status"] == "rejected":
            if cid in tampered and r["error"]["code"] in TAMPERED_CODES:
                continue  # the altered copy, refused; the genuine entry is decided apart
            raise Violation(f"an honest entry was rejected: {r['kind']} {cid}: "
                            f"{r.get('error')}")
        if r["status"] == "accepted":
            if cid in accepted:
                raise Violation(f"{r['kind']} {cid} accepted twice "
                                f"({accepted[cid].get('invoice_no')}, "
                                f"{r.get('invoice_no')})")
            accepted[cid] = r
        elif cid in accepted:
            raise Violation(f"{cid} went back from accepted to {r['status']}")
        latest[cid] = r
        if cid not in entries:
            raise Violation(f"receipt for {cid}, an entry the relay does not hold")

    # invoices: gapless per series, one per sale, matching the receipts
    by_series: dict[str, list[int]] = defaultdict(list)
    numbered: dict[str, tuple[str, int]] = {}
    for series, number, cid, total in invoices:
        by_series[series].append(number)
        if cid in numbered:
            raise Violation(f"sale {cid} has two invoice numbers")
        numbered[cid] = (series, number)
        if entries.get(cid, ("",))[0] != "sale":
            raise Violation(f"invoice {series}-{number} is for {cid}, not a sale held")
        expected = sum(line_total(line) for line in entries[cid][1]["lines"])
        if total != expected:
            raise Violation(f"invoice {series}-{number} total {total}, lines say {expected}")
    for series, numbers in by_series.items():
        if numbers != list(range(1, len(numbers) + 1)):
            raise Violation(f"invoice numbers of {series} are not gapless: {numbers[:20]}")
    for cid, r in accepted.items():
        kind, body = entries[cid][0], entries[cid][1]
        if kind == "sale":
            if (r.get("series"), r.get("invoice_no")) != numbered.get(cid):
                raise Violation(f"sale {cid}: receipt number {r.get('invoice_no')} but "
                                f"invoice row {numbered.get(cid)}")
            expected = sum(line_total(line) for line in body["lines"])
            if r.get("total") != expected or any(
                    w.get("code") == "total_mismatch" for w in r["warnings"]):
                raise Violation(f"sale {cid}: total {r.get('total')}, lines say {expected}")
            held = body.get("held_transaction_client_id")
            if held is not None and \
                    r.get("held_server_id") != accepted.get(held, {}).get("server_id"):
                raise Violation(f"sale {cid} resumes {held} but names another held sale")
        if kind in ("sale", "cash_movement", "shift_close"):
            shift = body["open_shift_client_id" if kind == "shift_close"
                         else "shift_client_id"]
            opened = accepted.get(shift)
            if opened is None or r.get("shift_server_id") != opened.get("server_id"):
                raise Violation(f"{kind} {cid} is not resolved to its shift {shift}")
    for cid in numbered:
        if cid not in accepted:
            raise Violation(f"sale {cid} has an invoice number but no accepted receipt")

    # stock of every tracked product equals the moves of the accepted entries
    moves: dict[str, Decimal] = defaultdict(Decimal)
    for cid in accepted:
        kind, body = entries[cid][0], entries[cid][1]
        if kind == "sale":
            for line in body["lines"]:
                moves[line["product_id"]] -= Decimal(str(line["qty"]))
        elif kind == "refund" and body.get("restock", True):
            for line in body["lines"]:
                moves[line["product_id"]] += Decimal(str(line["qty"]))
        elif kind == "stock_move":
            qty = Decimal(body["qty"])
            moves[body["product_id"]] += -qty if body["direction"] == "out" else qty
    for pid, is_volatile in volatile.items():
        if is_volatile:
            continue
        held = Decimal(stock.get(pid, 0)) / 1_000_000
        if held != moves.get(pid, Decimal(0)):
            raise Violation(f"relay stock of {pid} is {held}, its moves sum to "
                            f"{moves.get(pid, Decimal(0))}")

    return position


# -- the world ------------------------------------------------------------------------


@dataclass
class Model:
    """What the test knows, independently of the stores."""

    acked: dict[str, dict[str, bytes]] = field(default_factory=lambda: defaultdict(dict))
    bodies: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    open_shift: dict[str, str | None] = field(default_factory=dict)
    held: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sales: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    last: dict[str, tuple[str, dict[str, Any], str]] = field(default_factory=dict)
    volatile: dict[str, bool] = field(
        default_factory=lambda: {p: v[2] for p, v in PRODUCTS.items()})
    prices_written: dict[str, set[int]] = field(
        default_factory=lambda: {p: {v[1]} for p, v in PRODUCTS.items()})
    prices_overwritten: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    next_price: int = 100_000  # above every seeded price: each written price is unique


class World:
    def __init__(self, root: Path, tpl: Template, seed: int) -> None:
        self.root = root
        self.seed = seed
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(tpl.root, root)
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.sched = Scheduler()
        self.net = Network(self.sched, self.rng, self.stats)
        self.relay = RelayNode(self, RELAY, root / RELAY, det_key("relay"))
        self.net.attach(self.relay)
        self.tills = [TillNode(self, name, root / name, RELAY) for name in tpl.tills]
        for node in self.tills:
            self.net.attach(node)
        self.model = Model()
        self.violations: list[str] = []
        self.round_errors: Counter[str] = Counter()
        self.strict_doc = True  # a document exchange that runs away is a violation
        self.doc_messages_max = 0  # the most document messages one round received
        self.lan = False  # tills also link to each other (peer.lan), set before start()

    # -- life cycle ---------------------------------------------------------------------

    async def start(self, tills: int | None = None) -> None:
        await self.relay.start()
        for node in self.tills[:tills]:
            await node.start()
            self.model.open_shift.setdefault(node.name, None)

    def seeded(self, i: int) -> bool:
        """Whether till i holds the seed master data yet (the last till starts with an
        empty document and gets it, as a snapshot, on its first round)."""
        return self.till(i).master.has("cashiers", CASHIERS[0])

    async def stop(self) -> None:
        for node in self.tills:
            if node.till is not None:
                till, node.till = node.till, None
                await till.close()
        if self.relay.storage is not None:
            storage, self.relay.storage = self.relay.storage, None
            await storage.close()

    def violation(self, message: str) -> None:
        self.violations.append(message)

    def note_round_error(self, till: str, exc: Exception) -> None:
        self.round_errors[getattr(exc, "code", "error")] += 1

    def note_doc_messages(self, n: int) -> None:
        """Document messages a till received in one round (bounded: see strict_doc)."""
        self.stats["doc_messages"] += n
        self.doc_messages_max = max(self.doc_messages_max, n)

    def note_receipts(self, receipts: list[dict[str, Any]]) -> None:
        self.stats["receipts"] += len(receipts)

    EVENTS_PER_SECOND = 2_000  # far above what a shop of a few tills exchanges

    async def advance(self, seconds: float) -> None:
        before = self.sched.events_run
        await self.sched.run_until(self.sched.now + seconds,
                                   limit=int(self.EVENTS_PER_SECOND * max(seconds, 1.0)))
        if self.sched.events_run - before >= self.EVENTS_PER_SECOND * max(seconds, 1.0):
            self.violation(f"livelock: {self.sched.events_run - before} events in "
                           f"{seconds} s of simulated time")
        self.raise_violations()

    def raise_violations(self) -> None:
        if self.violations:
            raise Violation("; ".join(self.violations[:5]))

    # -- faults -------------------------------------------------------------------------

    async def crash_till(self, i: int) -> None:
        node = self.tills[i]
        if node.till is None:
            return
        self.stats["till_crashes"] += 1
        await node.crash()
        await node.start()
        await self.check_till_durable(node)

    async def crash_relay(self, downtime: float) -> None:
        if not self.relay.up:
            return
        self.stats["relay_crashes"] += 1
        await self.relay.crash()

        async def restart() -> None:
            if not self.relay.up:  # settle() may have restarted it already
                await self.relay.start()
                await self.check_relay_durable()

        self.sched.after(downtime, restart)

    async def heal(self) -> None:
        self.net.heal_all()
        if not self.relay.up:
            await self.relay.start()
            await self.check_relay_durable()

    # -- actions on tills -----------------------------------------------------------------

    def till(self, i: int) -> Till:
        till = self.tills[i].till
        assert till is not None
        return till

    async def record(self, i: int, kind: str, body: dict[str, Any],
                     client_id: str | None = None) -> str:
        node = self.tills[i]
        client_id = client_id or det_uuid(self.rng)
        entry = await self.till(i).record(kind, body, client_id=client_id)
        assert entry.client_id == client_id
        acked = self.model.acked[node.name]
        if client_id in acked:  # a retry: the same entry, nothing new
            if acked[client_id] != entry.hash:
                raise Violation(f"retry of {client_id} on {node.name} made a different entry")
            self.stats["retries"] += 1
        acked[client_id] = entry.hash
        self.model.bodies[client_id] = (kind, body)
        self.model.last[node.name] = (kind, body, client_id)
        self.stats[f"entries_{kind}"] += 1
        return client_id

    async def retry_last(self, i: int) -> None:
        """The front end did not see the answer (a crash, a timeout) and sends it again."""
        last = self.model.last.get(self.tills[i].name)
        if last is not None:
            kind, body, client_id = last
            await self.record(i, kind, body, client_id)

    def products_at(self, i: int) -> list[str]:
        till = self.till(i)
        return sorted(p for p in till.master.ids("products")
                      if (till.get("products", p) or {}).get("active", True))

    async def put_price(self, i: int, product: str) -> None:
        till = self.till(i)
        current = till.get("products", product)
        if current is None:
            return
        self.model.next_price += self.rng.randint(1, 40)
        price = self.model.next_price
        self.model.prices_overwritten[product].add(int(current["price"]))
        self.model.prices_written[product].add(price)
        await till.put("products", product, {"price": price})
        self.stats["price_edits"] += 1

    async def put_field(self, i: int, product: str, name: str) -> None:
        till = self.till(i)
        if till.get("products", product) is None:
            return
        value: Any = (f"{product} {self.rng.randint(0, 99)}" if name == "name"
                      else str(self.rng.randint(0, 9)))
        await till.put("products", product, {name: value})
        self.stats["field_edits"] += 1

    async def new_product(self, i: int, volatile: bool) -> str:
        pid = "p-" + det_uuid(self.rng)
        price = 100 + self.rng.randint(0, 900)
        await self.till(i).put("products", pid, {"name": "New", "sku": pid[:12], "price": price,
                                                 "volatile": volatile})
        self.model.volatile[pid] = volatile
        self.model.prices_written[pid] = {price}
        self.stats["products_created"] += 1
        return pid

    async def open_shift(self, i: int) -> None:
        name = self.tills[i].name
        if self.model.open_shift.get(name) or not self.seeded(i):
            return
        cid = await self.record(i, "shift_open", {
            "cashier_id": self.rng.choice(CASHIERS), "opening_cash": 5000})
        self.model.open_shift[name] = cid

    async def close_shift(self, i: int) -> None:
        name = self.tills[i].name
        shift = self.model.open_shift.get(name)
        if not shift:
            return
        expected = await self.till(i).expected_cash(shift)
        body: dict[str, Any] = {"open_shift_client_id": shift,
                                "closing_cash": max(0, expected - self.rng.choice((0, 0, 5)))}
        if body["closing_cash"] != expected:
            body["variance_reason"] = "miscount"
        await self.record(i, "shift_close", body)
        self.model.open_shift[name] = None
        # held sales of a closed shift can still be resumed in a later shift

    def _lines(self, i: int, n: int) -> list[dict[str, Any]]:
        till = self.till(i)
        products = self.products_at(i)
        lines = []
        for _ in range(n):
            pid = self.rng.choice(products)
            product = till.get("products", pid)
            assert product is not None
            qty: int | str = (self.rng.choice(("0.25", "0.5", "1.125", "2.5"))
                              if product["volatile"] else self.rng.randint(1, 3))
            line: dict[str, Any] = {"product_id": pid, "qty": qty,
                                    "unit_price": int(product["price"])}
            if self.rng.random() < 0.2:
                line["discount"] = min(10, line_total(line))
            lines.append(line)
        return lines

    async def sale(self, i: int, n_lines: int, method: str, resume: bool) -> None:
        name = self.tills[i].name
        if not self.seeded(i):
            return
        shift = self.model.open_shift.get(name)
        if not shift:
            await self.open_shift(i)
            shift = self.model.open_shift[name]
        assert shift is not None
        held = self.model.held[name]
        body: dict[str, Any] = {"shift_client_id": shift}
        if resume and held:
            hid = held.pop(self.rng.randrange(len(held)))
            body["held_transaction_client_id"] = hid
            lines = self.model.bodies[hid][1]["lines"]
        else:
            lines = self._lines(i, n_lines)
        total = sum(line_total(line) for line in lines)
        body["lines"] = lines
        body["client_total"] = total
        if method == "account":
            body["customer_id"] = self.rng.choice(CUSTOMERS)
        body["payments"] = [{"method": method, "amount": total}]
        cid = await self.record(i, "sale", body)
        self.model.sales[name].append(cid)

    async def hold(self, i: int, n_lines: int) -> None:
        name = self.tills[i].name
        if not self.seeded(i):
            return
        body: dict[str, Any] = {"lines": self._lines(i, n_lines)}
        if self.model.open_shift.get(name):
            body["shift_client_id"] = self.model.open_shift[name]
        cid = await self.record(i, "held_sale", body)
        self.model.held[name].append(cid)

    async def other(self, i: int, kind: str) -> None:
        """One entry of the other kinds, valid on this till."""
        rng, name = self.rng, self.tills[i].name
        shift = self.model.open_shift.get(name)
        body: dict[str, Any]
        if not self.seeded(i) and kind not in ("journal_entry", "expense"):
            return
        if kind == "cash_movement":
            if not shift:
                return
            body = {"direction": rng.choice(("in", "out")), "amount": rng.randint(1, 500),
                    "reason": "float", "shift_client_id": shift}
        elif kind == "stock_move":
            direction = rng.choice(("in", "out", "adjust"))
            qty = rng.choice(("1", "2", "0.5")) if direction != "adjust" else \
                rng.choice(("-1", "3", "-0.25"))
            body = {"product_id": rng.choice(self.products_at(i)), "direction": direction,
                    "qty": qty, "reason": "count"}
        elif kind == "refund":
            sales = self.model.sales[name]
            if not sales:
                return
            sale_id = rng.choice(sales)
            line = dict(self.model.bodies[sale_id][1]["lines"][0])
            line.pop("discount", None)
            amount = line_total(line)
            method = "cash" if shift else "card"
            body = {"original_sale_client_id": sale_id, "lines": [line], "method": method,
                    "amount": amount, "reason": "faulty", "restock": rng.random() < 0.7}
            if shift:
                body["shift_client_id"] = shift
        elif kind == "customer_payment":
            body = {"customer_id": rng.choice(CUSTOMERS), "amount": rng.randint(1, 900),
                    "method": "cash" if shift else "card"}
            if shift:
                body["shift_client_id"] = shift
        elif kind == "purchase_order":
            body = {"supplier_id": SUPPLIERS[0], "lines": [
                {"product_id": rng.choice(self.products_at(i)), "qty": "12",
                 "unit_cost": 90}]}
        elif kind == "journal_entry":
            amount = rng.randint(1, 10000)
            body = {"lines": [{"account": "cash", "debit": amount, "credit": 0},
                              {"account": "sales", "debit": 0, "credit": amount}]}
        elif kind == "attendance":
            body = {"cashier_id": rng.choice(CASHIERS),
                    "action": rng.choice(("clock_in", "clock_out", "break_start", "break_end"))}
        elif kind == "leave_request":
            body = {"cashier_id": rng.choice(CASHIERS), "start_date": "2026-06-01",
                    "end_date": "2026-06-03", "leave_type": "annual"}
        elif kind == "expense":
            body = {"amount": rng.randint(1, 3000), "category": "cleaning",
                    "description": "mop", "method": "cash" if shift else "card"}
            if shift:
                body["shift_client_id"] = shift
        else:
            raise ValueError(kind)
        await self.record(i, kind, body)

    # -- getting everything delivered -----------------------------------------------------

    async def settle(self, limit: float = 600.0) -> None:
        """Heal everything and run until the shop is quiescent (or fail: liveness)."""
        await self.heal()
        deadline = self.sched.now + limit
        while True:
            await self.advance(5.0)
            problem = await self.unsettled()
            if problem is None:
                return
            if self.sched.now >= deadline:
                raise Violation(f"liveness: not converged after {limit:.0f} s of healed "
                                f"network: {problem}")

    async def unsettled(self) -> str | None:
        relay = self.relay
        assert relay.storage is not None and relay.hubs is not None
        heads = await relay.storage.heads(STORE)
        position = await relay.storage.stream_position(STORE)
        hub = await relay.hubs.get(STORE)
        for node in self.tills:
            till = node.till
            if till is None:
                continue  # not started (the template's fresh till)
            pending, _ = await till.pending(limit=0)
            if pending:
                return f"{node.name} has {pending} entries with no receipt"
            own = till.heads().get(till.device_id, 0)
            if heads.get(till.device_id, 0) != own:
                return f"relay head of {node.name} is {heads.get(till.device_id, 0)}"
            if self.lan and {d: s for d, s in till.heads().items() if s} != \
                    {d: s for d, s in heads.items() if s}:
                return f"{node.name} does not hold every till's entries yet"
            if till.receipts_position()[0] != position:
                return (f"{node.name} holds receipts up to {till.receipts_position()[0]}, "
                        f"relay {position}")
            if set(till.master.heads()) != set(hub.doc.heads()):
                return f"{node.name}'s master document differs from the relay's"
            if await till.receipts("waiting"):
                return f"{node.name} has waiting entries"
        return None

    # -- invariants ---------------------------------------------------------------------

    def relay_db(self) -> sqlite3.Connection:
        path = self.relay.dir / "relay.db"
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def check_relay(self) -> None:
        """What must hold at the relay at every instant (read from its database)."""
        if not self.relay.up:
            return
        db = self.relay_db()
        try:
            self._check_relay(db)
        finally:
            db.close()

    def _check_relay(self, db: sqlite3.Connection) -> None:
        position = check_relay_db(db, STORE, self.model.volatile, self.net.tampered)
        entries = {r[0] for r in db.execute("SELECT client_id FROM entries WHERE store = ?",
                                            (STORE,))}
        # nothing the relay acknowledged is gone
        for cid in self.relay.acked:
            if cid not in entries:
                raise Violation(f"entry {cid} acknowledged by the relay is gone")
        seq, digest = self.relay.acked_head
        if seq > position:
            raise Violation(f"relay stream went back from {seq} to {position}")
        self.stats["checks"] += 1

    async def check_relay_durable(self) -> None:
        """After a restart: every acknowledged entry and receipt is still there, unchanged."""
        db = self.relay_db()
        try:
            held = {r[0]: bytes(r[1]) for r in db.execute(
                "SELECT client_id, hash FROM entries WHERE store = ?", (STORE,))}
            seq, digest = self.relay.acked_head
            if seq:
                row = db.execute("SELECT data FROM receipts WHERE store = ? AND server_seq = ?",
                                 (STORE, seq)).fetchone()
                if row is None or msgpack.unpackb(row[0], raw=False)["prev"] != digest:
                    raise Violation(f"receipt {seq} acknowledged before the crash changed")
        finally:
            db.close()
        for cid, h in self.relay.acked.items():
            if held.get(cid) != h:
                raise Violation(f"relay lost acknowledged entry {cid} in a crash")

    async def check_till_durable(self, node: TillNode) -> None:
        till = node.till
        assert till is not None
        for cid, digest in self.model.acked[node.name].items():
            entry = await till.entry(cid)
            if entry is None or entry.hash != digest:
                raise Violation(f"{node.name} lost recorded entry {cid} in a crash")

    async def check_till_views(self, name: str, till: Till) -> None:
        """A till's derived views, recomputed here from the documented rules over the
        entries it holds: stock, cash expected per shift, customer balances."""
        stock: dict[str, Decimal] = defaultdict(Decimal)
        cash: dict[str, int] = defaultdict(int)
        balance: dict[str, int] = defaultdict(int)
        for entry in await till.entries():
            kind, body = entry.kind, entry.body
            shift = str(body.get("shift_client_id", ""))
            if kind == "sale":
                for line in body["lines"]:
                    stock[line["product_id"]] -= Decimal(str(line["qty"]))
                for pay in body["payments"]:
                    if pay["method"] == "cash":
                        cash[shift] += pay["amount"]
                    elif pay["method"] == "account":
                        balance[body["customer_id"]] += pay["amount"]
            elif kind == "refund":
                if body.get("restock", True):
                    for line in body["lines"]:
                        stock[line["product_id"]] += Decimal(str(line["qty"]))
                if body["method"] == "cash" and shift:
                    cash[shift] -= body["amount"]
            elif kind == "stock_move":
                qty = Decimal(body["qty"])
                stock[body["product_id"]] += -qty if body["direction"] == "out" else qty
            elif kind == "shift_open":
                cash[entry.client_id] += body["opening_cash"]
            elif kind == "cash_movement":
                cash[shift] += body["amount"] if body["direction"] == "in" else -body["amount"]
            elif kind == "customer_payment":
                balance[body["customer_id"]] -= body["amount"]
                if body["method"] == "cash" and shift:
                    cash[shift] += body["amount"]
            elif kind == "expense" and body["method"] == "cash" and shift:
                cash[shift] -= body["amount"]
        for row in await till.stock():
            if "qty" in row and Decimal(row["qty"]) != stock.get(row["product_id"], 0):
                raise Violation(f"{name}: stock of {row['product_id']} is {row['qty']}, its "
                                f"moves sum to {stock.get(row['product_id'], 0)}")
        for opened in await till.shifts():
            sid = opened["shift_client_id"]
            if opened["expected_cash"] != cash.get(sid, 0):
                raise Violation(f"{name}: shift {sid} expects {opened['expected_cash']} in "
                                f"cash, its entries say {cash.get(sid, 0)}")
        balances = await till.balances()
        for customer in balances.keys() | balance.keys():
            if balances.get(customer, 0) != balance.get(customer, 0):
                raise Violation(f"{name}: {customer} owes {balances.get(customer, 0)}, its "
                                f"entries say {balance.get(customer, 0)}")

    async def check_final(self) -> None:
        """Everything healed and delivered: the whole system agrees."""
        relay = self.relay
        assert relay.storage is not None and relay.hubs is not None
        self.check_relay()
        db = self.relay_db()
        try:
            held = {r[0]: bytes(r[1]) for r in db.execute(
                "SELECT client_id, hash FROM entries WHERE store = ?", (STORE,))}
            latest: dict[str, dict[str, Any]] = {}
            for (data,) in db.execute("SELECT data FROM receipts WHERE store = ? "
                                      "ORDER BY server_seq", (STORE,)):
                r = msgpack.unpackb(data, raw=False)
                if latest.get(r["client_id"], {}).get("status") != "accepted":
                    latest[r["client_id"]] = r  # an acceptance is final
        finally:
            db.close()
        for name, acked in self.model.acked.items():
            for cid, digest in acked.items():
                if held.get(cid) != digest:
                    raise Violation(f"the relay does not hold {name}'s entry {cid}")
                if latest.get(cid, {}).get("status") != "accepted":
                    raise Violation(f"{name}'s {self.model.bodies[cid][0]} {cid} is not "
                                    f"accepted: {latest.get(cid)}")
        # documents: identical everywhere, and stored as they are in memory
        hub = await relay.hubs.get(STORE)
        stored = MasterData.load(await relay.storage.document(STORE), bytes(16))
        reference = hub.doc.to_py()
        if stored.to_py() != reference:
            raise Violation("the relay's stored document differs from its memory")
        for node in self.tills:
            till = node.till
            assert till is not None
            if till.master.to_py() != reference:
                raise Violation(f"{node.name}'s master document differs from the relay's")
            report = await till.verify()
            if not report.ok:
                raise Violation(f"{node.name} fails verify: {report.to_json()}")
            mine = {r["client_id"]: r for r in await till.receipts()}
            if mine != latest:
                raise Violation(f"{node.name}'s receipts differ from the relay's stream")
            await self.check_till_views(node.name, till)
            tickets = [e.ticket for e in await till.entries("sale")
                       if e.device_id == till.device_id]
            if tickets != [f"{till.series}-{n:06d}" for n in range(1, len(tickets) + 1)]:
                raise Violation(f"{node.name}'s provisional tickets are not consecutive")
        # prices: the one that won was written by someone and overwritten by no one
        for pid, written in self.model.prices_written.items():
            price = reference["products"].get(pid, {}).get("price")
            if price not in written:
                raise Violation(f"price {price} of {pid} was never written")
            if price in self.model.prices_overwritten[pid]:
                raise Violation(f"price {price} of {pid} won, but a later edit had replaced it")
