"""automerge-repo (JavaScript) clients holding the store's master document: the
protocol (``protocol``), what their changes may do (``checks``), and the till's endpoint
(``till``); the relay's is ``relay.amrepo``.  See docs/automerge-repo.md."""
