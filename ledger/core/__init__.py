"""The pure ledger core: money, VAT, postings, decisions and billing periods.

Nothing here imports a broker, stream or database library (checked by the import-linter contract
in pyproject.toml): the stream processors and the projection writer only move data in and out.
"""
