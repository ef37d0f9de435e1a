"""The ``docker://`` adaptor: containers on the Docker Engine API, through aiodocker.

``docker://`` is the local daemon (``$DOCKER_HOST``, else ``/var/run/docker.sock``,
else podman's ``/run/podman/podman.sock``); ``docker://host[:port]`` a daemon over TCP:
with TLS (port 2376 by default) when an :class:`aiores.DockerContext` applies to the
host, or with ``DOCKER_TLS_VERIFY=1`` and the certificates in ``$DOCKER_CERT_PATH``;
else plain TCP (port 2375).
Podman's Docker-compatible service (``podman system service``) is such a daemon.
It offers:

- a job service (:class:`DockerJobAdaptor`): each job a container of the image its
  description's ``category`` names (DRMAA2's job category, as in DRMAA2's Go
  implementation), or of the URL's ``?image=``; see :mod:`aiores_docker._jobs`;
- a resource manager (:class:`DockerResourceAdaptor`): long-running containers as
  machines, reached at ``docker://[host[:port]]/<container id>``;
- for such a machine URL, a command runner (:class:`DockerCommandRunner`, through
  the exec API) and a file adaptor (:class:`DockerFileAdaptor`, through the archive
  API): no SSH server in the image.

Options: ``?image=NAME`` (the default image) and ``?grace=SECONDS`` (SIGTERM to
SIGKILL when a job is cancelled, default 5). Needs the ``docker`` extra:
``pip install 'aiores[docker]'``.
"""

from __future__ import annotations

from aiores import NotSupported
from aiores.adaptor import URL, AdaptorEnv, AdaptorPlugin

from ._exec import DockerCommandRunner, DockerFileAdaptor
from ._jobs import DockerJobAdaptor
from ._machines import DockerResourceAdaptor
from ._options import container_of, parse_options

__all__ = [
    "DockerCommandRunner",
    "DockerFileAdaptor",
    "DockerJobAdaptor",
    "DockerPlugin",
    "DockerResourceAdaptor",
    "plugin",
]


class DockerPlugin(AdaptorPlugin):
    """Opens the ``docker://`` capabilities."""

    name = "docker"
    schemes = frozenset({"docker"})

    def endpoint(self, url: URL) -> str:
        """The daemon, its options, and the container a machine URL names."""
        parse_options(url)
        container = container_of(url)
        return str(
            URL(
                scheme="docker",
                host=url.host,
                port=url.port,
                user=url.user if container else None,
                path=f"/{container}" if container else "",
                query=tuple(sorted(url.query)),
            )
        )

    def _daemon_only(self, url: URL, what: str) -> None:
        if container_of(url) is not None:
            raise NotSupported(
                f"{url} is a container (a machine): it runs commands and copies files; "
                f"its {what} is at {url.replace(path='', user=None)}"
            )

    def _machine_only(self, url: URL, what: str) -> None:
        if container_of(url) is None:
            raise NotSupported(
                f"{url} is a Docker daemon: {what} go to a container of it, "
                "docker://[host]/<container id> (a machine's access URL)"
            )

    def job_adaptor(self, url: URL, env: AdaptorEnv) -> DockerJobAdaptor:
        self._daemon_only(url, "job service")
        return DockerJobAdaptor(url, env)

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> DockerResourceAdaptor:
        self._daemon_only(url, "resource manager")
        return DockerResourceAdaptor(url, env)

    def command_runner(self, url: URL, env: AdaptorEnv) -> DockerCommandRunner:
        self._machine_only(url, "commands")
        return DockerCommandRunner(url, env)

    def file_adaptor(self, url: URL, env: AdaptorEnv) -> DockerFileAdaptor:
        self._machine_only(url, "files")
        return DockerFileAdaptor(url, env)


#: The plugin the registry loads for ``docker://``.
plugin = DockerPlugin()
