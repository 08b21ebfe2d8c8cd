from __future__ import annotations

import pytest

from reliable import errors, sql
from reliable.cli import exit_code_for, exit_codes
from reliable.config import Settings
from reliable.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:secret@host:5672/%2F", "amqp://guest:***@host:5672/%2F"),
        ("postgresql://app:p%40ss@db/shop", "postgresql://app:***@db/shop"),
        ("http://host:15672", "http://host:15672"),
    ],
    ids=["amqp", "postgres-encoded", "no-password"],
)
def test_redact_url_hides_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_hides_passwords_inside_messages() -> None:
    text = "cannot reach amqp://u:hunter2@h/ and password=hunter2 failed"

    assert "hunter2" not in redact_text(text)


def test_settings_repr_redacts_every_url() -> None:
    settings = Settings(
        amqp_url="amqp://u:s3cret@h/%2F",
        management_url="http://u:s3cret@h:15672",
        database_url="postgresql://u:s3cret@h/db",
    )

    assert "s3cret" not in repr(settings)


def test_settings_from_env_reads_prefixed_variables() -> None:
    settings = Settings.from_env(
        {"RELIABLE_AMQP_URL": "amqp://x/%2F", "RELIABLE_OUTBOX_BATCH_SIZE": "50"}
    )

    assert (settings.amqp_url, settings.outbox_batch_size) == ("amqp://x/%2F", 50)


def test_settings_from_env_names_the_bad_variable() -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.from_env({"RELIABLE_CONFIRM_TIMEOUT": "soon"})

    assert info.value.key == "RELIABLE_CONFIRM_TIMEOUT"


def test_settings_refuse_an_unsafe_schema_name() -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings(db_schema="x; drop table y")

    assert info.value.key == "db_schema"


def test_error_docstring_is_the_default_message() -> None:
    assert str(errors.BrokerConnectionError()) == (
        "cannot connect to RabbitMQ, or the connection was lost"
    )


def test_topology_conflict_lists_each_differing_argument() -> None:
    exc = errors.TopologyConflict(
        entity="queue 'orders'",
        expected={"x-queue-type": "quorum"},
        actual={"x-queue-type": "classic"},
    )

    assert "x-queue-type: 'classic' -> 'quorum'" in str(exc)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.TopologyFileError(problems=[("a", "b")]), exit_codes.EXIT_INVALID),
        (errors.BrokerConnectionError(), exit_codes.EXIT_BROKER),
        (errors.ManagementAPIError(), exit_codes.EXIT_BROKER),
        (errors.SchemaNotInstalled(found=None, required=1), exit_codes.EXIT_DATABASE),
        (errors.ConfigError(key="k"), exit_codes.EXIT_CONFIG),
        (errors.ReplayError(), exit_codes.EXIT_FAILURE),
    ],
    ids=["file", "broker", "management", "schema", "config", "other"],
)
def test_each_error_family_has_its_exit_code(
    exc: errors.ReliableError, code: int
) -> None:
    assert exit_code_for(exc) == code


def test_migrations_are_numbered_without_gaps_or_duplicates() -> None:
    versions = [v for v, _, _ in sql.migrations()]

    assert versions == sorted(set(versions))
    assert versions[0] == 0


def test_every_named_query_mentions_tables_through_the_schema_placeholder() -> None:
    for name, text in sql.all_queries().items():
        assert "reliable_" not in text.replace("{schema}.reliable_", ""), name
