"""``python -m reliable`` runs the CLI."""

from __future__ import annotations

from reliable.cli import main

main()
