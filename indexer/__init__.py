"""Batch indexing: scan an archive, load and render each image, encode in batches, write to the store."""
