"""What every command prints through: the console and the one-line error."""
import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nas_zoo.checkpoint import CheckpointError, OutputError
from nas_zoo.genotype import UnknownNameError

console = Console(width=None if sys.stdout.isatty() else 160)


def fail(message: str) -> "typer.Exit":
    """Print a one-line error to stderr; the caller raises the returned Exit (status 2)."""
    stderr = Console(stderr=True)
    stderr.print("[bold red]error:[/] ", end="", highlight=False)
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)  # brackets in messages stay
    return typer.Exit(2)


@contextlib.contextmanager
def library_errors(out: Optional[Path] = None):
    """The library's errors (bad input of any kind) as one line on stderr and exit status 2; other
    exceptions are bugs and keep their traceback."""
    try:
        yield
    except (ValueError, UnknownNameError, CheckpointError, OutputError, FloatingPointError, PermissionError) as e:
        raise fail(str(e)) from None
    except OSError as e:  # a folder that cannot be written, a disk that is full
        raise fail(f"{e.filename or out}: {e.strerror}") from None
