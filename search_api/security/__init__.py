"""Who may call and what they see: API keys and roles with the audit record (auth.py), the ASGI gate and
headers in front of every route, and the per-role redaction of image metadata (redact.py).

May import core, storage and search_api.errors; never search_api.routes or search_api.services.
"""
