"""The ``ssh`` adaptor plugin: ``ssh://[user@]host[:port]`` (and ``any://host``)."""

from __future__ import annotations

from aiores import URL
from aiores.adaptor import AdaptorEnv, AdaptorPlugin, CommandRunner, FileAdaptor, JobAdaptor

from ._files import SSHFileAdaptor
from ._jobs import SSHJobAdaptor
from ._runner import SSHCommandRunner

__all__ = ["SSHPlugin", "plugin"]

_LOCAL_NAMES = frozenset({"localhost"})


class SSHPlugin(AdaptorPlugin):
    """Jobs, commands and files on any host that answers SSH."""

    name = "ssh"
    schemes = frozenset({"ssh"})
    needs_host = True

    def accepts(self, url: URL) -> bool:
        if url.adaptor in self.schemes:
            return True
        return url.adaptor == "any" and bool(url.host) and url.host not in _LOCAL_NAMES

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> JobAdaptor:
        return SSHJobAdaptor(url, env)

    def file_adaptor(self, url: URL, env: AdaptorEnv) -> FileAdaptor:
        return SSHFileAdaptor(url, env)

    def command_runner(self, url: URL, env: AdaptorEnv) -> CommandRunner:
        return SSHCommandRunner(url, env)


plugin = SSHPlugin()
