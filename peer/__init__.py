"""The device side of tillsync: the till's own store.

A till keeps two things on its disk (see docs in ../README.md):

* the store's master data, one Automerge document (``peer.master``), and
* its append-only, hash-chained, signed log of what happened at the counter
  (``peer.log``),

plus views derived from the log (``peer.views``).  ``peer.store.Till`` is the Python API
over all of it; ``tools.cli`` is the command line.
"""

from tillsync.peer.errors import TillsyncError
from tillsync.peer.store import Till

__all__ = ["Till", "TillsyncError"]
