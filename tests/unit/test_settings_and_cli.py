"""Bad settings and bad command lines get a message that says what to fix."""

from __future__ import annotations

import pytest

from ledger.cli import main
from ledger.errors import ConfigError
from ledger.settings import load_settings


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LEDGER_KAFKA_PORT": "abc"}, "LEDGER_KAFKA_PORT must be a whole number"),
        ({"LEDGER_POSTGRES_PORT": "80"}, "LEDGER_POSTGRES_PORT must be from 1024 to 65535"),
        ({"LEDGER_TOPIC_PARTITIONS": "0"}, "LEDGER_TOPIC_PARTITIONS must be from 1"),
        ({"LEDGER_KAFKA_PORT": "15432"}, "ports must differ"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(env)


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.kafka_port == 19092
    assert settings.postgres_port == 15432
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert (settings.project_root / "deploy" / "kafka" / "pom.xml").is_file()


def test_bad_flag_value_says_what_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "up", "--kafka-port", "80"]) == 1
    assert "the Kafka port must be from 1024 to 65535, got 80" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stak", "up"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'stak'" in capsys.readouterr().err


def test_non_numeric_port_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["stack", "up", "--postgres-port", "five"])
    assert "invalid int value: 'five'" in capsys.readouterr().err
