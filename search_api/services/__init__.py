"""The work behind the routes: the search service (search.py) that builds a query vector, searches within
filters and counts; report and hybrid ranking; probes; classification; relevance maps; reading images back.

May import core, storage, search_api.errors and each other; never search_api.routes, schemas or security.
"""
