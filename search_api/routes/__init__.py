"""FastAPI route handlers, thin: parse a request, call a service, turn its answer into a response model
for the caller's role (views.py, modes.py, snippets.py). Their request/response models: search_api/schemas.

May import search_api.services, search_api.schemas, search_api.security, core and storage; never search_api.app
or search_api.cli (they compose the routes).
"""
