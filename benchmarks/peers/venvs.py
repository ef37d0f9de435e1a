"""Each peer's own virtualenv, pinned, never aiores's: ``python venvs.py [--dir DIR] [NAME ...]``.

Makes ``DIR/NAME`` (default ``/tmp/aiores-peers``) for each peer named (default: all)
and installs its pinned distribution with pip, unless the venv already imports it;
prints ``NAME PYTHON`` for each. The drivers (``local_side.py``, ``ssh_side.py``) call
:func:`peer_python` themselves.
"""

from __future__ import annotations

import argparse
import subprocess
import venv
from pathlib import Path

#: Peer name -> (pinned requirement, module that proves it installed).
PEERS: dict[str, tuple[str, str]] = {
    "psij": ("psij-python==0.9.11", "psij"),
    "saga": ("radical.saga==1.103.0", "radical.saga"),
    "pssh": ("parallel-ssh==2.16.0.post1", "pssh.clients"),
    "fabric": ("fabric==3.2.3", "fabric"),
}
DEFAULT_DIR = Path("/tmp/aiores-peers")


def make_venv(directory: Path, requirement: str, module: str) -> Path:
    """The python of a venv in ``directory`` that imports ``module`` (made once)."""
    python = directory / "bin" / "python"
    if python.exists():
        check = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
        if check.returncode == 0:
            return python
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
        check=True,
    )
    return python


def peer_python(name: str, base: Path = DEFAULT_DIR) -> Path:
    """The python of peer ``name``'s venv under ``base`` (made once)."""
    requirement, module = PEERS[name]
    return make_venv(base / name, requirement, module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(PEERS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.names) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    for name in args.names or list(PEERS):
        print(name, peer_python(name, args.dir))


if __name__ == "__main__":
    main()
