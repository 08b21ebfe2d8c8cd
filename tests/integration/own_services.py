"""
Throwaway RabbitMQ and PostgreSQL servers that a test may crash and restart.

The shared services must never be restarted (other tests use them), so fault
tests start their own: a RabbitMQ node with its own node name, ports and
data directory, and a PostgreSQL cluster made by initdb in a temporary
directory. Both run as their service users when the tests run as root.
Binaries come from ``RELIABLE_TEST_PG_BINDIR`` / ``RELIABLE_TEST_RABBITMQ_BINDIR``
or the Debian package locations; the tests skip when none is found.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import psycopg
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user(user: str) -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(user)
    except KeyError:
        pytest.skip(f"running as root but there is no {user!r} user")
    return ["runuser", "-u", user, "--"]


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        info = pwd.getpwnam(user)
        for p in [path, *path.rglob("*")]:
            os.chown(p, info.pw_uid, info.pw_gid)


def _wait(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} did not start within {timeout:g}s")


class OwnPostgres:
    def __init__(self, bindir: str, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.prefix = _as_user("postgres")

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, f"{self.bindir}/pg_ctl", "-D", str(self.data), *args],
            check=True,
            # The postmaster inherits these: never a pipe that would stay open.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def init(self) -> None:
        subprocess.run(
            [
                *self.prefix,
                f"{self.bindir}/initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._ctl("-o", opts, "-l", str(self.root / "log"), "-w", "start")
        _wait(
            lambda: psycopg.connect(self.url, connect_timeout=2).close() is None,
            "own PostgreSQL",
        )

    def restart(self) -> None:
        # -m fast: open connections are cut, as in a failover or an OOM restart.
        self._ctl("-m", "fast", "-l", str(self.root / "log"), "-w", "restart")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")


def _pg_bindir() -> str | None:
    configured = os.environ.get("RELIABLE_TEST_PG_BINDIR")
    if configured:
        return configured
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (set RELIABLE_TEST_PG_BINDIR)")
    root = Path(tempfile.mkdtemp(prefix="reliable-pg-"))
    root.chmod(0o755)
    _chown(root, "postgres")
    server = OwnPostgres(bindir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


class OwnRabbit:
    """A single RabbitMQ node of our own; `crash()` SIGKILLs it, `start()` brings it back."""

    def __init__(self, bindir: str, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"reliable-relay-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.proc: subprocess.Popen[bytes] | None = None
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(Path(pwd.getpwnam("rabbitmq").pw_dir))
            if os.geteuid() == 0
            else os.environ.get("HOME", ""),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        _chown(root, "rabbitmq")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*_as_user("rabbitmq"), f"{self.bindir}/rabbitmq-server"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def connects() -> bool:
            pika.BlockingConnection(pika.URLParameters(self.amqp_url)).close()
            return True

        _wait(connects, "own RabbitMQ node", timeout=90)

    def crash(self) -> None:
        """SIGKILL the whole node (its own process group), like a host crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


def _rabbit_bindir() -> str | None:
    configured = os.environ.get("RELIABLE_TEST_RABBITMQ_BINDIR")
    if configured:
        return configured
    candidate = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(candidate.parent) if candidate.exists() else None


@pytest.fixture
def own_rabbit() -> Iterator[OwnRabbit]:
    bindir = _rabbit_bindir()
    if bindir is None:
        pytest.skip("no RabbitMQ server scripts (set RELIABLE_TEST_RABBITMQ_BINDIR)")
    root = Path(tempfile.mkdtemp(prefix="reliable-rmq-"))
    root.chmod(0o755)
    node = OwnRabbit(bindir, root)
    try:
        node.start()
        yield node
    finally:
        node.crash()
        shutil.rmtree(root, ignore_errors=True)
