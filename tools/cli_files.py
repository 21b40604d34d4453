"""Files on the command line: ``--attach FILE`` on ``peer record`` and ``peer put``, and
``peer file`` / ``peer files`` to fetch and list a till's files (``peer.files``).

``peer record DIR expense --body ... --attach receipt.jpg`` adds the file to the till's
store first (through the daemon's API when ``peer run`` holds the store) and records the
entry with ``receipt_file`` set to the file's ref; ``peer put DIR products ID --body ...
--attach photo.png`` sets the product's ``image`` the same way.  A refused entry or
record leaves no file behind that was not held before."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tillsync.peer.errors import InvalidInput
from tillsync.peer.filelink import FilePolicy
from tillsync.peer.files import (
    ENTRY_FIELDS,
    MEDIA_TYPES,
    PRUNE_HOURS,
    RECORD_FIELDS,
    FileRef,
    TillFiles,
    check_hash,
)
from tillsync.schemas import SchemaViolation, UnknownCollection, UnknownKind
from tillsync.tools.cli_common import CliError, read_body

EXIT_OK, EXIT_BAD_INPUT, EXIT_STORE = 0, 2, 3
Verb = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class FileCliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def _upload(store: Path, source: Path) -> FileRef:
    """Add the file through the API of the daemon that holds the store."""
    import aiohttp

    from tillsync.peer.http import auth
    from tillsync.peer.http.app import served_url

    url = served_url(store)
    if url is None:
        raise FileCliError(f"the daemon holding {store} serves no API", EXIT_STORE)
    headers = {"Authorization": f"Bearer {auth.owner_token(store)}",
               "Content-Type": "application/octet-stream"}
    data = await asyncio.to_thread(source.read_bytes)
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as session, \
                session.post(url + "/api/files", data=data,
                             headers=headers) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise FileCliError(f"the daemon holding {store} does not answer on {url}: "
                           f"{exc or type(exc).__name__}", EXIT_STORE) from None
    if response.status >= 400:
        message = (answer.get("error") or {}).get("message", "refused")
        raise FileCliError(f"--attach {source}: {message}", EXIT_BAD_INPUT)
    ref = FileRef.from_json(answer.get("file"))
    assert ref is not None
    return ref


def _add_here(store: Path, source: Path) -> tuple[FileRef, bool]:
    if not (store / "device.key").exists():
        raise FileCliError(f"no tillsync store in {store}", EXIT_STORE)
    with open(source, "rb") as handle:
        return TillFiles(store).add(handle)


def _with_attach(original: Verb, field_of: Callable[[argparse.Namespace], str | None],
                 what: Callable[[argparse.Namespace], str]) -> Verb:
    """``original`` (``peer record`` or ``peer put``) with ``--attach FILE``."""

    async def run(args: argparse.Namespace) -> int:
        from tillsync.tools import cli

        if args.attach is None:
            try:
                return await original(args)
            except (InvalidInput, SchemaViolation, UnknownKind, UnknownCollection) as exc:
                # as ``tools.cli.main`` says it of a write
                raise FileCliError(f"{exc}\nnothing was stored.", EXIT_BAD_INPUT) from None

        field = field_of(args)
        if field is None:
            raise FileCliError(f"--attach: {what(args)} takes no file (files go with: "
                               f"{', '.join(list(ENTRY_FIELDS) + list(RECORD_FIELDS))})",
                               EXIT_BAD_INPUT)
        body = read_body(args.body)
        if not isinstance(body, dict):
            raise FileCliError("--body must be a JSON object", EXIT_BAD_INPUT)
        source, store = Path(args.attach), Path(args.dir)
        if not await asyncio.to_thread(source.is_file):
            raise FileCliError(f"--attach {source}: no such file", EXIT_BAD_INPUT)
        new = False
        try:
            if await cli._daemon_serves(args.dir):
                ref = await _upload(store, source)
            else:
                ref, new = await asyncio.to_thread(_add_here, store, source)
        except InvalidInput as exc:
            raise FileCliError(f"--attach {source}: {exc}\nnothing was stored.",
                               EXIT_BAD_INPUT) from None
        args.body = json.dumps({**body, field: ref.to_json()})
        try:
            return await original(args)
        except (InvalidInput, SchemaViolation, UnknownKind, UnknownCollection,
                CliError) as exc:
            if new:  # refused: the file goes too, unless it was held before
                TillFiles(store).discard(ref.sha256)
            suffix = "" if "nothing was stored" in str(exc) else "\nnothing was stored."
            raise FileCliError(f"{exc}{suffix}", getattr(exc, "code", EXIT_BAD_INPUT)) \
                from None

    return run


async def peer_file(args: argparse.Namespace) -> int:
    """``peer file DIR HASH -o OUT``: write one file the till holds."""
    return await asyncio.to_thread(_write_file, args)


def _write_file(args: argparse.Namespace) -> int:
    files = TillFiles(Path(args.dir))
    try:
        ref = files.ref(check_hash(args.sha256))
    except InvalidInput as exc:
        raise FileCliError(str(exc), EXIT_BAD_INPUT) from None
    if ref is None:
        raise FileCliError(f"{args.dir} holds no file {args.sha256}", EXIT_BAD_INPUT)
    if args.output == "-":
        with open(files.path_of(ref.sha256), "rb") as handle:
            shutil.copyfileobj(handle, sys.stdout.buffer)
    else:
        shutil.copyfile(files.path_of(ref.sha256), args.output)
        print(json.dumps(ref.to_json()) if args.json else
              f"wrote {args.output}: {ref.size} bytes of {ref.media_type}")
    return EXIT_OK


async def _prune(args: argparse.Namespace) -> int:
    """``peer files DIR --prune``: remove the files no entry or record names, older than
    ``--hours`` (``peer.files``, "Uploads no entry names")."""
    from tillsync.peer.store import Till

    if args.hours < 0:
        raise FileCliError("--hours must be 0 or more", EXIT_BAD_INPUT)
    async with await Till.open(Path(args.dir), readonly=True) as till:
        named = await till.file_names()
    files = TillFiles(Path(args.dir))
    gone = await asyncio.to_thread(files.prune, named, args.hours * 3600, time.time())
    if args.json:
        print(json.dumps({"removed": [r.to_json() for r in gone]}, indent=2, sort_keys=True))
    else:
        for ref in gone:
            print(f"removed {ref.sha256}  {ref.size:>10}  {ref.media_type}")
        print(f"{len(gone)} files no entry or record names removed "
              f"({sum(r.size for r in gone):,} bytes)")
    return EXIT_OK


async def peer_files(args: argparse.Namespace) -> int:
    """``peer files DIR``: every file held, and whether the relay has it."""
    if args.prune:
        return await _prune(args)
    rows = TillFiles(Path(args.dir)).listing()
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        for row in rows:
            print(f"{row['sha256']}  {row['size']:>10}  {row['media_type']:<16}  "
                  f"{'at relay' if row['at_relay'] else 'not yet at relay'}")
        if not rows:
            print("no files")
    return EXIT_OK


def _caught(verb: Verb) -> Verb:
    """Print a ``FileCliError`` as the other verbs print theirs, with its exit status."""

    async def run(args: argparse.Namespace) -> int:
        try:
            return await verb(args)
        except FileCliError as exc:
            print(f"tillsync: {exc}", file=sys.stderr)
            return exc.code

    return run


def add_peer_verbs(verbs: Any, verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Wire into ``peer``: ``--attach`` on ``record`` and ``put``, ``file`` and ``files``."""
    record, put = verbs.choices["record"], verbs.choices["put"]
    help_text = "a file to attach (JPEG, PNG, WebP, GIF or PDF): stored by its SHA-256 " \
                "here, sent to the relay at sync; sets the body's {}"
    record.add_argument("--attach", metavar="FILE", help=help_text.format(
        "file field (expense: receipt_file)"))
    record.set_defaults(func=_caught(_with_attach(
        record.get_default("func"), lambda a: ENTRY_FIELDS.get(a.kind),
        lambda a: f"a {a.kind} entry")))
    put.add_argument("--attach", metavar="FILE", help=help_text.format(
        "file field (products: image)"))
    put.set_defaults(func=_caught(_with_attach(
        put.get_default("func"), lambda a: RECORD_FIELDS.get(a.collection),
        lambda a: f"a {a.collection} record")))
    sub = verb("file", _caught(peer_file), "write one file the till holds (by its SHA-256)")
    sub.add_argument("sha256", metavar="HASH", help="the file's SHA-256 (its ref's sha256)")
    sub.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="where to write it (- for standard output)")
    files = verb("files", _caught(peer_files),
                 "the files the till holds, and which the relay has")
    files.add_argument("--prune", action="store_true", help="remove the files no entry or "
                       "record names (uploads never used), older than --hours; they are "
                       "never sent to the relay or LAN peers")
    files.add_argument("--hours", type=float, default=PRUNE_HOURS, metavar="H",
                       help=f"with --prune: only files older than this (default "
                       f"{PRUNE_HOURS:g})")


