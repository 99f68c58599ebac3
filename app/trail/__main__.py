"""The ``trail`` command's front door: ``trail serve`` starts the trail page (:mod:`trail.web.app`),
anything else is the CLI (:mod:`trail.cli.main`); an ID named "serve" is ``trail -- serve``.
``python -m trail`` is the same command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trail.cli.main import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trail`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        # Flask is imported only for the page: a lookup in a terminal does not wait for it.
        from trail.web.app import serve_main

        return serve_main(argv[1:])
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
