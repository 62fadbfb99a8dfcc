"""``python -m app.migrate``: the data-portability commands without the rest of the CLI."""

from app.cli import tune_gc
from app.migrate.cli import main

tune_gc()  # the same runtime setting as the `skyferry` command
main()
