"""Which record each of this device's own recent document changes touched.

A delta read or a live ``master`` event needs the records changed between two sets of
heads.  Automerge answers that with a diff of the whole document (~80 ms at 20,000
products on a small machine), once per commit.  A change this device made itself with
``MasterData.put`` or ``delete`` touched exactly one record, known when it was made:
``Written`` keeps that, by change hash, for the last ``size`` such changes, so the
deltas of local edits need no diff.  A change not found here (from a LAN peer, the
relay, an automerge-repo client, or an older one) still goes through the diff.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class Written:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._by_hash: OrderedDict[bytes, tuple[str, str, bool]] = OrderedDict()

    def note(self, hashes: Iterable[bytes], collection: str, record_id: str,
             deleted: bool) -> None:
        """The changes ``hashes`` wrote (``deleted``: removed) one record."""
        for change in hashes:
            self._by_hash[bytes(change)] = (collection, record_id, deleted)
        while len(self._by_hash) > self.size:
            self._by_hash.popitem(last=False)

    def records(self, hashes: Iterable[bytes]) -> list[tuple[str, str, bool]] | None:
        """(collection, id, deleted) for each change, or None if any is not known here."""
        out = []
        for change in hashes:
            found = self._by_hash.get(bytes(change))
            if found is None:
                return None
            out.append(found)
        return out
