"""Peer comparison harness: a lean batch sink, per-client adapters, the shared workload and measurements.

Everything here imports only the standard library (plus, lazily, the client under test), because the
driver runs inside each peer's own virtualenv, where neither ciotrack nor orjson may be installed.
"""
