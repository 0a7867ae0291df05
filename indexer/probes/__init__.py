"""Probes: few-shot classifiers trained per label on the stored embeddings (train.py) and their
mathematics on plain arrays (fit.py).

May import core, storage, indexer.errors, indexer.labels and indexer.metrics; never indexer.cli,
indexer.evaluation or search_api.
"""
