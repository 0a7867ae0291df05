"""The search API: FastAPI app, routes, schemas and the `medsearch-api` command."""
