"""The Internet Plus ledger: purchases on Kafka, fraud limits, balances, invoices and statements."""

__version__ = "0.1.0"
