"""Shared building blocks of medsearch: settings, image loading, preprocessing and the encoder.

Imports nothing else of ours; every other package may import it.
"""
