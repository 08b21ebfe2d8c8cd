"""
Shared fixtures: service discovery (skip locally, fail in CI), a fresh RabbitMQ
vhost per test and a fresh PostgreSQL schema per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest

from reliable.management import ManagementClient
from reliable.schema import SchemaManager
from tests import services


def pytest_configure(config: pytest.Config) -> None:
    # Tests must not inherit a developer's RELIABLE_* settings (fixtures pass URLs explicitly).
    for key in list(os.environ):
        if key.startswith("RELIABLE_") and not key.startswith("RELIABLE_TEST_"):
            del os.environ[key]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "e2e" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


def _unavailable(what: str) -> NoReturn:
    if services.services_required():
        pytest.fail(f"{what}; services are required because CI is set", pytrace=False)
    pytest.skip(what)


@pytest.fixture(name="endpoints", scope="session")
def _endpoints() -> Iterator[services.Endpoints]:
    with services.resolve() as found:
        yield found


@pytest.fixture(name="amqp_url", scope="session")
def _amqp_url(endpoints: services.Endpoints) -> str:
    if endpoints.amqp_url is None:
        _unavailable("; ".join(endpoints.problems))
    return endpoints.amqp_url


@pytest.fixture(name="management_url", scope="session")
def _management_url(endpoints: services.Endpoints) -> str:
    if endpoints.management_url is None:
        _unavailable("; ".join(endpoints.problems))
    return endpoints.management_url


@pytest.fixture(name="database_url", scope="session")
def _database_url(endpoints: services.Endpoints) -> str:
    if endpoints.database_url is None:
        _unavailable("; ".join(endpoints.problems))
    return endpoints.database_url


@dataclass(frozen=True)
class Broker:
    """A vhost of its own for one test, with URLs pointing into it."""

    vhost: str
    amqp_url: str
    management_url: str
    management: ManagementClient


def vhost_url(amqp_url: str, vhost: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit(
        (parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, "")
    )


@pytest.fixture(name="broker")
def _broker(amqp_url: str, management_url: str) -> Iterator[Broker]:
    """A fresh vhost (deleted afterwards), so tests never see each other's objects."""
    vhost = f"reliable-test-{uuid.uuid4().hex[:10]}"
    user = urlsplit(amqp_url).username or "guest"
    # Vhost create/delete can stall for tens of seconds on a busy shared broker.
    client = ManagementClient(management_url, timeout_seconds=90)
    client.create_vhost(vhost)
    client.grant_all(vhost, user)
    try:
        yield Broker(vhost, vhost_url(amqp_url, vhost), management_url, client)
    finally:
        client.delete_vhost(vhost)
        client.close()


@dataclass(frozen=True)
class Database:
    """A fresh, migrated schema for one test."""

    url: str
    schema: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, **kwargs)


@pytest.fixture(name="database")
def _database(database_url: str) -> Iterator[Database]:
    """A migrated schema of its own (dropped afterwards)."""
    schema = f"reliable_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url) as conn:
        SchemaManager(conn, schema=schema).migrate()
        conn.commit()
    try:
        yield Database(database_url, schema)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(schema)
                )
            )
