"""
`CliContext`: the settings of one CLI invocation and lazily opened clients.

Commands receive it through ``click.pass_obj``; nothing connects until a
command asks for a client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from reliable import amqp, db
from reliable.config import Settings
from reliable.management import ManagementClient


@dataclass
class CliContext:
    settings: Settings
    debug: bool = False
    _management: ManagementClient | None = field(default=None, repr=False)

    def management(self) -> ManagementClient:
        if self._management is None:
            self._management = ManagementClient(self.settings.management_url)
        return self._management

    @contextlib.contextmanager
    def channel(self) -> Iterator[amqp.Channel]:
        with amqp.open_channel(self.settings.amqp_url) as channel:
            yield channel

    @contextlib.contextmanager
    def database(self, *, autocommit: bool = False) -> Iterator[Any]:
        conn = db.connect(self.settings.database_url, autocommit=autocommit)
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        if self._management is not None:
            self._management.close()
