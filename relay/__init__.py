"""The relay server: ingest (``ingest``), gapless invoice numbers, shift and held-sale
mapping, signed receipts, document sync (``server``, ``documents``), storage on SQLite or
PostgreSQL (``storage``), several processes on one port (``workers``), and central
reporting (``reports``, ``tallies``, ``http``, ``dashboard``)."""
