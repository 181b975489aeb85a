"""kafka-python checks and writes each record batch's CRC-32C with the crc32c package's C code: its
own pure-Python CRC cost ~170 µs for a 400-byte record here, on every record the checkout API,
the demo and the tools send or read (pyproject.toml)."""

from __future__ import annotations

import crc32c
from kafka.record import util


def test_kafka_python_computes_crc32c_in_c() -> None:
    assert util.calc_crc32c.__defaults__ == (crc32c.crc32c,), "kafka-python fell back to Python"


def test_the_c_crc_is_crc32c() -> None:
    # The check value of CRC-32C (Castagnoli) over "123456789".
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283
