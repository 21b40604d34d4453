"""The till's HTTP API for front ends, served by ``peer run`` (``peer.lan.node``).

aiohttp in the daemon's own event loop: JSON in and out, an OpenAPI 3.1 document at
``/openapi.json``, bearer tokens (``auth``), one error body shape (``errors``), and live
events as Server-Sent Events (``events``).

``app``       the application and how the daemon starts and stops it
``auth``      owner and issued tokens
``routes_data``  master data (with delta reads, ``delta``), the log, derived views
``routes_sync``  sync status, manual controls (``controls``), tickets and invoices
``openapi``   the OpenAPI document, as data
"""
