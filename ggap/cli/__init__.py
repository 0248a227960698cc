"""The `ggap` command line: `ggap node` runs a server, the other commands are clients."""

from ggap.cli._app import cli, main

__all__ = ["cli", "main"]
