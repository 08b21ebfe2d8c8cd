"""
Named SQL: every ``*.sql`` file in ``reliable/sql/queries`` holds blocks headed
``-- name --``. Tables are written as ``{schema}.table``; `reliable.db` binds
the schema as an identifier, so a literal brace in SQL is written ``{{``/``}}``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString

_HEADER = re.compile(r"^--\s*([a-z0-9_]+)\s*--\s*$", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    parts = _HEADER.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            msg = f"query {name!r} is defined twice"
            raise ValueError(msg)
        found[name] = body.strip()
    return found


@functools.cache
def all_queries() -> dict[str, LiteralString]:
    """Every named query shipped with the package."""
    merged: dict[str, str] = {}
    folder = resources.files(__package__).joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in _parse(entry.read_text(encoding="utf-8")).items():
                if name in merged:
                    msg = f"query {name!r} is defined in two files"
                    raise ValueError(msg)
                merged[name] = body
    return merged  # shipped files: LiteralString by construction


def get(name: str) -> LiteralString:
    try:
        return all_queries()[name]
    except KeyError:
        msg = f"no SQL query named {name!r}"
        raise KeyError(msg) from None


def migrations() -> list[tuple[int, str, LiteralString]]:
    """``(version, name, script)`` for every file in ``sql/migrations``, in order."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_([a-z0-9_]+)\.sql$", entry.name)
        if match:
            script: LiteralString = entry.read_text(encoding="utf-8")  # shipped file
            found.append((int(match[1]), match[2], script))
    return sorted(found)
