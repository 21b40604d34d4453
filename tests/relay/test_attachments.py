"""Files from the till to the relay, with real processes: a relay, tills driven by the
command line, and a websocket proxy in this process between them that can cut the link
mid-file or flip a byte of a chunk, and records what passes.

- an expense with a 2 MB receipt is recorded offline, its transfer is cut mid-file,
  and the next round goes on from what the relay holds (not from zero);
- a chunk corrupted in transit makes the whole file fail its hash at the relay, which
  drops it and asks again; the second copy is kept;
- a file over the relay's size, or of a type it does not take, is refused at the offer
  and nothing of it is stored;
- the relay serves a file behind the store's token, and no other store's token;
- a file no entry or record names (an upload never used) stays at the till, and
  ``peer files --prune`` removes it once old enough, never a named one;
- a partial of a file the relay now holds whole goes when the relay starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.relay.processes import (
    RelayProcess,
    Relays,
    TillDir,
    cli_json,
    refused_url,
    run_cli,
)
from tillsync.peer.files import TillFiles
from tillsync.peer.sync.frames import MAX_CHUNK, TRANSPORT_MAX
from tillsync.relay.files import store_files

STORE = "store-files"
EXPENSE = {"amount": 1250, "category": "supplies", "description": "paper rolls",
           "method": "cash"}


@dataclass
class Proxy:
    """A websocket proxy to ``target``: ``cut_after`` chunks forwarded, then both sides
    are dropped (once); ``corrupt`` flips a byte of the first chunk (once)."""

    target: str
    cut_after: int | None = None
    corrupt: bool = False
    chunks: list[list[int]] = field(default_factory=list)  # offsets, per connection
    wants: list[list[int]] = field(default_factory=list)  # file_want offsets from the relay
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=TRANSPORT_MAX,
                         compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _handle(self, till: ServerConnection) -> None:
        chunks: list[int] = []
        wants: list[int] = []
        self.chunks.append(chunks)
        self.wants.append(wants)
        async with connect(self.target, max_size=TRANSPORT_MAX, compression=None) as relay:
            async def up() -> None:
                async for frame in till:
                    assert isinstance(frame, bytes)
                    message = msgpack.unpackb(frame)
                    if message.get("t") == "file_chunk":
                        if self.corrupt:
                            self.corrupt = False
                            data = bytearray(message["data"])
                            data[len(data) // 2] ^= 0xFF
                            message["data"] = bytes(data)
                            frame = msgpack.packb(message, use_bin_type=True)
                        chunks.append(message["offset"])
                        if self.cut_after is not None and len(chunks) > self.cut_after:
                            self.cut_after = None
                            raise ConnectionAbortedError("cut by the test")
                    await relay.send(frame)

            async def down() -> None:
                async for frame in relay:
                    assert isinstance(frame, bytes)
                    message = msgpack.unpackb(frame)
                    if message.get("t") == "file_want":
                        wants.append(message["offset"])
                    await till.send(frame)

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    try:
                        await task
                    except (asyncio.CancelledError, ConnectionClosed, ConnectionAbortedError):
                        pass
        if till.state.name == "OPEN":
            till.transport.abort()  # no closing handshake: the link just drops


@pytest.fixture
def proxy_of() -> Iterator[Any]:
    made: list[Proxy] = []

    def make(relay: RelayProcess, **kwargs: Any) -> Proxy:
        made.append(Proxy(relay.url, **kwargs))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def json_text(value: object) -> str:
    return json.dumps(value)


def _jpeg(size: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 4)


def _till(tmp_path: Path, relay: RelayProcess, name: str) -> TillDir:
    till = TillDir(tmp_path / name.replace(" ", "").lower(), name)
    till.init(relay, STORE)
    return till


def _token(relay: RelayProcess, store: str = STORE) -> str:
    answer = cli_json("relay", "token", "--data", str(relay.data), "--store", store,
                      *(("--db", relay.db) if relay.db else ()))
    token = answer["token"]
    assert isinstance(token, str)
    return token


def _fetch(relay: RelayProcess, sha: str, token: str, store: str = STORE
           ) -> tuple[int, bytes, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{relay.port}/api/v1/stores/{store}/files/{sha}",
        headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _expense_with_a_receipt_synced(tmp_path: Path, till: TillDir) -> tuple[Path, str]:
    """An expense with a small PDF receipt recorded at ``till`` and synced (the file
    reaches the relay); the receipt's path and hash."""
    receipt = tmp_path / "r.pdf"
    receipt.write_bytes(b"%PDF-1.4\n" + os.urandom(3000))
    run_cli("peer", "record", str(till.path), "expense", "--body", json_text(EXPENSE),
            "--attach", str(receipt))
    assert till.sync_json()["files"] == 1
    return receipt, hashlib.sha256(receipt.read_bytes()).hexdigest()


def _files(till: TillDir) -> dict[str, dict[str, Any]]:
    return {row["sha256"]: row for row in cli_json("peer", "files", str(till.path))}


