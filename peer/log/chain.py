"""Checking a device's hash chain: contiguous seq, each prev the hash before it, signatures."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tillsync.peer.log.entry import GENESIS_PREV, Entry


@dataclass(frozen=True)
class ChainBreak:
    """The first place a chain does not hold."""

    device_id: str
    seq: int
    client_id: str
    reason: str

    def __str__(self) -> str:
        return f"device {self.device_id} seq {self.seq} ({self.client_id}): {self.reason}"


def verify_chain(
    entries: Iterable[Entry],
    public_key: bytes,
    *,
    after_seq: int = 0,
    after_hash: bytes = GENESIS_PREV,
    every_signature: bool = True,
) -> ChainBreak | None:
    """Check entries of one device, in seq order, continuing a chain at ``after_seq``.

    With ``every_signature=False`` only the last entry's signature is checked: since each
    entry commits to the hash of the one before, a valid signature over the head vouches
    for the whole batch (one verification per batch instead of one per entry).
    Returns the first break, or None if the chain holds.
    """
    expected_seq, expected_prev = after_seq + 1, after_hash
    last: Entry | None = None
    for entry in entries:
        if entry.seq != expected_seq:
            return ChainBreak(
                entry.device_id, entry.seq, entry.client_id,
                f"expected seq {expected_seq}: the log has a gap or a repeat",
            )
        if entry.prev != expected_prev:
            return ChainBreak(
                entry.device_id, entry.seq, entry.client_id,
                "prev does not match the hash of the entry before it "
                "(this entry or the one before was altered)",
            )
        if every_signature and not entry.signature_valid(public_key):
            return ChainBreak(
                entry.device_id, entry.seq, entry.client_id,
                "signature does not match the entry's content",
            )
        expected_seq, expected_prev, last = entry.seq + 1, entry.hash, entry
    if last is not None and not every_signature and not last.signature_valid(public_key):
        return ChainBreak(
            last.device_id, last.seq, last.client_id,
            "signature of the batch head does not match its content",
        )
    return None
