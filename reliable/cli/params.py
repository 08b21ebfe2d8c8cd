"""Click parameter types shared by the sub-commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from reliable import durations

if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]
else:  # click < 8.2 has no generic ParamType at run time
    _FloatParam = click.ParamType


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` → seconds, or a usage error."""
    try:
        return durations.parse_duration(text)
    except ValueError:
        msg = f"{text!r} is not a duration; write a number with s, m, h, d or w (e.g. 30s, 7d)"
        raise click.BadParameter(msg) from None


class Duration(_FloatParam):
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or plain seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)
