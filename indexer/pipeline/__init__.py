"""One indexing run as named stages: scan (1), load (2), encode (3), write (4), and the job and session
around them, with what a run reports (result.py). Any engine (indexer/engines) schedules these stages.

May import core, storage and indexer.errors; never indexer.engines, indexer.cli or search_api.
"""
