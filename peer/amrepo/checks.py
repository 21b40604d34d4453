"""What an automerge-repo client's sync message may change, decided before it is applied.

A JavaScript client writes the master document directly, so its changes get the checks
a till's own ``MasterData.put`` makes, and the role rule the relay and LAN peers apply:

- roles by actor (``peer.master.roles``): a change to a price or the settings must come
  from an actor whose device has a managing role.  A client's actor is its device's 16
  bytes followed by a suffix of its own (``device_of_actor``), never a device's bare id,
  which that device's own edits use;
- every record a change touches must still match its schema in ``schemas/master/``
  (``validate_record``), a string written as Automerge Text read as the string it holds;
- only maps, lists, strings (scalar or Text), integers and booleans: a Counter, a float,
  a timestamp, bytes or null is refused.  The Python binding panics on reading a Counter
  (``PanicException``, a ``BaseException``) and a panic can poison a document's lock;
- the document's top level (the five collections) is fixed, a cashier's PIN is never
  stored in clear, and its ``pin_hash`` is set through the till's API only.

All of it is decided on a fork (``MasterData.fork_sync``), with any exception of the
binding caught there: nothing of a refused message reaches the live document, so nothing
of it is stored or forwarded, and a panic poisons only the fork.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import automerge.core as am

from tillsync.peer.errors import InvalidInput
from tillsync.peer.master import MasterData
from tillsync.peer.master.document import COLLECTIONS
from tillsync.peer.master.roles import MANAGING_ROLES, device_of_actor, guarded
from tillsync.schemas import validate_record
from tillsync.schemas.validate import SchemaViolation

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# In a patch's Debug text (string literals taken out): values the binding cannot read.
_UNREADABLE = re.compile(r"\b(Counter|Increment)\b")
_PLAIN = (am.ScalarType.Str, am.ScalarType.Int, am.ScalarType.Boolean)
MAX_PROBLEMS = 20


class Refused(InvalidInput):
    """A client's document changes that may not be applied; nothing of them was."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"document changes refused: {problems[0]}{more}")


def check_sync(master: MasterData, data: bytes, role_of: Callable[[str], str | None]
               ) -> None:
    """Raise ``Refused`` if the changes in sync message ``data`` break a rule (see the
    module's docstring), ``InvalidInput`` if it does not decode; return if it may be
    applied.  ``role_of``: a device's role, None if unknown (then it may not manage)."""
    try:
        problems = _problems(master, data, role_of)
    except (KeyboardInterrupt, SystemExit):
        raise
    except InvalidInput:
        raise
    except BaseException as exc:  # a panic of the binding, on the fork only
        problems = [f"a Counter, or another value the binding cannot read "
                    f"({type(exc).__name__}: {str(exc)[:200]}); write only maps, lists, "
                    "strings, integers and booleans"]
    if problems:
        raise Refused(problems)


def _problems(master: MasterData, data: bytes, role_of: Callable[[str], str | None]
              ) -> list[str]:
    forked = master.fork_sync(data)
    if forked is None:
        return []
    fork, changes = forked
    problems: list[str] = []
    touched: dict[tuple[str, str], None] = {}
    for change in changes:
        actor = bytes(change.actor_id)
        device = device_of_actor(actor)
        role = role_of(device) if device is not None else None
        for patch in fork.diff(list(change.deps), [change.hash]):
            text = repr(patch)
            path, key = _path(text)
            if _UNREADABLE.search(_STRING.sub('""', text)):
                problems.append("a Counter: counters are not part of master data (write "
                                "an integer)")
                continue
            if not path:
                problems.append(f"the document's top level is fixed (key {key!r})")
                continue
            what = guarded(patch)
            if what is not None and role not in MANAGING_ROLES:
                problems.append(f"{what} changed by device {device or actor.hex()} (role "
                                f"{role or 'unknown'}): only a back-office or admin device "
                                "may change prices and settings")
            record = path[1] if len(path) >= 2 else key
            if record:
                touched[(path[0], record)] = None
    for collection, record_id in touched:
        problems += _record_problems(master, fork, collection, record_id)
        if len(problems) >= MAX_PROBLEMS:
            break
    return list(dict.fromkeys(problems))


def _path(text: str) -> tuple[list[str], str]:
    """The map keys from the root to a patch's object, and the key it changes ("" for
    a list or text index), read from the patch's Debug text."""
    path: list[str] = []
    key = ""
    for found in re.finditer(r'Map\(("(?:[^"\\]|\\.)*")\)|key: ("(?:[^"\\]|\\.)*")', text):
        literal = found.group(1) or found.group(2)
        value = _unquote(literal)
        if found.group(1) is not None and not key:
            path.append(value)
        elif found.group(2) is not None and not key:
            key = value
    return path, key


def _unquote(literal: str) -> str:
    inner = literal[1:-1]
    return re.sub(r"\\(.)", r"\1", inner) if "\\" in inner else inner


def _record_problems(master: MasterData, fork: am.Document, collection: str,
                     record_id: str) -> list[str]:
    if collection not in COLLECTIONS:
        return [f"unknown collection {collection!r}"]
    found = fork.get(am.ROOT, collection)
    assert found is not None and found[0] == am.ObjType.Map  # the top level is unchanged
    value = fork.get(found[1], record_id)
    if value is None:
        return []  # removed: the role rule above is the only one
    where = f"{collection} record {record_id!r}"
    if value[0] != am.ObjType.Map:
        return [f"{where}: a record is a map"]
    problems: list[str] = []
    record = _plain(fork, value[1], where, problems)
    if problems:
        return problems
    assert isinstance(record, dict)
    if collection == "cashiers":
        if "pin" in record:
            return [f"{where}: a PIN is never stored; set it through the till's API"]
        before = master.fields(collection, record_id, ("pin_hash",)) or {}
        if record.get("pin_hash") != before.get("pin_hash"):
            return [f"{where}: pin_hash is set through the till's API only"]
    try:
        validate_record(collection, record, record_id)
    except SchemaViolation as exc:
        return [f"{exc.what}: " + "; ".join(f"{v.path}: {v.message}" for v in exc.violations)]
    return []


def _plain(doc: am.Document, obj: bytes, where: str, problems: list[str]) -> Any:
    """A map or list as plain Python values, Text read as its string; a value of any
    other kind than the master data's is a problem."""
    kind = doc.object_type(obj)
    if kind == am.ObjType.Text:
        return doc.text(obj)
    if kind == am.ObjType.Map:
        out: dict[str, Any] = {}
        for key in doc.keys(obj):
            got = doc.get(obj, key)
            if got is not None:
                out[key] = _value(doc, got, f"{where}.{key}", problems)
        return out
    return [_value(doc, got, f"{where}[{i}]", problems)
            for i, got in enumerate(doc.values(obj))]


def _value(doc: am.Document, got: tuple[Any, bytes], where: str, problems: list[str]) -> Any:
    value, obj = got
    if isinstance(value, am.ObjType):
        return _plain(doc, obj, where, problems)
    scalar, plain = value
    if scalar not in _PLAIN:
        name = str(scalar).rsplit(".", 1)[-1]
        problems.append(f"{where}: a {name} value; master data holds strings, integers "
                        "and booleans only")
    return plain
