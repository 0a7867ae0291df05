"""`medsearch-index`, one module per command group (main.py holds the group and the run/build commands).

A command only parses, builds (indexer/build.py), prints and maps errors to exit codes. May import everything
in indexer, core and storage; nothing in indexer imports it; never search_api.
"""
