"""The ``nas-zoo`` command line (typer)."""
