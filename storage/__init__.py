"""Persistence: SQLAlchemy models and repository, the FAISS vector index, and their consistency.

Imports nothing else of ours. The embeddings table is the source of truth for vectors: the FAISS
index is a derived, rebuildable file.
"""
