"""What every command shares: the console, the one-line error, the library's errors as that line, tables that
fit, the --threads option."""
import contextlib
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from nas_zoo.harness.checkpoint import CheckpointError
from nas_zoo.harness import distributed

from nas_zoo.files import OutputError
from nas_zoo.registry.genotype import UnknownNameError
from nas_zoo.threads import AUTO

# a pipe gets wide lines, unless COLUMNS says otherwise
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


def fail(message: str) -> "typer.Exit":
    """Print a one-line error to stderr (under torchrun, naming the rank after the first); the caller raises the
    returned Exit (status 2)."""
    if distributed.rank() > 0:
        message = f"rank {distributed.rank()}: {message}"
    distributed.report(f"error: {message}")
    stderr = Console(stderr=True)
    stderr.print("[bold red]error:[/] ", end="", highlight=False)
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)  # brackets in messages stay
    return typer.Exit(2)


@contextlib.contextmanager
def library_errors(out: Optional[Path] = None):
    """The library's errors (bad input of any kind) as one line on stderr and exit status 2; other
    exceptions are bugs and keep their traceback. Under torchrun, a rank that stopped because rank 0 failed
    exits with status 2 quietly (rank 0 prints the error), and one that lost another rank says so in one line."""
    try:
        yield
    except distributed.Stopped:  # rank 0 failed and said why
        raise typer.Exit(2) from None
    except (ValueError, UnknownNameError, CheckpointError, OutputError, FloatingPointError, PermissionError) as e:
        raise fail(str(e)) from None
    except OSError as e:  # a folder that cannot be written, a disk that is full
        raise fail(f"{e.filename or out}: {e.strerror}") from None
    except RuntimeError as e:
        reason = distributed.lost(e)
        if reason is None:
            raise
        raise fail(f"another process is gone ({reason}); torchrun's summary names the one that failed first (a run "
                   "continues from its last checkpoint with --resume)") from None


THREADS_HELP = f"PyTorch's CPU threads; {AUTO}: one per core idle at start (README, Threads)"


def threads_option():
    return typer.Option(AUTO, min=0, help=THREADS_HELP)


def fitted_table(title: Optional[str], columns: Sequence[Tuple[str, str, bool]], rows: Iterable[Sequence[str]]) -> Table:
    """A table that fits the console without cutting an identifier.

    ``columns`` are (header, kind, optional); kind ``id`` is a name to copy: it never wraps; ``text`` and
    ``number`` (right-aligned) columns wrap at spaces, and get the room left over, the columns that need the
    least to stop wrapping first. When the identifiers cannot fit, the optional columns are left out
    (``--json`` has them all).
    """
    rows = [list(row) for row in rows]
    cells = [[header] + [row[i] for row in rows] for i, (header, _, _) in enumerate(columns)]
    longest_line = [max(len(cell) for cell in column) for column in cells]
    longest_word = [max(len(word) for cell in column for word in cell.split() or [""]) for column in cells]

    def widths(keep: List[int]) -> Optional[Dict[int, int]]:
        least = {i: longest_line[i] if columns[i][1] == "id" else longest_word[i] for i in keep}
        spare = console.width - (3 * len(keep) - 3) - sum(least.values())  # a separator and 2 spaces between columns
        if spare < 0:
            return None
        for i in sorted(keep, key=lambda i: longest_line[i] - least[i]):
            grow = min(longest_line[i] - least[i], spare)
            least[i], spare = least[i] + grow, spare - grow
        return least

    everything = list(range(len(columns)))
    chosen = (widths(everything) or widths([i for i in everything if not columns[i][2]])
              or dict(zip(everything, longest_line)))  # narrower than the identifiers: the terminal wraps
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, width in chosen.items():
        header, kind, _ = columns[i]
        table.add_column(header, justify="right" if kind == "number" else "left", width=width, no_wrap=kind == "id")
    for row in rows:
        table.add_row(*(row[i] for i in chosen))
    return table
