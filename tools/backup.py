"""``tillsync peer backup`` and ``tillsync relay backup``: a consistent copy of a live store.

Both copy the SQLite database with SQLite's online backup API, so the copy is one
consistent snapshot even while ``peer run`` or ``relay serve`` keeps writing (WAL),
copy the key files beside it owner-only, and then the whole files of ``files/``
(expense receipts, product images), each checked against its hash, never ``partial/``.
The files go after the database: a file is whole and never changes once it is in
place, and an entry may name only a file the till held when it was recorded, so every
file the database copy names is in the copy (a relay may hold entries whose files have
not come yet; they come from the tills as usual).  The destination is a complete store directory
or relay data folder: to restore, stop the process and put the folder in place (or point
``DIR`` / ``--data`` at it).  The copy is checked before the command says it is done: a
till's chains and signatures are verified, a relay's database passes SQLite's integrity
check and its invoice register is counted.

What a backup is not: a way to run two copies of one device.  A till restored from a
backup older than what it already sent must not sell under its old identity (its next
entry would fork its chain at the relay); `docs/deployment.md` says what to do instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tillsync.peer.errors import InvalidInput
from tillsync.peer.files import FILES_DIR, ContentDir, TillFiles
from tillsync.peer.store import Till

TILL_DB = "till.db"
RELAY_DB = "relay.db"
# Files of a store directory that are the process's run-time state, not data.
_RUNTIME = {"lock", "api.json", "api.json.tmp", "lan.json", "relay.lock"}
PAGES_PER_STEP = 1024  # SQLite backup step: short write-lock pauses for the live process


def _fresh_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} already exists and is not an empty directory: a backup "
                           "never overwrites; name a new directory")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)


def copy_database(src: Path, dest: Path, progress: Callable[[int, int], None] | None = None,
                  ) -> None:
    """Copy a (possibly live) SQLite database into a new file, consistently."""
    if not src.is_file():
        raise InvalidInput(f"{src} does not exist: not a tillsync store or relay data folder")
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        def step(_status: int, remaining: int, total: int) -> None:
            if progress is not None:
                progress(total - remaining, total)

        source.backup(target, pages=PAGES_PER_STEP, progress=step)
        target.execute("PRAGMA journal_mode=WAL")  # as the stores open their files
    finally:
        target.close()
        source.close()
    os.chmod(dest, 0o600)


def _copy_keys(src: Path, dest: Path, database: str) -> list[str]:
    """Copy the folder's other regular files (keys, tokens) owner-only; their names."""
    copied = []
    for item in sorted(src.iterdir()):
        if (item.name in _RUNTIME or item.name.startswith(database) or not item.is_file()
                or item.is_symlink()):
            continue
        shutil.copyfile(item, dest / item.name)
        os.chmod(dest / item.name, 0o600)
        copied.append(item.name)
    return copied


