"""The report index inside the relational store: documents in the database's own full-text engine (SQLite
FTS5 or PostgreSQL tsvector), concept postings, one BM25 for both engines, and their typed records.

Inside storage: records.py imports nothing; the rest may import storage.errors and storage.sql (models, db);
never storage.vectors, storage.store or any other package of ours.
"""
