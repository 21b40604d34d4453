"""The role rule on document sync messages (``peer.master.roles.forbidden_changes``),
sans I/O: who wrote each change is read from the message's bytes, and only a message
with a change by a device that may not manage is applied to a fork to see what it
changes.  The real-process tests are tests/relay/test_roles.py and tests/peer/test_lan.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import automerge.core as am
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillsync.peer.master import MasterData
from tillsync.peer.master.document import sync_message_authors
from tillsync.peer.master.roles import forbidden_changes

OFFICE, TILL, OTHER = (uuid.uuid4() for _ in range(3))
ROLES = {str(OFFICE): "backoffice", str(TILL): "till"}


def role_of(device: str) -> str | None:
    return ROLES.get(device)


def converged(*docs: MasterData) -> list[am.SyncState]:
    """Sync the first document with each other one; returns the first's states."""
    states = []
    for other in docs[1:]:
        mine, theirs = am.SyncState(), am.SyncState()
        for _ in range(20):
            a, b = docs[0].sync_message(mine), other.sync_message(theirs)
            if a is None and b is None:
                break
            if a is not None:
                other.receive_sync(theirs, a)
            if b is not None:
                docs[0].receive_sync(mine, b)
        states.append(mine)
    return states


def shop() -> tuple[MasterData, MasterData, am.SyncState]:
    """The relay's copy (here) and a device's, in step, with a product."""
    here = MasterData.new(uuid.uuid4().bytes)
    here.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
    device = MasterData.load(here.save(), TILL.bytes)
    [state] = converged(device, here)
    return here, device, state


def edit_by(author: uuid.UUID, *records: tuple[str, str, dict[str, Any]]) -> tuple[
        MasterData, bytes]:
    """The relay's copy, and the first sync message bringing ``author``'s edits."""
    here, device, _ = shop()
    device = MasterData.load(device.save(), author.bytes)
    for collection, record_id, body in records:
        device.put(collection, record_id, body)
    state = am.SyncState()
    for _ in range(10):  # the first message only says what it has
        message = device.sync_message(state)
        assert message is not None
        authors = sync_message_authors(message)
        if authors:
            return here, message
        reply = here.sync_message(am.SyncState())
        if reply is not None:
            device.receive_sync(state, reply)
    raise AssertionError("no message with changes")


def test_a_tills_price_change_is_refused_and_named() -> None:
    here, message = edit_by(TILL, ("products", "bread", {"price": 1}))
    assert sync_message_authors(message) == {TILL.bytes}
    [problem] = forbidden_changes(here, message, role_of)
    assert problem.startswith("the price of product 'bread' changed by device "
                              f"{TILL} (role till)")


def test_a_tills_name_change_passes_after_a_look_at_what_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    here, message = edit_by(TILL, ("products", "bread", {"name": "Bread, white"}),
                            ("customers", "c1", {"name": "Carla"}))
    looked = []
    original = MasterData.preview_sync
    monkeypatch.setattr(MasterData, "preview_sync",
                        lambda self, data: looked.append(1) or original(self, data))
    assert forbidden_changes(here, message, role_of) == []
    assert looked == [1]


@pytest.mark.parametrize("author", [OFFICE, OTHER], ids=["back office", "unknown on the LAN"])
def test_a_managing_devices_changes_pass_without_a_fork(
    monkeypatch: pytest.MonkeyPatch, author: uuid.UUID,
) -> None:
    """The common case: a back-office edit (or, on the LAN, one of a device the till
    holds no certificate of) is let through by its author alone, at any catalogue size."""
    here, message = edit_by(author, ("products", "bread", {"price": 340}),
                            ("settings", "store", {"store_name": "Shop"}))
    monkeypatch.setattr(MasterData, "preview_sync", pytest.fail)
    assert forbidden_changes(here, message, role_of,
                             unknown_allowed=author is OTHER) == []


def test_an_unknown_devices_price_change_is_refused_at_the_relay() -> None:
    here, message = edit_by(OTHER, ("products", "bread", {"price": 1}))
    [problem] = forbidden_changes(here, message, role_of)
    assert "(role unknown)" in problem


edits = st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.integers(0, 5),
                           st.integers(1, 10_000), st.integers(0, 3)),
                 min_size=1, max_size=12)


@given(edits)
def test_the_authors_read_from_a_message_are_those_of_the_changes_it_brings(
    steps: list[tuple[int, int, int, int]],
) -> None:
    """Against Automerge itself: for every message three devices exchange while they
    edit, the authors read from the bytes include the actor of every change that
    applying it to a fork brings (what the rule needs: no change passes unseen), and
    the message always parses so (or the fast path would never be taken)."""
    actors = [uuid.uuid4().bytes for _ in range(3)]
    base = MasterData.new(uuid.uuid4().bytes)
    docs = [MasterData.load(base.save(), actor) for actor in actors]
    states = {(i, j): am.SyncState() for i in range(3) for j in range(3) if i != j}
    for who, product, price, size in steps:
        # 1 to 200 characters (a name's bound): lengths of one and of two LEB128 bytes
        docs[who].put("products", f"p{product}", {"name": "x" * min(10 ** size, 200),
                                                  "sku": "S", "price": price})
        for (i, j), state in states.items():
            message = docs[i].sync_message(state)
            if message is None:
                continue
            authors = sync_message_authors(message)
            assert authors is not None
            brought = {actor for actor, _ in docs[j].preview_sync(message)}
            assert brought <= authors
            docs[j].receive_sync(states[(j, i)], message)


@given(st.binary(max_size=300))
def test_garbage_is_either_read_or_not_never_an_error(data: bytes) -> None:
    for blob in (data, b"\x42" + data, b"\x43" + data):
        authors = sync_message_authors(blob)
        assert authors is None or all(isinstance(a, bytes) and a for a in authors)
