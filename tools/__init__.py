"""Command line, benchmarks and data generators for tillsync."""
