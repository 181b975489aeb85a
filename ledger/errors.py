"""Errors that reach an operator: one line that says what went wrong and what to do."""


class LedgerError(Exception):
    """An expected failure with a message fit for the command line (no traceback)."""


class StackError(LedgerError):
    """The local stack (Kafka broker, PostgreSQL) could not be set up, started or stopped."""


class ConfigError(LedgerError):
    """A setting (environment variable or command-line flag) has an invalid value."""
