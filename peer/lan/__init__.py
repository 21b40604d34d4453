"""Till-to-till sync on the shop LAN, and the daemon (``peer run``) that runs it.

``session`` drives one authenticated link between two tills (``peer.sync.PeerLink``);
``discovery`` finds the store's other tills by mDNS; ``node`` is the daemon holding the
store: LAN listener and dialers, the relay loop, and the HTTP API (``peer.http``).
"""
