"""``python -m deepgmm``: the command-line tool (see :mod:`deepgmm.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
