"""The outbox through SQLAlchemy and Django, against the real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from reliable import Reliable
from tests.conftest import Database


def _message_ids(database: Database) -> list[str]:
    with database.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT message_id FROM {}.reliable_outbox ORDER BY id").format(
                sql.Identifier(database.schema)
            )
        ).fetchall()
    return [r[0] for r in rows]


def _sqlalchemy_url(database: Database) -> str:
    return database.url.replace("postgresql://", "postgresql+psycopg://", 1)


def test_sqlalchemy_session_commits_and_rolls_back_with_the_message(
    database: Database,
) -> None:
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    engine = create_engine(_sqlalchemy_url(database))
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("SELECT 1"))
            kept = rel.outbox.publish(
                session, exchange="shop", routing_key="order.created", body={"id": 1}
            )
        with Session(engine) as session:
            rel.outbox.publish(
                session, exchange="shop", routing_key="x", body={"id": 2}
            )
            session.rollback()
    finally:
        engine.dispose()

    assert _message_ids(database) == [kept]


def test_sqlalchemy_connection_joins_its_transaction(database: Database) -> None:
    rel = Reliable(database_url=database.url, db_schema=database.schema)
    engine = create_engine(_sqlalchemy_url(database))
    try:
        with engine.begin() as conn:
            kept = rel.outbox.publish(conn, exchange="shop", routing_key="k", body=[1])
        try:
            with engine.begin() as conn:
                rel.outbox.publish(conn, exchange="shop", routing_key="k", body=[2])
                raise RuntimeError("business logic failed")
        except RuntimeError:
            pass
    finally:
        engine.dispose()

    assert _message_ids(database) == [kept]


def test_an_unknown_connection_type_is_refused() -> None:
    rel = Reliable()

    with pytest.raises(TypeError):
        rel.outbox.publish(object(), exchange="e", routing_key="k", body={})  # type: ignore[arg-type]


_DJANGO_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from urllib.parse import urlsplit

    import django
    from django.conf import settings

    url, schema = sys.argv[1], sys.argv[2]
    parts = urlsplit(url)
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"), "USER": parts.username or "",
            "PASSWORD": parts.password or "", "HOST": parts.hostname or "",
            "PORT": str(parts.port or 5432),
        }},
        INSTALLED_APPS=[], USE_TZ=True,
    )
    django.setup()
    from django.db import connection, transaction

    from reliable import Reliable

    rel = Reliable(database_url=url, db_schema=schema)
    out = {}
    with transaction.atomic():
        out["kept"] = rel.outbox.publish(connection, exchange="shop", routing_key="k", body={"id": 1})
    try:
        with transaction.atomic():
            rel.outbox.publish(connection, exchange="shop", routing_key="k", body={"id": 2})
            raise RuntimeError("business logic failed")
    except RuntimeError:
        pass
    try:
        rel.outbox.publish(connection, exchange="shop", routing_key="k", body={"id": 3})
    except ValueError as exc:
        out["outside_atomic"] = type(exc).__name__
    print(json.dumps(out))
    """
)


def test_django_connection_inside_atomic_commits_and_rolls_back_with_the_message(
    database: Database,
) -> None:
    import json

    result = subprocess.run(
        [sys.executable, "-c", _DJANGO_SCRIPT, database.url, database.schema],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["outside_atomic"] == "ValueError"
    assert _message_ids(database) == [out["kept"]]
