"""genq's shared core: what the API and the worker both import.

Contract (task, queues, payloads, error types), settings, Redis keys and connections,
the error tree, logging, job records and circuit control. Nothing here imports the
worker runtime (``worker``) or the API (``api``); an import-linter contract checks it.
"""
