"""`db.ProcessLocalConnection`, the connection task bodies run in, across a fork."""

from __future__ import annotations

import contextlib
import os

from reliable import db
from tests.conftest import Database


def test_forked_child_opens_its_own_connection_and_leaves_the_parents_intact(
    database: Database,
) -> None:
    connections = db.ProcessLocalConnection(database.url)
    parent = connections.get()
    parent_backend = parent.info.backend_pid
    parent.rollback()
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:  # the child: what a prefork pool process does
        try:
            child = connections.get()
            os.write(write_end, str(child.info.backend_pid).encode())
            child.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    child_backend = int(os.read(read_end, 64))

    assert child_backend != parent_backend
    assert connections.get() is parent
    assert parent.execute("SELECT 1").fetchone() == (1,)
    connections.discard()


def test_broken_connection_is_replaced(database: Database) -> None:
    connections = db.ProcessLocalConnection(database.url)
    first = connections.get()
    with database.connect(autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first.info.backend_pid,))
    with contextlib.suppress(Exception):
        first.execute("SELECT 1")

    second = connections.get()

    assert second is not first
    assert second.execute("SELECT 1").fetchone() == (1,)
    connections.discard()
