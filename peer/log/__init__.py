"""The append-only log: entries, their canonical bytes, hashes, signatures, chains."""

from tillsync.peer.log.chain import ChainBreak, verify_chain
from tillsync.peer.log.entry import (
    GENESIS_PREV,
    Entry,
    canonical_body,
    entry_bytes,
    seal,
    seal_bytes,
)

__all__ = [
    "GENESIS_PREV", "ChainBreak", "Entry", "canonical_body", "entry_bytes", "seal", "seal_bytes",
    "verify_chain",
]
