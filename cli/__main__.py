"""``python -m cli``: the same as the ``genq`` command."""

from cli.main import main

main()