# -- the relay's settings ----------------------------------------------------------------


def add_relay_serve_flags(sub: argparse.ArgumentParser) -> None:
    """``relay serve --max-file-mib``, ``--file-types``."""
    from tillsync.relay.files import FILE_TYPES, MAX_FILE_MIB

    sub.add_argument("--max-file-mib", type=float, default=MAX_FILE_MIB, metavar="MIB",
                     help="the largest file (expense receipt, product image) the relay "
                     f"takes from the tills, in MiB (default {MAX_FILE_MIB:g})")
    sub.add_argument("--file-types", default=",".join(FILE_TYPES), metavar="TYPES",
                     help="the media types of files the relay takes, comma-separated, of "
                     f"{', '.join(MEDIA_TYPES)} (default {','.join(FILE_TYPES)})")


def file_policy(args: argparse.Namespace) -> FilePolicy:
    """The relay's file settings from its flags; a bad one is refused before it starts."""


    mib = args.max_file_mib
    if not (0 < mib <= 1024):
        raise CliError(f"--max-file-mib must be above 0 and at most 1024, not {mib:g}",
                       EXIT_BAD_INPUT)
    types = tuple(t.strip() for t in args.file_types.split(",") if t.strip())
    unknown = [t for t in types if t not in MEDIA_TYPES]
    if unknown or not types:
        raise CliError(f"--file-types: {', '.join(unknown) or 'none given'}; the types a "
                       f"file may be are {', '.join(MEDIA_TYPES)}", EXIT_BAD_INPUT)
    return FilePolicy(int(mib * 1024 * 1024), types)


def worker_flags(args: argparse.Namespace) -> list[str]:
    """The same settings, for each process of ``relay serve --workers``."""
    file_policy(args)
    return ["--max-file-mib", str(args.max_file_mib), "--file-types", args.file_types]
