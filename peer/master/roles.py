"""Who may change what in the master document.

A device's role is in its certificate (from its enrollment code).  A ``till`` records
what happens at the counter and may edit customers, suppliers and cashiers; only a
``backoffice`` or ``admin`` device may change prices (``products.<id>.price``, or remove
a product) and settings (anything under ``settings``).

An Automerge change is attributed to its actor: every device edits with its device id
(a UUID) as actor id.  Changes are not signed, so an enrolled device could author a
change under another device's actor id: the rule keeps honest tills and mistakes out,
not a rogue enrolled device (see schemas/protocol/README.md, "Roles").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping

from tillsync.peer.master.document import MasterData, sync_message_authors

MANAGING_ROLES = frozenset({"backoffice", "admin"})

# Automerge's patches are opaque to Python; their repr (Rust's Debug format) names the
# path to the changed object and the action.  A string literal is read whole, so text
# inside a record id cannot pass for structure.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|action: (\w+)')


def _read_patch(patch: object) -> tuple[list[str], str, str]:
    """(path of map keys from the root, action, key) of one patch."""
    text = repr(patch)
    path: list[str] = []
    action = key = ""
    for found in _TOKEN.finditer(text):
        if found.group(1) is not None:
            action = found.group(1)
            continue
        literal = found.group(0)[1:-1]
        before = text[max(0, found.start() - 8):found.start()]
        if not action and before.endswith("Map("):
            path.append(literal)
        elif action and before.endswith("key: ") and not key:
            key = literal
    return path, action, key


def guarded(patch: object) -> str | None:
    """What a patch changes that only a managing role may change, or None."""
    path, action, key = _read_patch(patch)
    if path[:1] == ["settings"] or (not path and key == "settings"):
        return "the store settings"
    if path[:1] == ["products"]:
        if len(path) == 1 and action == "DeleteMap":
            return f"product {key!r} (removed)"
        if len(path) >= 2 and key == "price":
            return f"the price of product {path[1]!r}"
    return None


def guarded_edit(collection: str, record_id: str, existing: Mapping[str, object] | None,
                 patch: Mapping[str, object]) -> str | None:
    """What a ``put`` of ``patch`` would change that only a managing role may change,
    read from the edit before it is made (the rule of ``guarded``, at the origin)."""
    if collection == "settings":
        return "the store settings"
    if collection == "products" and "price" in patch and (
            existing is None or existing.get("price") != patch["price"]):
        return f"the price of product {record_id!r}"
    return None


def device_of_actor(actor: bytes) -> str | None:
    """The device id behind an actor id (devices edit with their UUID's 16 bytes)."""
    return str(uuid.UUID(bytes=actor)) if len(actor) == 16 else None


def forbidden_changes(master: MasterData, message: bytes,
                      role_of: Callable[[str], str | None], *,
                      unknown_allowed: bool = False) -> list[str]:
    """Why a peer's sync message must be refused (empty: it may be applied).  A change
    touching prices or settings must come from a device whose role (``role_of(device
    id)``, None if unknown) allows it.  ``unknown_allowed``: a device whose role is
    unknown passes (a till on the LAN: a change reaches it first from its author, whose
    certificate the link's handshake brought and whose change is checked there, or from
    the relay, which checked it; a change it cannot place was checked by whoever
    forwarded it).  Only a message with a change by a device that may not manage is
    applied to a fork to see what it changes; the authors are read from the message's
    bytes.  Raises ``InvalidInput`` for a message that does not decode, where it is
    decoded (otherwise receiving it does)."""
    problems: list[str] = []
    authors = sync_message_authors(message)
    if authors is not None and all(_may_manage(actor, role_of, unknown_allowed)
                                   for actor in authors):
        # Every change comes from a device that may change anything: no need to see
        # what they change (applying to a fork costs ~3 ms per 1,000 products).
        return problems
    for actor, patches in master.preview_sync(message):
        if _may_manage(actor, role_of, unknown_allowed):
            continue
        device = device_of_actor(actor)
        role = role_of(device) if device is not None else None
        for what in dict.fromkeys(g for g in map(guarded, patches) if g is not None):
            problems.append(f"{what} changed by device {device or actor.hex()} "
                            f"(role {role or 'unknown'}): only a back-office or admin device "
                            "may change prices and settings")
    return problems


def _may_manage(actor: bytes, role_of: Callable[[str], str | None],
                unknown_allowed: bool) -> bool:
    device = device_of_actor(actor)
    role = role_of(device) if device is not None else None
    return role in MANAGING_ROLES or (role is None and unknown_allowed)


def refusal(problems: list[str]) -> str:
    """The message of the ``forbidden`` error answering ``forbidden_changes``."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"document changes refused: {problems[0]}{more}"
