"""The ``local://`` adaptor: this host's processes, this host as a resource, its files.

``local://`` (also ``any://`` and ``any://localhost``) offers:

- a job service (:class:`LocalJobAdaptor`): jobs are processes in their own process
  group, their exits pushed without polling; options ``?grace=SECONDS`` (SIGTERM to
  SIGKILL on cancel, default 5) and ``?max_running=N`` (at most N at once, the rest
  QUEUED);
- a command runner (:class:`LocalCommandRunner`);
- a resource manager (:class:`LocalResourceAdaptor`): leases of this host, ACTIVE at once;
- a file adaptor (:class:`LocalFileAdaptor`): copies in a worker thread.

``local://?max_running=2`` and ``local://`` are different endpoints (each has its own
job table); ``any://`` and ``local://`` are the same.
"""

from __future__ import annotations

from aiores.adaptor import URL, AdaptorEnv, AdaptorPlugin

from ._files import LocalFileAdaptor
from ._jobs import LocalJobAdaptor
from ._options import parse_options
from ._resources import LocalResourceAdaptor
from ._runner import LocalCommandRunner

__all__ = [
    "LocalCommandRunner",
    "LocalFileAdaptor",
    "LocalJobAdaptor",
    "LocalPlugin",
    "LocalResourceAdaptor",
    "plugin",
]


class LocalPlugin(AdaptorPlugin):
    """Opens the ``local://`` capabilities."""

    name = "local"
    schemes = frozenset({"local"})

    def accepts(self, url: URL) -> bool:
        """``local://``, and ``any://`` with no host or ``localhost``."""
        return url.adaptor == "local" or (url.adaptor == "any" and url.host in ("", "localhost"))

    def endpoint(self, url: URL) -> str:
        """``local://`` plus its options, sorted: the options shape the endpoint."""
        parse_options(url)
        return str(URL(scheme="local", query=tuple(sorted(url.query))))

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> LocalJobAdaptor:
        return LocalJobAdaptor(url, env)

    def command_runner(self, url: URL, env: AdaptorEnv) -> LocalCommandRunner:
        return LocalCommandRunner(url, env)

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> LocalResourceAdaptor:
        return LocalResourceAdaptor(url, env)

    def file_adaptor(self, url: URL, env: AdaptorEnv) -> LocalFileAdaptor:
        return LocalFileAdaptor(url, env)


#: The plugin the registry loads for ``local://``.
plugin = LocalPlugin()
