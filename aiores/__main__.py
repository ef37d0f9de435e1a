"""``python -m aiores``: the ``aiores`` command (see :mod:`aiores._cli`)."""

from aiores._cli import main

main()
