"""What every part of the ``tillsync`` command line shares: exit codes, the epilog,
argument types, the error a verb raises, and how it prints."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tillsync.peer import logfmt
from tillsync.peer.shutdown import Deadlines

LOCK_WAIT = 5.0  # seconds a writing verb waits for `peer run` to finish its round
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_STORE, EXIT_RELAY = 0, 1, 2, 3, 4

DB_HELP = ("PostgreSQL database shared by relay processes, postgresql://user@host:port/"
           "db (default: SQLite in DIR)")

EPILOG = """\
exit status: 0 done, 1 a check failed, 2 bad input (nothing stored), 3 store unusable,
4 the relay could not be reached or refused.
money is integer minor units (1250 = 12.50); quantities are integers or decimal strings
("0.75"); --body takes JSON, @FILE to read it from a file, or - for standard input."""


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def relay_url(text: str) -> str:
    """An argparse type: a relay's websocket URL, ws:// or wss:// (an http:// one is a
    common slip, refused as bad input rather than met as a network failure)."""
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a relay URL: give ws://HOST:PORT (or wss:// with TLS)")
    return text


Number = TypeVar("Number", int, float)


def above_zero(convert: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: ``convert``'s number, refused unless it is more than 0."""
    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
        return value
    return parse


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def read_body(text: str) -> Any:
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


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human())


def shutdown_deadlines(args: argparse.Namespace) -> Deadlines:
    if not args.shutdown_grace > 0:
        raise CliError(f"--shutdown-grace must be more than 0 seconds, not "
                       f"{args.shutdown_grace}", EXIT_BAD_INPUT)
    return Deadlines.within(args.shutdown_grace)


def add_log_format_flag(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--log-format", choices=logfmt.FORMATS, default="text",
                     help="text lines (default), or one JSON object a line with time, "
                          "level, logger, message, store, device and connection")