def test_a_2_mb_receipt_recorded_offline_reaches_the_relay_after_a_cut_mid_file(
        tmp_path: Path, relay_db: str | None, proxy_of: Any) -> None:
    with Relays(tmp_path / "relays", relay_db) as relays:
        relay = relays.start()
        till = _till(tmp_path, relay, "Till 1")
        receipt = tmp_path / "receipt.jpg"
        receipt.write_bytes(_jpeg(2 * 1024 * 1024))
        sha = hashlib.sha256(receipt.read_bytes()).hexdigest()

        # Offline: the relay cannot be reached; the entry and its file are kept.
        entry = cli_json("peer", "record", str(till.path), "expense", "--body",
                         json_text(EXPENSE), "--attach", str(receipt))
        assert entry["body"]["receipt_file"] == {"sha256": sha, "size": 2 * 1024 * 1024,
                                                 "media_type": "image/jpeg"}
        assert till.sync(refused_url(), check=False).returncode == 4
        assert _files(till)[sha]["at_relay"] is False

        # Back online through a link that drops after 3 chunks of the file.
        cut = proxy_of(relay, cut_after=3)
        assert till.sync(cut.url, check=False).returncode == 4
        relay_dir = store_files(relay.data, STORE)
        held = relay_dir.received(sha)
        assert 0 < held < 2 * 1024 * 1024 and held % MAX_CHUNK == 0
        assert not relay_dir.has(sha)
        assert _files(till)[sha]["at_relay"] is False
        assert cut.chunks[0][:3] == [0, MAX_CHUNK, 2 * MAX_CHUNK]

        # The next round goes on from what the relay holds, not from zero.
        again = proxy_of(relay)
        report = till.sync_json(again.url)
        assert report["files"] == 1 and report["errors"] == []
        assert again.wants[0][0] == held
        assert again.chunks[0][0] == held
        assert len(again.chunks[0]) == (2 * 1024 * 1024 - held) // MAX_CHUNK
        assert _files(till)[sha]["at_relay"] is True
        status, body, media = _fetch(relay, sha, _token(relay))
        assert (status, media) == (200, "image/jpeg")
        assert body == receipt.read_bytes()
        # The entry that names it went up too, and was accepted.
        assert [r["status"] for r in till.receipts(mine=True)] == ["accepted"]

        # A file already at the relay is not sent again: the next round offers nothing.
        third = proxy_of(relay)
        assert till.sync_json(third.url)["files"] == 0
        assert third.chunks == [[]]


def test_a_file_corrupted_in_transit_is_refused_and_sent_again(
        tmp_path: Path, relay_db: str | None, proxy_of: Any) -> None:
    with Relays(tmp_path / "relays", relay_db) as relays:
        relay = relays.start()
        till = _till(tmp_path, relay, "Till 1")
        receipt = tmp_path / "receipt.jpg"
        receipt.write_bytes(_jpeg(600 * 1024))  # three chunks
        sha = hashlib.sha256(receipt.read_bytes()).hexdigest()
        run_cli("peer", "record", str(till.path), "expense", "--body", json_text(EXPENSE),
                "--attach", str(receipt))

        flipping = proxy_of(relay, corrupt=True)
        report = till.sync_json(flipping.url)
        assert report["files"] == 1 and report["errors"] == []
        # The relay hashed the whole file, dropped it, asked from 0; the copy sent again
        # was kept.
        assert flipping.wants[0] == [0, MAX_CHUNK, 2 * MAX_CHUNK, 0, MAX_CHUNK,
                                     2 * MAX_CHUNK]
        assert flipping.chunks[0] == [0, MAX_CHUNK, 2 * MAX_CHUNK] * 2
        status, body, _ = _fetch(relay, sha, _token(relay))
        assert status == 200 and body == receipt.read_bytes()
        assert store_files(relay.data, STORE).received(sha) == 0  # no partial left


def test_too_big_or_the_wrong_type_is_refused_and_nothing_is_stored(
        tmp_path: Path, relay_db: str | None) -> None:
    with Relays(tmp_path / "relays", relay_db) as relays:
        relay = relays.start(extra=["--max-file-mib", "1", "--file-types",
                                    "image/jpeg,application/pdf"])
        till = _till(tmp_path, relay, "Till 1")
        big, png = tmp_path / "big.jpg", tmp_path / "photo.png"
        big.write_bytes(_jpeg(1024 * 1024 + 1))
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1000))
        run_cli("peer", "record", str(till.path), "expense", "--body", json_text(EXPENSE),
                "--attach", str(big))
        run_cli("peer", "put", str(till.path), "products", "bread", "--body",
                json_text({"name": "Bread", "sku": "B1", "price": 320}), "--attach", str(png))
        report = till.sync_json()
        assert report["files"] == 0
        big_sha = hashlib.sha256(big.read_bytes()).hexdigest()
        png_sha = hashlib.sha256(png.read_bytes()).hexdigest()
        errors = "\n".join(report["errors"])
        assert f"file {big_sha}: too_large" in errors and "at most 1048576" in errors
        assert f"file {png_sha}: wrong_type" in errors and "image/png" in errors
        relay_dir = store_files(relay.data, STORE)
        for sha in (big_sha, png_sha):
            assert not relay_dir.has(sha) and relay_dir.received(sha) == 0
            assert _files(till)[sha]["at_relay"] is False  # kept, offered again later
        # The entry and the record went up all the same: only the files are refused.
        assert [r["status"] for r in till.receipts(mine=True)] == ["accepted"]
        token = _token(relay)
        assert _fetch(relay, big_sha, token)[0] == 404


