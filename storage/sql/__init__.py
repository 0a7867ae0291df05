"""The relational store through SQLAlchemy 2: ORM models, engines, and the repository (all SQL of the index
database, one transaction per public method, typed records in and out: storage/records.py).

Inside storage: may import storage.errors, storage.records, storage.migrate and storage.reports; never
storage.vectors, storage.store or any other package of ours.
"""
