"""
Exit codes of the ``reliable`` command, one per family of failure.

Documented in the README; scripts and CI jobs branch on them.
"""

from __future__ import annotations

EXIT_OK = 0  #: Success.
EXIT_FAILURE = (
    1  #: Any other error (and, for ``plan --detailed-exitcode``, a conflict).
)
EXIT_USAGE = 2  #: Bad arguments or options (click's own code).
EXIT_BROKER = (
    3  #: RabbitMQ or its management API unreachable, or it refused an operation.
)
EXIT_DATABASE = 4  #: PostgreSQL unreachable, or the reliable schema missing.
EXIT_INVALID = (
    5  #: An input file (topology, export) is unreadable or does not validate.
)
EXIT_CONFLICT = 6  #: The broker holds something the topology cannot change in place.
EXIT_CONFIG = 7  #: A setting (URL, environment variable) is missing or malformed.
EXIT_INCOMPLETE = 8  #: The command ran but left work undone (returned, nacked or unknown-origin messages).
EXIT_INTERRUPTED = 130  #: Stopped by Ctrl-C or SIGTERM after finishing in-flight work.