def _reporter(quiet: bool) -> Callable[[int, int], None] | None:
    """Progress on stderr, a line each tenth of the database."""
    if quiet:
        return None
    shown = [-1]

    def show(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != shown[0]:
            shown[0] = tenth
            print(f"  copied {done:,} of {total:,} pages", file=sys.stderr)

    return show


def _copy_till_files(src: Path, dest: Path) -> dict[str, Any]:
    """A till's whole files, and the relay's confirmations of them."""
    source, target = TillFiles(src), TillFiles(dest)
    count, size, problems = source.copy_whole_to(target.root)
    for sha in target.hashes():
        if source.at_relay(sha):
            target.mark_at_relay(sha)
    return {"count": count, "bytes": size, "problems": problems}


def _copy_relay_files(src: Path, dest: Path) -> dict[str, Any]:
    """Every store's whole files (``DATA/files/<store hash>/``)."""
    count = size = 0
    problems: list[str] = []
    root = src / FILES_DIR
    for store in sorted(root.iterdir()) if root.is_dir() else []:
        if store.is_dir() and not store.is_symlink():
            n, b, bad = ContentDir(store).copy_whole_to(dest / FILES_DIR / store.name)
            count, size, problems = count + n, size + b, problems + bad
    return {"count": count, "bytes": size, "problems": problems}


async def backup_till(src: Path, dest: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Back up the store in ``src`` into the new directory ``dest`` and verify the copy."""
    if not (src / TILL_DB).is_file():
        raise InvalidInput(f"{src} holds no tillsync store ({TILL_DB} is missing)")
    _fresh_destination(dest)
    copy_database(src / TILL_DB, dest / TILL_DB, _reporter(quiet))
    files = _copy_keys(src, dest, TILL_DB)
    attached = _copy_till_files(src, dest)
    async with await Till.open(dest, readonly=True) as till:
        report = await till.verify()
        status = await till.status()
    problems = report.problems + attached["problems"]
    return {"backup": str(dest), "files": [TILL_DB, *files], "entries": report.entries,
            "verified": not problems, "problems": problems, "attachments": attached,
            "pending": status.get("pending"), "device_id": status.get("device_id")}


def backup_relay(src: Path, dest: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Back up a SQLite relay's data folder into the new directory ``dest`` and check it."""
    if not (src / RELAY_DB).is_file():
        raise InvalidInput(f"{src} holds no SQLite relay database ({RELAY_DB} is missing); "
                           "a relay on PostgreSQL is backed up with pg_dump, plus relay.key")
    _fresh_destination(dest)
    copy_database(src / RELAY_DB, dest / RELAY_DB, _reporter(quiet))
    files = _copy_keys(src, dest, RELAY_DB)
    attached = _copy_relay_files(src, dest)
    db = sqlite3.connect(f"file:{dest / RELAY_DB}?mode=ro", uri=True)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        stores = {f"{store} {series}": (n, last) for store, series, n, last in db.execute(
            "SELECT store, series, count(*), max(invoice_no) FROM invoices "
            "GROUP BY store, series")}
        entries = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    finally:
        db.close()
    return {"backup": str(dest), "files": [RELAY_DB, *files], "integrity": check,
            "verified": check == "ok" and not attached["problems"], "entries": entries,
            "attachments": attached,
            "invoices": {s: {"count": n, "last": last} for s, (n, last) in stores.items()}}


def _attached(data: dict[str, Any]) -> str:
    files = data["attachments"]
    return f"{files['count']} files ({files['bytes']:,} bytes)"


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> int:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else human)
    return 0 if data["verified"] else 1


async def peer_backup(args: argparse.Namespace) -> int:
    data = await backup_till(Path(args.dir), Path(args.dest), quiet=args.json)
    return _emit(args, data, (
        f"backed up {data['entries']} entries of device {data['device_id']} "
        f"({data['pending']} not yet at the relay) and {_attached(data)} into "
        f"{data['backup']}: "
        + ("every chain link and signature holds" if data["verified"]
           else "FAILED verification: " + "; ".join(data["problems"]))
        + "\nto restore: stop `peer run`, then use this directory as the store's DIR"))


async def relay_backup(args: argparse.Namespace) -> int:
    data = backup_relay(Path(args.data), Path(args.dest), quiet=args.json)
    registers = ", ".join(f"{name}: {v['count']} invoices, last {v['last']}"
                          for name, v in sorted(data["invoices"].items())) or "no invoices"
    return _emit(args, data, (
        f"backed up {data['entries']} entries and {_attached(data)} into {data['backup']} "
        f"(integrity {data['integrity']}; {registers})"
        + "".join(f"\nFAILED: {p}" for p in data["attachments"]["problems"])
        + "\nto restore: stop `relay serve`, then serve "
        "with --data pointing at this directory"))


def add_peer_verb(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``peer backup`` through the peer parser's own verb factory."""
    sub = verb("backup", peer_backup, "copy the store consistently, even while `peer run` "
               "holds it, into a new directory, and verify the copy")
    sub.add_argument("dest", metavar="DEST", help="a new directory for the copy")


def add_relay_verb(relay_verbs: Any) -> None:
    """Register ``relay backup``."""
    sub = relay_verbs.add_parser(
        "backup", help="copy a SQLite relay's data folder while it runs",
        description="copy a SQLite relay's database (consistently, while it serves), its "
        "relay.key and its stores' files into a new folder, then check the copy; for "
        "PostgreSQL use pg_dump and copy relay.key and files/ (see docs/deployment.md)")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("dest", metavar="DEST", help="a new directory for the copy")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_backup)
