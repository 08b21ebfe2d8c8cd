from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import Database


def _reliable(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliable", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_busy_metrics_port_is_a_one_line_configuration_error(
    database: Database,
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _reliable(
            "--database-url",
            database.url,
            "--db-schema",
            database.schema,
            "outbox",
            "relay",
            "--once",
            "--metrics-port",
            str(port),
            env={},
        )

    assert result.returncode == 7
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot serve metrics on 0.0.0.0:{port} (Address already in use); "
        "choose a free port with --metrics-port or RELIABLE_METRICS_PORT"
    ]


def test_unreachable_database_names_the_url_without_its_password() -> None:
    result = _reliable(
        "--database-url",
        "postgresql://app:hunter2@127.0.0.1:1/shop",
        "outbox",
        "status",
        env={},
    )

    assert result.returncode == 4
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
