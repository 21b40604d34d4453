"""Master data: one Automerge document per store (products, customers, suppliers,
cashiers, settings), edited offline on any device and merged by Automerge."""

from tillsync.peer.master.document import COLLECTIONS, MasterData
from tillsync.peer.master.pins import check_pin, hash_pin

__all__ = ["COLLECTIONS", "MasterData", "check_pin", "hash_pin"]
