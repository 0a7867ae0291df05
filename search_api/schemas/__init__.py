"""Pydantic request and response models of the API, one module per route group (ORM models live in
storage/sql/models.py, never here).

Imports nothing of search_api but its own modules; never services or routes.
"""
