"""The benchmark's workload: every till's log, sealed and packed into frames before
any timing, and its baseline requests."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import GENESIS_PREV, seal
from tillsync.peer.sync.frames import MAX_FRAME, encode, entry_to_wire
from tillsync.tools.workload import (
    products_for_sales,
    progress,
    sale_body,
)

SERIES = "INV"
CASHIER = "ann"

# -- workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TillSpec:
    """What a worker process needs to build one till's log (picklable)."""

    index: int
    store: str
    device_id: str
    name: str
    series: str
    private_key: bytes  # raw Ed25519 seed
    sales: int
    batch: int
    seed: int


@dataclass
class TillLoad:
    spec: TillSpec
    frames: list[bytes]
    counts: list[int]  # entries in each frame
    heads: list[int]  # the device's seq after each frame
    sales: int
    entries: int
    size: int
    requests: list[bytes] = field(default_factory=list)  # baseline HTTP requests


def device_key(raw: bytes) -> DeviceKey:
    return DeviceKey(Ed25519PrivateKey.from_private_bytes(raw))


def _stamp(base: datetime, ms: int) -> str:
    moment = base + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_till(spec: TillSpec, baseline_sales: int) -> TillLoad:
    """One till's sealed log packed into frames, and its baseline requests (runs in a
    worker process)."""
    rng = random.Random(spec.seed)
    catalogue = products_for_sales()
    pieces = [p for p in catalogue if p.startswith("piece-")]
    weighed = [p for p in catalogue if p.startswith("kg-")]
    key = device_key(spec.private_key)
    base = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    shift = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    bodies = [sale_body(rng, catalogue, pieces, weighed, shift)
              for _ in range(max(spec.sales, baseline_sales))]

    wire: list[list[Any]] = []
    prev = GENESIS_PREV
    entry = seal(key, body={"cashier_id": CASHIER, "opening_cash": 10_000,
                            "register": spec.name},
                 client_id=shift, device_id=spec.device_id, seq=1, prev=prev,
                 kind="shift_open", client_created_at=_stamp(base, 0), ticket=None)
    wire.append(entry_to_wire(entry))
    prev = entry.hash
    for n, body in enumerate(bodies[:spec.sales], 1):
        entry = seal(key, body=body, client_id=str(uuid.UUID(int=rng.getrandbits(128),
                                                             version=4)),
                     device_id=spec.device_id, seq=n + 1, prev=prev, kind="sale",
                     client_created_at=_stamp(base, 1000 * n), ticket=f"{spec.series}-{n:06d}")
        wire.append(entry_to_wire(entry))
        prev = entry.hash
    frames, counts, heads = [], [], []
    for start in range(0, len(wire), spec.batch):
        chunk = wire[start:start + spec.batch]
        frame = encode("entries", entries=chunk)  # exactly ClientLink.send_entries' frame
        if len(frame) > MAX_FRAME:
            raise ValueError(f"a frame of {len(chunk)} entries is {len(frame)} bytes, over "
                             f"the {MAX_FRAME}-byte limit: lower --batch")
        frames.append(frame)
        counts.append(len(chunk))
        heads.append(start + len(chunk))

    requests = []
    for n, body in enumerate(bodies[:baseline_sales], 1):
        doc = json.dumps({"store": spec.store, "device_id": spec.device_id,
                          "ticket": f"{spec.series}-{n:06d}",
                          "client_created_at": _stamp(base, 1000 * n), "sale": body},
                         separators=(",", ":")).encode()
        key_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        requests.append((f"POST /sales HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Type: application/json\r\nIdempotency-Key: {key_id}\r\n"
                         f"Content-Length: {len(doc)}\r\n\r\n").encode() + doc)
    return TillLoad(spec, frames, counts, heads, spec.sales, len(wire),
                    sum(len(f) for f in frames), requests)


def _build_star(args: tuple[TillSpec, int]) -> TillLoad:
    return build_till(*args)


def till_specs(tills: int, stores: int, sales: int, batch: int, seed: int) -> list[TillSpec]:
    rng = random.Random(seed)
    specs = []
    for i in range(tills):
        store = f"bench-store-{i % stores + 1}"
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        specs.append(TillSpec(i, store, str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                              f"Till {i + 1}", f"T{i + 1:02d}", raw, sales, batch,
                              seed * 1000 + i))
    return specs


def generate(specs: Sequence[TillSpec], baseline_sales: int) -> list[TillLoad]:
    workers = max(1, min(len(specs), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        loads = []
        for load in pool.map(_build_star, [(s, baseline_sales) for s in specs]):
            loads.append(load)
            if len(loads) % max(1, len(specs) // 4) == 0 or len(loads) == len(specs):
                progress(f"  generated {len(loads)}/{len(specs)} tills")
    return loads


# -- processes -----------------------------------------------------------------------------
