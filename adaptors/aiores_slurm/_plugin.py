"""The ``slurm`` adaptor plugin: ``slurm://`` and ``slurm+ssh://[user@]host[:port]``."""

from __future__ import annotations

from aiores import URL
from aiores.adaptor import AdaptorEnv, AdaptorPlugin, JobAdaptor

from ._jobs import SlurmJobAdaptor, runner_url

__all__ = ["SlurmPlugin", "plugin"]


class SlurmPlugin(AdaptorPlugin):
    """Jobs on a Slurm cluster, through this host's or a login host's commands."""

    name = "slurm"
    schemes = frozenset({"slurm", "slurm+ssh"})

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> JobAdaptor:
        runner_url(url)  # an URL naming no login host (or a needless one) fails here
        return SlurmJobAdaptor(url, env)


plugin = SlurmPlugin()
