"""The `bestmatch` command line (the console script is `bestmatch.cli:app`)."""

from bestmatch.cli.app import app

__all__ = ["app"]
