"""Relevance maps: where on an image a score is sensitive, where the map lies on the image, how faithful it is.

Inside core: may import core.errors and core.model; never another package of ours.
"""
