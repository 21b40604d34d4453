"""Frame fuzzer: malformed frames sent at a real relay over real websockets.

    python -m tillsync.tools.fuzz_frames --frames 100000     # starts its own relay

Half the frames go on connections that have not logged in, half on connections logged
in as an enrolled device (``welcome`` received).  The frames are random bytes, text,
truncated and bit-flipped valid frames, valid frames with a wrong value in one field,
huge msgpack lengths, deep nesting, valid msgpack of the wrong shape, frames over the
size limits, and entries with broken signatures, broken chains, gaps or an unknown
device.  For every frame it checks the relay's answer: an ``error`` frame whose code is
one of those ``schemas/protocol/messages.json`` lists (never ``internal``), closed
after a fatal one; an ``ingested`` for an ``entries`` frame of the right shape; a
``challenge`` for a ``hello`` a flip left valid; or a close code the protocol names.
The caller compares what the relay stored before and after, and checks that an honest
device still syncs (the command does both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry, seal
from tillsync.peer.sync.engine import ClientLink, Ready
from tillsync.peer.sync.frames import (
    MAX_FRAME,
    MESSAGES,
    PROTOCOL_VERSION,
    TRANSPORT_MAX,
    decode,
    entry_to_wire,
)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "protocol"
ANSWER_TIMEOUT = 10.0  # seconds: a frame not answered by then is counted as unanswered
# Close codes a relay may end a link with (schemas/protocol/README.md, "Close codes").
CLOSE_CODES = {1000, 1001, 1009, 1013, 4001, 4002}
# Closed by the relay's limits, not for what was sent: no error frame comes first.
_LIMIT_CLOSES = {1009, 1013, 4001, 4002}


def documented_codes() -> set[str]:
    """The error codes ``messages.json`` lists for the ``error`` frame."""
    schema = json.loads((SCHEMAS / "messages.json").read_text(encoding="utf-8"))
    return set(schema["$defs"]["error"]["properties"]["code"]["enum"])


@dataclass
class Target:
    """The relay and the enrolled device the fuzzer logs in as.  ``held``: entries of
    the device the relay holds already, ending at its head."""

    url: str
    store: str
    device: str
    key: DeviceKey
    held: list[Entry]


@dataclass
class Report:
    frames: int = 0
    logged_in: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "error:bad_field:fatal", ...
    internal: int = 0
    undefined: list[str] = field(default_factory=list)  # answers no rule allows
    unanswered: int = 0
    connect_failures: int = 0
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def problems(self) -> list[str]:
        found = [f"{self.internal} internal errors"] if self.internal else []
        if self.unanswered:
            found.append(f"{self.unanswered} frames unanswered")
        if self.connect_failures:
            found.append(f"{self.connect_failures} connections refused")
        return found + self.undefined[:20]


# -- the frames -----------------------------------------------------------------------

_SCALARS: list[object] = [None, True, False, 0, -1, 3, 2**64 - 1, -(2**63), 1.5, "", "x",
                          "é" * 201, b"", b"\x00" * 32, b"\xff" * 64, [], {}]


FILE_FRAMES = frozenset({"file_offer", "file_want", "file_chunk", "file_have", "file_refused"})
FILE_ANSWERS = frozenset({"file_want", "file_have", "file_refused"})


def _frame_type(frame: bytes | str) -> str | None:
    if isinstance(frame, str):
        return None
    try:
        decoded = msgpack.unpackb(frame, raw=False)
    except Exception:  # any undecodable frame simply has no type
        return None
    t = decoded.get("t") if isinstance(decoded, dict) else None
    return t if isinstance(t, str) else None


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _valid_fields(t: str, target: Target, rng: random.Random) -> dict[str, Any]:
    """A well-formed frame of type ``t`` (the relay may still refuse it in its state)."""
    wire = [entry_to_wire(e) for e in target.held[-2:]]
    values: dict[str, Any] = {
        "v": PROTOCOL_VERSION, "store": target.store, "device": target.device,
        "nonce": rng.randbytes(32), "receipts_after": 0, "doc_empty": False,
        "code": "ABCDE-ABCDE-ABCDE-ABCDE", "name": "Fuzz", "public_key": rng.randbytes(32),
        "relay_key": rng.randbytes(32), "sig": rng.randbytes(64), "heads": {target.device: 1},
        "receipts_head": 0, "cert": rng.randbytes(100), "revoked": [], "certs": [],
        "entries": wire, "count": 1, "receipts": [], "head": 0, "m": rng.randbytes(20),
        "data": rng.randbytes(20), "message": "m", "fatal": True,
        "sha256": rng.randbytes(32), "size": 20, "type": "image/png", "offset": 0,
        "devices": [target.device]}
    return {"t": t, **{name: values[name] for name in MESSAGES[t]}}


def _nested(depth: int) -> bytes:
    return b"\x81\xa1t" + b"\x91" * depth + b"\xc0"


def _broken_entries(target: Target, rng: random.Random) -> bytes:
    """An entries frame of the device whose chain or signature is broken, or beyond a
    gap, or of a device that is not enrolled: refused by receipts, never stored."""
    last = target.held[-1]
    how = rng.randrange(5)
    body = _pack({"cashier_id": "ann", "opening_cash": 0})
    fields: dict[str, Any] = dict(client_id=str(uuid.UUID(int=rng.randrange(8), version=4)),
                                  device_id=target.device, seq=last.seq + 1, prev=last.hash,
                                  kind="shift_open", client_created_at="2024-05-01T09:00:00.000Z",
                                  ticket=None)
    if how == 1:
        fields["prev"] = rng.randbytes(32)  # broken chain
    elif how == 2:
        fields["seq"] = last.seq + 2 + rng.randrange(5)  # a gap
    elif how == 3:
        fields["device_id"] = str(uuid.UUID(int=rng.randrange(4), version=4))  # not enrolled
    entry = seal(target.key if how != 4 else DeviceKey.generate(),
                 body=msgpack.unpackb(body), **fields)
    wire = entry_to_wire(entry)
    if how == 0:  # a flipped signature
        sig = bytearray(wire[8])
        sig[rng.randrange(64)] ^= 1 << rng.randrange(8)
        wire[8] = bytes(sig)
    return _pack({"t": "entries", "entries": [*map(entry_to_wire, target.held[-1:]), wire]})


def frame(target: Target, rng: random.Random, *, big: bool = True) -> bytes | str:
    """One malformed (or barely valid) frame.  ``big``: now and then a frame over the
    4 MiB limit or over the transport's 8 MiB."""
    pick = rng.randrange(100)
    t = rng.choice(sorted(MESSAGES))
    valid = _pack(_valid_fields(t, target, rng))
    if pick < 10:
        return rng.randbytes(rng.randrange(1, 300))
    if pick < 12:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(40)))
    if pick < 22:
        return valid[:rng.randrange(len(valid))]
    if pick < 37:
        flipped = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if pick < 57:  # a wrong type in one field, or a field missing or extra
        fields = _valid_fields(t, target, rng)
        names = [n for n in fields if n != "t"]
        what = rng.randrange(4)
        if what == 0 and names:
            del fields[rng.choice(names)]
        elif what == 1:
            fields[rng.choice(["x", "T", "", "sig", "entries"])] = rng.choice(_SCALARS)
        elif names:
            fields[rng.choice(names)] = rng.choice(_SCALARS)
        return _pack(fields)
    if pick < 62:  # huge lengths in msgpack headers
        header = rng.choice([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xdc", b"\xde", b"\xc5"])
        size = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\xff\xff", b"\x00\x10"])
        return rng.choice([b"", b"\x81\xa1t", b"\x82\xa1t\xa7entries\xa7entries"]) + header \
            + size[:4 if header in (b"\xdd", b"\xdf", b"\xdb", b"\xc6") else 2] + b"\x00" * 3
    if pick < 65:
        return _nested(rng.choice([10, 1000, 100_000, 1_000_000]))
    if pick < 75:  # valid msgpack of the wrong shape
        shapes: list[object] = [rng.choice(_SCALARS), [valid], {"t": rng.choice(_SCALARS)},
                                {1: 2, "t": t}, {"t": t + "x"}, {"t": "entries", "entries":
                                [rng.choice(_SCALARS)] * rng.randrange(1, 4)},
                                {"t": "entries", "entries": [[0] * 9]},
                                {"t": "entries", "entries": [None] * 1001},
                                {"t": rng.choice(["ingested", "have"]), "heads": {"a": -1}}]
        return _pack(rng.choice(shapes))
    if pick < 76 and big:
        over = rng.choice([MAX_FRAME + 1, TRANSPORT_MAX + 1])
        return b"\x82\xa1t\xa3doc\xa1m\xc6" + over.to_bytes(4, "big") + bytes(over)
    if pick < 78:
        return _pack({"t": "entries", "entries": [entry_to_wire(e) for e in target.held]})
    return _broken_entries(target, rng)


# -- sending them ---------------------------------------------------------------------


async def _open(url: str) -> ClientConnection:
    return await asyncio.wait_for(connect(url, max_size=None, compression=None,
                                          open_timeout=ANSWER_TIMEOUT), ANSWER_TIMEOUT)


async def _login(target: Target) -> ClientConnection:
    ws = await _open(target.url)
    link = ClientLink(store=target.store, device=target.device, key=target.key,
                      nonce=os.urandom(32))
    link.start()
    async with asyncio.timeout(ANSWER_TIMEOUT):
        while True:
            for out in link.data_to_send():
                await ws.send(out)
            link.receive_data(await ws.recv())
            if any(isinstance(e, Ready) for e in link.events_received()):
                return ws
            if link.closed:
                raise RuntimeError("the fuzzer's device could not log in")


async def _answer(ws: ClientConnection) -> tuple[str, dict[str, Any] | None]:
    """What the relay did with the last frame: ("frame", the answer), or ("closed", None)
    if it closed first; what it pushes meanwhile (receipts, doc) is skipped."""
    async with asyncio.timeout(ANSWER_TIMEOUT):
        while True:
            try:
                data = await ws.recv()
            except ConnectionClosed:
                return "closed", None
            answer = msgpack.unpackb(data, raw=False) if isinstance(data, bytes) else None
            if not isinstance(answer, dict):
                return "frame", {"t": f"not a map: {data[:40]!r}"}
            if answer.get("t") not in ("receipts", "doc", "doc_snapshot"):
                return "frame", answer


class _Fuzzer:
    def __init__(self, target: Target, report: Report, codes: set[str], big: bool) -> None:
        self.target, self.report, self.codes, self.big = target, report, codes, big

    def judge(self, sent: bytes | str, logged_in: bool, kind: str,
              answer: dict[str, Any] | None, close: int | None) -> bool:
        """Record the outcome; True if the link is still open."""
        report = self.report
        if kind == "closed":
            report.outcomes[f"closed:{close}"] += 1
            if close not in CLOSE_CODES:
                report.undefined.append(f"closed with {close} without an error frame")
            elif close not in _LIMIT_CLOSES and not _is_fatal_error(sent):
                report.undefined.append(f"closed ({close}) without an error frame: {sent[:60]!r}")
            return False
        assert answer is not None
        t = answer.get("t")
        if t == "error":
            code, fatal = answer.get("code"), answer.get("fatal")
            report.outcomes[f"error:{code}:{'fatal' if fatal else 'non-fatal'}"] += 1
            if code == "internal":
                report.internal += 1
            elif code not in self.codes:
                report.undefined.append(f"undocumented error code {code!r}")
            return fatal is False
        report.outcomes[f"answer:{t}"] += 1
        if t == "ingested" and logged_in or t == "challenge" and not logged_in:
            return bool(t == "ingested")
        if logged_in and t in FILE_ANSWERS and _frame_type(sent) in FILE_FRAMES:
            return True  # the file transfer's own answers (file_offer -> file_want, ...)
        report.undefined.append(f"answer {t!r} to {sent[:60]!r} (logged in: {logged_in})")
        return False

    async def run(self, rng: random.Random, count: int, logged_in: bool) -> None:
        ws: ClientConnection | None = None
        for _ in range(count):
            sent = frame(self.target, rng, big=self.big)
            try:
                if ws is None:
                    ws = await (_login(self.target) if logged_in else _open(self.target.url))
                try:
                    await ws.send(sent)
                except ConnectionClosed:
                    pass  # closed while sending (a frame over the transport's limit)
                if _error_frame(sent) is False:  # taken without an answer, by design
                    self.report.frames += 1
                    self.report.logged_in += logged_in
                    self.report.outcomes["taken:error:non-fatal"] += 1
                    continue
                kind, answer = await _answer(ws)
            except TimeoutError:
                self.report.unanswered += 1
                self.report.undefined.append(f"no answer to {sent[:80]!r} (logged in: "
                                             f"{logged_in})")
                await _close(ws)
                ws = None
                continue
            except OSError:
                self.report.connect_failures += 1
                ws = None
                continue
            self.report.frames += 1
            self.report.logged_in += logged_in
            close = ws.close_code if ws is not None else None
            if not self.judge(sent, logged_in, kind, answer, close) or kind == "closed":
                await _close(ws)
                ws = None
        await _close(ws)


async def _close(ws: ClientConnection | None) -> None:
    """Close our end; the library may trip over a transport the relay dropped already."""
    if ws is not None:
        with contextlib.suppress(Exception):
            await ws.close()


def _error_frame(sent: bytes | str) -> bool | None:
    """Whether ``sent`` is a well-formed fatal (True) or non-fatal (False) error frame,
    which the relay takes without an answer (closing the link after a fatal one); None
    if it is no error frame."""
    try:
        value = msgpack.unpackb(sent, raw=False) if isinstance(sent, bytes) else None
        decode(sent)
    except Exception:  # not msgpack, or not a well-formed frame
        return None
    if isinstance(value, dict) and value.get("t") == "error":
        return bool(value["fatal"])
    return None


def _is_fatal_error(sent: bytes | str) -> bool:
    return _error_frame(sent) is True


async def fuzz(target: Target, frames: int, *, seed: int = 1, connections: int = 4,
               big: bool = True) -> Report:
    """Send ``frames`` frames, half of them logged in, over ``connections`` links at a
    time; the report says what came back."""
    report = Report()
    fuzzer = _Fuzzer(target, report, documented_codes(), big)
    runs = []
    for logged_in, half in ((False, frames - frames // 2), (True, frames // 2)):
        share = [half // connections] * connections
        share[0] += half - sum(share)
        runs += [(logged_in, n) for n in share]
    start = time.perf_counter()
    await asyncio.gather(*(fuzzer.run(random.Random(seed * 1000 + i), n, logged_in=logged_in)
                           for i, (logged_in, n) in enumerate(runs)))
    report.seconds = time.perf_counter() - start
    return report


# -- the command ----------------------------------------------------------------------


def stored(db: Path, store: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the relay's SQLite database holds of ``store`` that no refused frame may
    change (its receipt stream may only grow by rejections)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} WHERE store = ? ORDER BY 2, 3",
                                    (store,)).fetchall()
                for table in ("invoices", "entries", "receipts", "counters", "stock")}
    finally:
        conn.close()


async def _command(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from tillsync.peer.client import enroll
    from tillsync.relay.server import Relay
    from tillsync.tools.bench_relay import Server

    store, device, key = "fuzz-store", str(uuid.uuid4()), DeviceKey.generate()
    data = root / "relay"
    relay = await Relay.open(data)
    code = await relay.new_code(store, "Fuzz till")
    await relay.close()
    server = await Server.start([sys.executable, "-m", "tillsync.tools.cli",
                                 "relay", "serve", "--data",
                                 str(data), "--port", "0"], root / "relay.log")
    try:
        url = f"ws://127.0.0.1:{server.port}"
        await enroll(url, code, "Fuzz till", key, device)
        shift = seal(key, body={"cashier_id": "ann", "opening_cash": 0},
                     client_id=str(uuid.uuid4()), device_id=device, seq=1, prev=bytes(32),
                     kind="shift_open", client_created_at="2024-05-01T09:00:00.000Z",
                     ticket=None)
        target = Target(url, store, device, key, [shift])
        target.held.append(_sale(target, shift))
        await _push(target, target.held)
        before = stored(data / "relay.db", store)
        report = await fuzz(target, args.frames, seed=args.seed, connections=args.connections)
        alive = server.proc.returncode is None
        after = stored(data / "relay.db", store)
        honest = await _push(target, [_sale(target, shift)])
    finally:
        await server.stop()
    new = [msgpack.unpackb(r[-1], raw=False) for r in after["receipts"][len(before["receipts"]):]]
    changed = [t for t in before if t != "receipts" and before[t] != after[t]]
    if after["receipts"][:len(before["receipts"])] != before["receipts"] or any(
            r["status"] != "rejected" for r in new):
        changed.append("receipts")
    return {"frames": report.frames, "logged_in": report.logged_in, "crashes": int(not alive),
            "internal_errors": report.internal, "undefined_answers": len(report.undefined),
            "unanswered": report.unanswered, "stored_changed": changed,
            "rejected_receipts_added": len(new), "honest_sale_invoice": honest,
            "seconds": round(report.seconds, 1),
            "frames_per_second": round(report.frames_per_second), "problems": report.problems(),
            "outcomes": dict(report.outcomes.most_common())}


def _sale(target: Target, shift: Entry) -> Entry:
    last = target.held[-1]
    body = {"lines": [{"product_id": "bread", "qty": "0.75", "unit_price": 410}],
            "payments": [{"method": "cash", "amount": 308}], "shift_client_id": shift.client_id}
    return seal(target.key, body=body, client_id=str(uuid.uuid4()), device_id=target.device,
                seq=last.seq + 1, prev=last.hash, kind="sale",
                client_created_at="2024-05-01T09:05:00.000Z", ticket=None)


async def _push(target: Target, entries: list[Entry]) -> int | None:
    """Push entries as an honest device; the invoice number of the last, if a sale."""
    ws = await _login(target)
    try:
        await ws.send(_pack({"t": "entries", "entries": [entry_to_wire(e) for e in entries]}))
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while True:
                answer = msgpack.unpackb(await ws.recv(), raw=False)
                for receipt in answer.get("receipts", []):
                    if receipt["client_id"] == entries[-1].client_id:
                        if entries[-1] not in target.held:
                            target.held.append(entries[-1])
                        number: int | None = receipt.get("invoice_no")
                        return number
    finally:
        await ws.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tillsync.tools.fuzz_frames",
                                     description=__doc__ and __doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000, help="frames to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4, help="links at a time")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.frames < 2 or args.connections < 1:
        parser.error("--frames must be at least 2 and --connections at least 1")
    with tempfile.TemporaryDirectory(prefix="tillsync-fuzz-") as tmp:
        result = asyncio.run(_command(args, Path(tmp)))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ("frames", "logged_in", "crashes", "internal_errors", "undefined_answers",
                     "unanswered", "stored_changed", "rejected_receipts_added",
                     "honest_sale_invoice", "seconds", "frames_per_second"):
            print(f"{name:24} {result[name]}")
        for outcome, count in result["outcomes"].items():
            print(f"  {outcome:40} {count}")
        for problem in result["problems"]:
            print(f"problem: {problem}")
    bad = result["crashes"] or result["internal_errors"] or result["problems"] \
        or result["stored_changed"] or result["honest_sale_invoice"] is None
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
