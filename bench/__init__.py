"""`make bench`: the collector next to the physical limit (see bench/run.py and docs/performance.md)."""
