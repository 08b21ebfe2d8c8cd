"""
Use the outbox from SQLAlchemy or Django: find the psycopg 3 connection
underneath their objects, so the outbox row joins *their* transaction.

SQLAlchemy and Django are imported only here, and only when such an object is
passed in; `resolve_connection` is what `reliable.Outbox` calls on whatever
connection-like object it receives.

::

    with Session(engine) as session, session.begin():  # postgresql+psycopg://
        session.add(Order(id=42))
        rel.outbox.publish(
            session,
            exchange="shop.events",
            routing_key="order.created",
            body={"id": 42},
        )

    with transaction.atomic():  # Django, psycopg 3 backend
        Order.objects.create(id=42)
        rel.outbox.publish(
            connection,
            exchange="shop.events",
            routing_key="order.created",
            body={"id": 42},
        )

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Any

from reliable import db


def resolve_connection(conn: Any) -> db.Connection:
    """
    Return the psycopg connection behind *conn*.

    Accepts a psycopg 3 connection (returned as is), a SQLAlchemy ``Session``
    or ``Connection`` on the ``postgresql+psycopg`` dialect, or a Django
    database connection (``django.db.connection`` or ``connections[alias]``)
    on the psycopg 3 backend, inside ``transaction.atomic()``.

    Raises:
        TypeError: *conn* is none of these, or runs on another driver.
        ValueError: A Django connection outside ``transaction.atomic()``: the
            row would commit on its own, without the caller's data.
    """
    if db.is_connection(conn):
        return conn
    module = type(conn).__module__
    if module.startswith("sqlalchemy."):
        return _from_sqlalchemy(conn)
    if module.startswith("django."):
        return _from_django(conn)
    msg = (
        f"cannot write to the outbox through a {type(conn).__module__}.{type(conn).__qualname__}; "
        "pass a psycopg 3 connection, a SQLAlchemy Session or Connection, or a Django connection"
    )
    raise TypeError(msg)


def _from_sqlalchemy(obj: Any) -> db.Connection:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(obj, Session):
        # Begins the session's transaction if none is active yet, so the row
        # commits or rolls back with the session.
        obj = obj.connection()
    if not isinstance(obj, Connection):
        msg = (
            f"expected a SQLAlchemy Session or Connection, got {type(obj).__qualname__}"
        )
        raise TypeError(msg)
    raw = obj.connection.driver_connection
    if not db.is_connection(raw):
        msg = (
            f"this SQLAlchemy engine uses the {obj.dialect.driver!r} driver; the outbox needs "
            "psycopg 3: create the engine with a postgresql+psycopg:// URL"
        )
        raise TypeError(msg)
    return raw


def _from_django(wrapper: Any) -> db.Connection:
    from django.db import connections

    if not hasattr(wrapper, "ensure_connection"):
        wrapper = connections[getattr(wrapper, "alias", "default")]
    if not wrapper.in_atomic_block:
        msg = (
            "call the outbox inside transaction.atomic(): in Django's autocommit mode the "
            "message would be stored even if the rest of your work failed"
        )
        raise ValueError(msg)
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not db.is_connection(raw):
        msg = (
            f"this Django database uses {type(raw).__module__}; the outbox needs the psycopg 3 "
            "backend (install psycopg, Django 4.2 or newer)"
        )
        raise TypeError(msg)
    return raw
