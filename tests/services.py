"""
Find the RabbitMQ and PostgreSQL the integration tests run against.

``RELIABLE_TEST_SERVICES=docker|env|auto`` (default ``auto``): with a Docker
engine that answers, testcontainers starts both once per run; otherwise the
``RELIABLE_TEST_*_URL`` variables (defaulting to local services) are probed.
Unreachable services skip the tests locally and fail them when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBITMQ_IMAGE = os.environ.get(
    "RELIABLE_TEST_RABBITMQ_IMAGE", "rabbitmq:4.1-management"
)
POSTGRES_IMAGE = os.environ.get("RELIABLE_TEST_POSTGRES_IMAGE", "postgres:16")


@dataclass(frozen=True)
class Endpoints:
    amqp_url: str | None
    management_url: str | None
    database_url: str | None
    problems: tuple[str, ...]


def services_required() -> bool:
    return bool(os.environ.get("CI")) or bool(
        os.environ.get("RELIABLE_TEST_REQUIRE_SERVICES")
    )


def docker_engine_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:
        return False
    return True


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        with socket.create_connection((host, parts.port or default_port), timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def resolve() -> Iterator[Endpoints]:
    mode = os.environ.get("RELIABLE_TEST_SERVICES", "auto")
    if mode == "docker" or (mode == "auto" and docker_engine_answers()):
        with _containers() as endpoints:
            yield endpoints
        return
    amqp = os.environ.get("RELIABLE_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    mgmt = os.environ.get("RELIABLE_TEST_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL)
    database = os.environ.get("RELIABLE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    problems = []
    if not _reachable(amqp, 5672):
        problems.append("RabbitMQ unreachable; set RELIABLE_TEST_AMQP_URL")
        amqp = None  # type: ignore[assignment]
    if not _reachable(mgmt, 15672):
        problems.append(
            "RabbitMQ management API unreachable; enable rabbitmq_management "
            "or set RELIABLE_TEST_MANAGEMENT_URL"
        )
        mgmt = None  # type: ignore[assignment]
    if not _reachable(database, 5432):
        problems.append("PostgreSQL unreachable; set RELIABLE_TEST_DATABASE_URL")
        database = None  # type: ignore[assignment]
    yield Endpoints(amqp, mgmt, database, tuple(problems))


@contextlib.contextmanager
def _containers() -> Iterator[Endpoints]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    rabbit = DockerContainer(RABBITMQ_IMAGE).with_exposed_ports(5672, 15672)
    postgres = PostgresContainer(POSTGRES_IMAGE, driver=None)
    with rabbit, postgres:
        wait_for_logs(rabbit, "Server startup complete", timeout=120)
        host = rabbit.get_container_host_ip()
        amqp = f"amqp://guest:guest@{host}:{rabbit.get_exposed_port(5672)}/%2F"
        mgmt = f"http://guest:guest@{host}:{rabbit.get_exposed_port(15672)}"
        yield Endpoints(amqp, mgmt, postgres.get_connection_url(), ())
