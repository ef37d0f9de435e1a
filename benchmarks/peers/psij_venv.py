"""A virtualenv with psij-python for the Slurm benchmark (never aiores's own).

``python benchmarks/peers/psij_venv.py DIR`` makes ``DIR`` (a venv) and installs the
pinned psij-python into it with pip, unless it is there already; prints its python.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

#: The peer's version, as in the project's testing notes.
PSIJ = "psij-python==0.9.11"


def psij_python(directory: Path) -> Path:
    """The python of a venv in ``directory`` that imports psij (made once)."""
    python = directory / "bin" / "python"
    if python.exists():
        check = subprocess.run([python, "-c", "import psij"], capture_output=True, check=False)
        if check.returncode == 0:
            return python
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PSIJ],
        check=True,
    )
    return python


if __name__ == "__main__":
    print(psij_python(Path(sys.argv[1])))
