"""Files between two tills on the LAN, with the relay down: an expense receipt recorded
on one till through its daemon (``peer record --attach``) and a product image reach the
other till over their link, whole and checked; when the relay is back, the till that
did not record them carries them up."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tests.peer.lan_processes import LanTill, linked, wait_until
from tests.relay.processes import Relays, cli_json, run_cli

STORE = "store-lan-files"
EXPENSE = {"amount": 990, "category": "cleaning", "description": "soap", "method": "card"}


def _files(till: LanTill) -> dict[str, dict[str, Any]]:
    return {row["sha256"]: row for row in cli_json("peer", "files", str(till.path))}


def _partials(till: LanTill) -> list[str]:
    folder = till.path / "files" / "partial"
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def test_files_reach_the_other_till_on_the_lan_and_it_carries_them_to_the_relay(
        tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        one, two = LanTill(tmp_path / "till1", "Till 1"), LanTill(tmp_path / "till2", "Till 2")
        for till in (one, two):
            till.init(relay, STORE)
            till.sync()  # each learns the other's certificate
        relay.kill()  # the shop's internet is down from here on
        receipt, photo = tmp_path / "receipt.pdf", tmp_path / "bread.webp"
        receipt.write_bytes(b"%PDF-1.7\n" + os.urandom(700 * 1024))  # three chunks
        photo.write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(5000))
        shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (receipt, photo)]

        with linked(one, two):
            # Through the daemon holding the store: the file goes up its API first.
            entry = cli_json("peer", "record", str(one.path), "expense", "--body",
                             json.dumps(EXPENSE), "--attach", str(receipt))
            assert entry["body"]["receipt_file"]["sha256"] == shas[0]
            run_cli("peer", "put", str(one.path), "products", "bread", "--body",
                    json.dumps({"name": "Bread", "sku": "B1", "price": 320}),
                    "--attach", str(photo))
            # Each till dialled the other: both links may carry the same file.  The one
            # that did not complete it stops at its next chunk and drops its partial, so
            # the state to reach is both files whole and nothing partial left.
            wait_until(lambda: set(shas) <= set(_files(two)) and not _partials(two),
                       "both files whole on Till 2, no partial left")
            for sha, source in zip(shas, (receipt, photo), strict=True):
                out = tmp_path / f"copy-{sha[:8]}"
                run_cli("peer", "file", str(two.path), sha, "-o", str(out))
                assert out.read_bytes() == source.read_bytes()
            assert (two.get("products", "bread") or {})["image"]["sha256"] == shas[1]
            assert not any(row["at_relay"] for row in _files(two).values())

        # The relay is back; Till 2, which recorded neither, carries both files up.
        relay.start()
        report = two.sync_json()
        assert report["files"] == 2 and report["errors"] == []
        assert all(row["at_relay"] for row in _files(two).values())
        assert one.sync_json()["files"] == 2  # the relay says it holds them already
        assert all(row["at_relay"] for row in _files(one).values())
