"""A virtualenv with psij-python for the Slurm benchmark (never aiores's own).

``python benchmarks/peers/psij_venv.py DIR`` makes ``DIR`` (a venv) and installs the
pinned psij-python into it with pip, unless it is there already; prints its python.
The pin and the making are :mod:`venvs`' (all peers' venvs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.venvs import PEERS, make_venv

#: The peer's version, as in the project's testing notes.
PSIJ = PEERS["psij"][0]


def psij_python(directory: Path) -> Path:
    """The python of a venv in ``directory`` that imports psij (made once)."""
    return make_venv(directory, PSIJ, PEERS["psij"][1])


if __name__ == "__main__":
    print(psij_python(Path(sys.argv[1])))
