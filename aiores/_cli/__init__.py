"""The ``aiores`` command (click and rich); packages add commands by entry point.

``[project.scripts] aiores = "aiores._cli:main"``; ``python -m aiores`` runs it too.
See :mod:`aiores._cli._main` for the group and the ``aiores.commands`` entry points.
"""

from __future__ import annotations

from ._main import COMMANDS_GROUP, main

__all__ = ["COMMANDS_GROUP", "main"]
