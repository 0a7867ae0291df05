"""The engines that schedule the pipeline's stages: local worker processes (local_engine.py, runner.py)
or a Ray cluster (ray_engine.py, units.py, and ray_build.py for large IVF builds).

May import indexer.pipeline, core and storage; never indexer.cli or search_api.
"""
