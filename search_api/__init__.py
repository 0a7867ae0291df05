"""The search API: FastAPI app, routes, schemas and the `medsearch-api` command.

torch and FAISS each bring an OpenMP runtime whose idle threads spin by default; after a forward
pass a FAISS search then waits for cores the other runtime's threads hold (~3 ms a query, measured by
bench/api_bench.py). Passive waiting costs nothing here, so a server sets it before either loads
(an explicit OMP_WAIT_POLICY in the environment wins).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
