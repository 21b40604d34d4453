"""The relay server: ingest, gapless invoice numbers, shift and held-sale mapping,
receipts, reporting.  Not built yet (see the relay issue); this package holds its place
in the fixed layout so imports and packaging are settled from the start."""