def test_a_file_is_served_behind_its_own_stores_token_only(
        tmp_path: Path, relay_db: str | None) -> None:
    with Relays(tmp_path / "relays", relay_db) as relays:
        relay = relays.start()
        till = _till(tmp_path, relay, "Till 1")
        other = TillDir(tmp_path / "other", "Other")
        other.init(relay, "store-other")
        receipt, sha = _expense_with_a_receipt_synced(tmp_path, till)
        status, body, media = _fetch(relay, sha, _token(relay))
        assert (status, body, media) == (200, receipt.read_bytes(), "application/pdf")
        foreign = _token(relay, "store-other")
        assert _fetch(relay, sha, foreign)[0] == 401  # a token opens its own store only
        assert _fetch(relay, sha, foreign, "store-other")[0] == 404
        assert _fetch(relay, "x" * 64, _token(relay))[0] == 400
        assert _fetch(relay, str(uuid.uuid4()), "tsk_wrong")[0] == 401


def test_an_upload_no_entry_names_stays_at_the_till_and_is_pruned(
        tmp_path: Path, relay_db: str | None) -> None:
    with Relays(tmp_path / "relays", relay_db) as relays:
        relay = relays.start()
        till = _till(tmp_path, relay, "Till 1")
        receipt, photo = tmp_path / "r.pdf", tmp_path / "p.png"
        receipt.write_bytes(b"%PDF-1.4\n" + os.urandom(3000))
        photo.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
        named = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (receipt, photo)]
        run_cli("peer", "record", str(till.path), "expense", "--body", json_text(EXPENSE),
                "--attach", str(receipt))
        run_cli("peer", "put", str(till.path), "products", "jam", "--body",
                json_text({"name": "Jam", "sku": "J1", "price": 450}), "--attach", str(photo))
        # Added to the till's files but never named (what POST /api/files leaves when
        # the front end drops the sale it was for).
        unused, _ = TillFiles(till.path).add_bytes(b"%PDF-1.4\n" + os.urandom(1000))

        report = till.sync_json()
        assert report["files"] == 2 and report["errors"] == []
        relay_dir = store_files(relay.data, STORE)
        assert all(relay_dir.has(sha) for sha in named)
        assert not relay_dir.has(unused.sha256) and relay_dir.received(unused.sha256) == 0
        assert {sha: row["at_relay"] for sha, row in _files(till).items()} == {
            named[0]: True, named[1]: True, unused.sha256: False}
        assert till.sync_json()["files"] == 0  # not offered at a later round either

        # Young: kept (it may be named in a moment).  Older than --hours: removed.
        kept = cli_json("peer", "files", str(till.path), "--prune")
        assert kept == {"removed": []} and unused.sha256 in _files(till)
        gone = cli_json("peer", "files", str(till.path), "--prune", "--hours", "0")
        assert gone == {"removed": [unused.to_json()]}
        assert set(_files(till)) == set(named)
        assert run_cli("peer", "verify", str(till.path)).returncode == 0


def test_a_partial_of_a_file_now_whole_is_dropped_when_the_relay_starts(
        tmp_path: Path, relay_db: str | None) -> None:
    """A cut transfer's partial whose file is now whole at the relay goes when the relay
    starts, with no till offering the file again; a partial of a file the relay does not
    hold stays (a till resumes it), and the whole file is served as before."""
    with Relays(tmp_path / "relays", relay_db) as relays:
        relay = relays.start()
        till = _till(tmp_path, relay, "Till 1")
        receipt, sha = _expense_with_a_receipt_synced(tmp_path, till)
        relay.kill()
        files = store_files(relay.data, STORE)
        assert files.has(sha)
        absent = hashlib.sha256(b"not here yet").hexdigest()
        partial = files.root / "partial"
        # Left by transfers cut short: one of the file that then came whole, one of a
        # file still to come.
        (partial / sha).write_bytes(receipt.read_bytes()[:1000])
        (partial / absent).write_bytes(b"%PDF-1.4\n")
        relay.start()
        assert sorted(p.name for p in partial.iterdir()) == [absent]
        assert files.received(absent) == len(b"%PDF-1.4\n")
        assert _fetch(relay, sha, _token(relay)) == (200, receipt.read_bytes(),
                                                     "application/pdf")
        assert "dropped 1 partial files of files held whole" in relay.stderr()
