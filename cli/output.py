"""What every command prints through: the console and the one-line error."""
import sys

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)


def fail(message: str) -> "typer.Exit":
    """Print a one-line error to stderr; the caller raises the returned Exit (status 2)."""
    stderr = Console(stderr=True)
    stderr.print("[bold red]error:[/] ", end="", highlight=False)
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)  # brackets in messages stay
    return typer.Exit(2)
