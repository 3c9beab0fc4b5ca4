"""Stand-in for Ascend's ais_bench front end (see tests/fakes/README.md)."""
