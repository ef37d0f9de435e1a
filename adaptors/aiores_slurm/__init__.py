"""aiores on Slurm: ``slurm://`` (this host's Slurm commands) and
``slurm+ssh://[user@]host[:port]`` (a login host's, over the session's pooled SSH
connection).

Jobs are submitted with ``sbatch`` (the idempotency token in ``--comment``), watched
with one ``squeue`` per tick for all of an endpoint's jobs, and controlled with
``scancel`` and ``scontrol``. See :mod:`aiores_slurm._jobs` for the mapping of a
:class:`aiores.JobDescription` and the URL options.
"""

from __future__ import annotations

from ._jobs import SlurmJobAdaptor
from ._plugin import SlurmPlugin, plugin
from ._scripts import STATES, exit_code, state_of

__all__ = ["STATES", "SlurmJobAdaptor", "SlurmPlugin", "exit_code", "plugin", "state_of"]
