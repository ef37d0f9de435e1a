"""``python -m aiores``: the ``aiores`` command (see :mod:`aiores.cli`)."""

from aiores.cli import main

main()
