"""
Run every ``benchmarks/*_bench.py`` module (``make bench``), or only those named.

    python -m benchmarks                 # all of them
    python -m benchmarks outbox_bench    # one module; extra args go to its main()

Each module has a ``main(argv: list[str]) -> None``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    here = Path(__file__).parent
    modules = sorted(p.stem for p in here.glob("*_bench.py"))
    chosen = [a for a in argv if a in modules]
    rest = [a for a in argv if a not in modules]
    for name in chosen or modules:
        print(f"== benchmarks.{name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        module.main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
