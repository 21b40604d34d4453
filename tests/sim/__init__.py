"""A deterministic simulation of tills and a relay (see ``tests/sim/README.md``)."""
