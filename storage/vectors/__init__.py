"""The FAISS vector index and its builds: index kinds, tuning, the on-disk IVF, the id journal and change log.

Inside storage: may import storage.errors, storage.layout and the repository (builds read stored embeddings);
never storage.store, storage.opening or any other package of ours.
"""
