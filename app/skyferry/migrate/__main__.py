"""``python -m skyferry.migrate``: the data-portability commands without the rest of the CLI."""

from skyferry.migrate.cli import main
from skyferry.runtime import tune_process

tune_process()  # the same runtime setting as the `skyferry` command
main()
