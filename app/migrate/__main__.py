"""``python -m app.migrate``: the data-portability commands without the rest of the CLI."""

from app.migrate.cli import main

main()
