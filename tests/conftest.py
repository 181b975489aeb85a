"""Test session set-up: the seed of this run, and the real stack for the integration tests."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

# One seed per run, printed in the header, so that any randomised test can be replayed with
# LEDGER_TEST_SEED=<seed>. Hypothesis prints its own reproduction blob on failure.
SEED = int(os.environ.get("LEDGER_TEST_SEED") or random.SystemRandom().randrange(2**32))


def pytest_report_header() -> str:
    return f"ledger test seed: {SEED} (replay with LEDGER_TEST_SEED={SEED})"


@pytest.fixture(scope="session")
def seed() -> int:
    return SEED


@pytest.fixture(scope="session")
def stack() -> Iterator[object]:
    """The real local stack, brought up by the test session (reused when it already runs)."""
    from ledger.settings import load_settings
    from ledger.stack import manager

    settings = load_settings()
    report = manager.up(settings)
    yield report.state
