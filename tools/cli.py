"""The ``tillsync`` command line.

Every verb that reports has ``--json``.  Exit status: 0 done, 1 a check failed
(``peer verify``), 2 bad input (nothing was stored), 3 the store cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from peer import client
from peer.errors import InvalidInput, StoreCorrupt, StoreError, TillsyncError
from peer.store import Till
from relay.server import Relay, RelayConfig, running
from schemas import COLLECTIONS, ENTRY_KINDS, SchemaViolation, UnknownCollection, UnknownKind
from tools import demo as demo_module

LOCK_WAIT = 5.0  # seconds a writing verb waits for `peer run` to finish its round
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_STORE, EXIT_RELAY = 0, 1, 2, 3, 4

EPILOG = """\
exit status: 0 done, 1 a check failed, 2 bad input (nothing stored), 3 store unusable,
4 the relay could not be reached or refused.
money is integer minor units (1250 = 12.50); quantities are integers or decimal strings
("0.75"); --body takes JSON, @FILE to read it from a file, or - for standard input."""


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _read_body(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise CliError(f"--body {text}: {exc.strerror}", EXIT_BAD_INPUT) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--body is not valid JSON: {exc}", EXIT_BAD_INPUT) from None


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human())


# -- peer verbs ------------------------------------------------------------------------


async def peer_init(args: argparse.Namespace) -> int:
    if bool(args.relay) != bool(args.code):
        raise CliError("--relay and --code go together (get a code from `tillsync relay "
                       "enroll`)", EXIT_BAD_INPUT)
    if args.relay:
        info = await client.init_enrolled(Path(args.dir), name=args.name, url=args.relay,
                                          code=args.code, series=args.series)
    else:
        info = await Till.init(args.dir, name=args.name, series=args.series,
                               store_id=args.store)
    public = {k: info[k] for k in ("device_id", "name", "series", "store_id", "public_key")}
    _emit(args, public, lambda: (
        f"initialised store in {args.dir}\n"
        f"  device   {info['device_id']} ({info['name']})\n"
        f"  store    {info['store_id']}"
        + (f", enrolled at {info['relay_url']}\n" if info.get("relay_url") else "\n")
        + f"  tickets  {info['series']}-000001, {info['series']}-000002, ...\n"
        f"  key      {args.dir}/device.key (owner-only; keep it secret, back it up)"
    ))
    return EXIT_OK


async def peer_put(args: argparse.Namespace) -> int:
    body = _read_body(args.body)
    if not isinstance(body, dict):
        raise CliError("--body must be a JSON object", EXIT_BAD_INPUT)
    async with await Till.open(args.dir, wait=LOCK_WAIT) as till:
        record = await till.put(args.collection, args.id, body)
    _emit(args, {"id": args.id, **record}, lambda: json.dumps({"id": args.id, **record},
                                                              sort_keys=True))
    return EXIT_OK


async def peer_get(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        if args.id is None:
            data: Any = till.all(args.collection)
        else:
            data = till.get(args.collection, args.id)
            if data is None:
                raise CliError(f"no {args.collection} record {args.id!r}", EXIT_BAD_INPUT)
    print(json.dumps(data, indent=2, sort_keys=True))
    return EXIT_OK


async def peer_record(args: argparse.Namespace) -> int:
    body = _read_body(args.body)
    async with await Till.open(args.dir, wait=LOCK_WAIT) as till:
        entry = await till.record(args.kind, body, client_id=args.client_id)
    data = entry.to_json()
    _emit(args, data, lambda: (
        f"recorded {entry.kind} seq {entry.seq} client_id {entry.client_id}"
        + (f" ticket {entry.ticket}" if entry.ticket else "")
    ))
    return EXIT_OK


async def peer_stock(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        rows = await till.stock()

    def human() -> str:
        lines = [f"{'product':<24} {'sku':<12} {'stock':>10}  note"]
        for r in rows:
            if r["volatile"]:
                value, note = "-", f"volatile, suggested price {r['suggested_price']}"
            else:
                value = r["qty"]
                note = "LOW (reorder level " + r["reorder_level"] + ")" if r.get("low") else ""
            lines.append(f"{str(r['name'])[:24]:<24} {str(r['sku'])[:12]:<12} {value:>10}  {note}")
        return "\n".join(lines) if rows else "no products"

    _emit(args, rows, human)
    return EXIT_OK


async def peer_status(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        status = await till.status()

    def human() -> str:
        shifts = ", ".join(f"{s['shift_client_id']} (expected cash {s['expected_cash']})"
                           for s in status["open_shifts"]) or "none"
        return "\n".join([
            f"device      {status['device_id']} ({status['name']})",
            f"store       {status['store_id']}",
            f"log         {status['last_seq']} entries of mine; last ticket "
            f"{status['last_ticket'] or 'none'}",
            f"pending     {status['pending']} not yet acknowledged by the relay",
            "relay       none configured (a store of its own)" if status["relay"] is None
            else f"relay       {status['relay']}, last contact "
                 f"{status['last_contact'] or 'never'}"
                 + (f"\n            last error: {status['last_error']}"
                    if status["last_error"] else ""),
            f"receipts    {status['waiting']} waiting, {len(status['rejected'])} rejected"
            + "".join(f"\n            rejected {r['kind']} seq {r['seq']}: {r.get('code')}: "
                      f"{r.get('message')}" for r in status["rejected"]),
            f"open shifts {shifts}",
            f"held sales  {len(status['held_sales'])}",
            "master      " + ", ".join(f"{n} {c}" for c, n in status["master"].items()),
        ])

    _emit(args, status, human)
    return EXIT_OK


async def peer_verify(args: argparse.Namespace) -> int:
    try:
        till = await Till.open(args.dir, readonly=True)
    except StoreCorrupt as exc:  # damage found before the chain walk: still a failed check
        damage = str(exc)
        _emit(args, {"ok": False, "first_break": None, "problems": [damage]},
              lambda: f"FAILED: {damage}")
        return EXIT_CHECK_FAILED
    async with till:
        def progress(n: int) -> None:
            if not args.json:
                print(f"  checked {n} entries...", file=sys.stderr)

        report = await till.verify(progress=progress)
    data = report.to_json()

    def human() -> str:
        if report.ok:
            return (f"ok: {report.entries} entries of {report.devices} device(s); every chain "
                    "link and signature holds")
        lines = [f"FAILED after checking {report.entries} entries"]
        if report.first_break is not None:
            lines.append(f"  first broken link: {report.first_break}")
        lines.extend(f"  {p}" for p in report.problems)
        return "\n".join(lines)

    _emit(args, data, human)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


async def peer_sync(args: argparse.Namespace) -> int:
    if not args.once:
        raise CliError("peer sync runs one round: pass --once (the daemon is `peer run`)",
                       EXIT_BAD_INPUT)
    async with await Till.open(args.dir, wait=10.0) as till:
        report = await client.sync_once(till, args.relay)
    data = vars(report)
    _emit(args, data, lambda: (
        f"synced: pushed {report.pushed} entries, received {report.receipts} receipts "
        f"({report.accepted} accepted, {report.waiting} waiting, {report.rejected} rejected "
        f"of mine), {report.doc_changes} document messages; {report.pending} pending"))
    return EXIT_OK


async def peer_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    await client.run(Path(args.dir), url=args.relay, interval=args.interval)
    return EXIT_OK


async def peer_receipts(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        receipts = await till.receipts()
    if args.mine:
        receipts = [r for r in receipts if r.get("device_id") == till.device_id]
    rows = [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()}
            for r in receipts]

    def human() -> str:
        lines = [f"{'ticket':<16} {'invoice':<14} {'status':<9} {'total':>9}  kind / note"]
        for r in receipts:
            invoice = f"{r['series']}-{r['invoice_no']:06d}" if "invoice_no" in r else ""
            note = r.get("error", {}).get("message", "") or ", ".join(
                w["code"] for w in r.get("warnings", []))
            total = f"{r['total'] / 100:.2f}" if "total" in r else ""
            lines.append(f"{r.get('ticket') or '':<16} {invoice:<14} {r['status']:<9} "
                         f"{total:>9}  {r.get('kind', '')} {r.get('server_id', '')} {note}")
        return "\n".join(lines) if receipts else "no receipts yet: run `tillsync peer sync`"

    _emit(args, rows, human)
    return EXIT_OK


async def relay_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One line per device session comes from tillsync.relay; the library's own
    # open/close lines would double them.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    config = RelayConfig(Path(args.data), args.host, args.port)
    async with running(config) as (_, port):
        print(f"relay listening on ws://{args.host}:{port} (data in {args.data})",
              flush=True)
        await asyncio.Event().wait()
    return EXIT_OK


async def relay_enroll(args: argparse.Namespace) -> int:
    relay = await Relay.open(Path(args.data))
    try:
        code = await relay.new_code(args.store, args.name, args.role,
                                    timedelta(hours=args.hours))
    finally:
        await relay.close()
    _emit(args, {"code": code, "store": args.store, "name": args.name,
                 "expires_in_hours": args.hours}, lambda: (
        f"{code}\n(one-time code for '{args.name}' in store {args.store}, valid "
        f"{args.hours} h: tillsync peer init DIR --name '{args.name}' --relay URL "
        f"--code {code})"))
    return EXIT_OK


async def peer_log(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        entries = await till.entries(kind=args.kind)
    data = [e.to_json() for e in entries]
    _emit(args, data, lambda: "\n".join(
        f"{e.seq:>6} {e.client_created_at} {e.kind:<16} {e.ticket or '':<16} {e.client_id}"
        for e in entries
    ) or "the log is empty")
    return EXIT_OK


async def peer_balances(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        balances = await till.balances()
    _emit(args, balances, lambda: "\n".join(f"{c:<36} {b:>12}" for c, b in balances.items())
          or "no customer owes anything")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillsync",
        description="Offline-first sync store for point-of-sale tills.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    areas = parser.add_subparsers(dest="area", required=True, metavar="{peer,relay,demo}")
    relay = areas.add_parser("relay", help="the relay server", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    relay_verbs = relay.add_subparsers(dest="verb", required=True)
    sub = relay_verbs.add_parser("serve", help="serve devices over websockets",
                                 description="serve devices over websockets")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sub.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    sub.set_defaults(func=relay_serve)
    sub = relay_verbs.add_parser("enroll", help="make a one-time code to enroll a device",
                                 description="make a one-time code to enroll a device")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--store", required=True, help="store id (created on first use)")
    sub.add_argument("--name", required=True, help="the device's name")
    sub.add_argument("--role", default="till", choices=["till", "backoffice", "admin"])
    sub.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_enroll)
    demo_parser = areas.add_parser("demo", help="one till selling offline, end to end",
                                   description=demo_module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    demo_module.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo_module.demo)
    peer = areas.add_parser("peer", help="a till's own store", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = peer.add_subparsers(dest="verb", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
             help_text: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("dir", metavar="DIR", help="the store's directory")
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(func=func)
        return sub

    sub = verb("init", peer_init, "create a store: device key, database, empty master data")
    sub.add_argument("--name", required=True, help="device name, e.g. 'Till 3'")
    sub.add_argument("--series", help="provisional ticket series (default: from the name)")
    sub.add_argument("--store", help="store id when not enrolling (default: a new UUID)")
    sub.add_argument("--relay", metavar="URL", help="relay to enroll with, ws://host:port")
    sub.add_argument("--code", help="one-time code from `tillsync relay enroll`")

    sub = verb("sync", peer_sync, "one sync round with the relay: push, receipts, document")
    sub.add_argument("--once", action="store_true", help="run one round and exit")
    sub.add_argument("--relay", metavar="URL", help="relay url (default: the enrolled one)")

    sub = verb("run", peer_run, "daemon: sync every few seconds, back off when the relay "
               "is unreachable", json_flag=False)
    sub.add_argument("--relay", metavar="URL", help="relay url (default: the enrolled one)")
    sub.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")

    sub = verb("receipts", peer_receipts, "the relay's answers: ticket -> invoice number, "
               "waiting and rejected entries")
    sub.add_argument("--mine", action="store_true", help="only this device's entries")

    sub = verb("put", peer_put, "create or update a master-data record (fields merge)")
    sub.add_argument("collection", choices=COLLECTIONS)
    sub.add_argument("id", metavar="ID", help="record id (UUID recommended; settings: 'store')")
    sub.add_argument("--body", required=True, help="fields as JSON; null removes a field")

    sub = verb("get", peer_get, "print master data as JSON", json_flag=False)
    sub.add_argument("collection", choices=COLLECTIONS)
    sub.add_argument("id", metavar="ID", nargs="?", help="one record (default: all)")

    sub = verb("record", peer_record, "append one entry to the log")
    sub.add_argument("kind", metavar="KIND", help=f"one of: {', '.join(ENTRY_KINDS)}")
    sub.add_argument("--body", required=True, help="the entry body as JSON")
    sub.add_argument("--client-id", help="idempotency key (UUID); a retry returns the "
                                         "stored entry instead of a duplicate")

    verb("stock", peer_stock, "stock of tracked products, suggested price of volatile ones")
    verb("status", peer_status, "device, pending entries, open shifts and expected cash")
    verb("verify", peer_verify, "re-check every chain link and signature; exit 1 if broken")
    verb("balances", peer_balances, "what each customer owes")
    sub = verb("log", peer_log, "list log entries")
    sub.add_argument("--kind", help="only this kind")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.func(args))
        return code
    except CliError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return exc.code
    except (InvalidInput, SchemaViolation, UnknownKind, UnknownCollection) as exc:
        print(f"tillsync: {exc}\nnothing was stored.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return EXIT_STORE
    except client.SyncError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return EXIT_RELAY
    except TillsyncError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return EXIT_STORE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
