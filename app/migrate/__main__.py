"""``python -m app.migrate``: the data-portability commands without the rest of the CLI."""

from app.migrate.cli import main
from app.runtime import tune_process

tune_process()  # the same runtime setting as the `skyferry` command
main()
