"""`medsearch-index eval`: how well search, probes and relevance maps work on a site's labelled cases.

May import core, storage, indexer.errors, indexer.labels, indexer.metrics and indexer.probes; never indexer.cli
or search_api.
"""
