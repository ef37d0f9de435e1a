"""A directory the test session shares with every sim VM, isolated or not.

An isolated sim VM has a ``/tmp`` of its own: a file a test writes to the host's
``/tmp`` is not there for the VM's commands. Files both sides use live here instead:
this directory is named in ``$AIORES_SIM_SHARED`` for the whole session (set on
import, before any cloud starts), so every VM has it bound at the same path. The
``aiores_sim_cloud`` fixture shares pytest's base temporary directory as well (every
``tmp_path``). Removed when the session ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from aiores_sim._isolation import SHARED_ENV

__all__ = ["SHARED"]

SHARED = Path(tempfile.mkdtemp(prefix="aiores-test-shared-"))
SHARED.chmod(0o755)
os.environ[SHARED_ENV] = os.pathsep.join(
    [str(SHARED), *(p for p in os.environ.get(SHARED_ENV, "").split(os.pathsep) if p)]
)
atexit.register(shutil.rmtree, SHARED, ignore_errors=True)
