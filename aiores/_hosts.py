"""``hosts://``: machines that exist already (aiores did not boot them), for ``fleet.add``.

A host's native id is its access URL (``ssh://user@host:port``); it is ACTIVE from
the start, with no readiness probe and no journal record (its infos say ``existing``;
its host key is verified by the access URL's adaptor as usual, from the session's
contexts). Nothing is ever booted or
destroyed: ``acquire`` is not supported and ``destroy`` only forgets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._descriptions import ComputeDescription, StorageDescription
from ._exceptions import BadParameter, IncorrectURL
from ._states import ResourceState
from ._url import URL
from .adaptor import AdaptorEnv, AdaptorPlugin, ResourceAdaptor, ResourceInfo

__all__ = ["HostsPlugin", "HostsResourceAdaptor", "plugin"]

#: The scheme of the manager of existing hosts.
SCHEME = "hosts"
#: state_detail of an existing host.
DETAIL = "existing host"


def host_info(access: str, tags: frozenset[str] = frozenset()) -> ResourceInfo:
    """The record of the existing machine reached through ``access``.

    Raises:
        IncorrectURL: ``access`` is not a URL of a machine (no host, or hosts://).
    """
    url = URL.parse(access)
    if url.adaptor == SCHEME:
        raise IncorrectURL(f"{access!r}: name the machine's own access URL (ssh://user@host)")
    if url.scheme != "local" and not url.host:
        raise IncorrectURL(f"{access!r} names no host: expected e.g. ssh://user@host:port")
    text = str(url)
    return ResourceInfo(
        id=text,
        state=ResourceState.ACTIVE,
        state_detail=DETAIL,
        access=text,
        public_address=url.host or None,
        tags=tags,
        existing=True,
    )


class HostsResourceAdaptor(ResourceAdaptor):
    """Existing machines, by access URL: ACTIVE, never booted, never destroyed."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self._known: dict[str, ResourceInfo] = {}

    def adopt(self, access: str, tags: frozenset[str] = frozenset()) -> ResourceInfo:
        """Know the machine at ``access`` (again, if it was forgotten).

        Raises:
            IncorrectURL: ``access`` is not a URL of a machine.
        """
        info = host_info(access, tags)
        self._known[info.id] = info
        return info

    async def acquire(
        self,
        description: ComputeDescription | StorageDescription,
        count: int,
        token: str,
    ) -> Sequence[ResourceInfo]:
        """Not possible: existing hosts are added (``fleet.add(url)``), not acquired."""
        raise BadParameter(
            "hosts:// boots nothing: add existing machines with fleet.add('ssh://user@host')"
        )

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """Nothing is ever created under a token."""
        return ()

    async def destroy(self, ids: Sequence[str]) -> None:
        """Forget the hosts; the machines themselves are left alone."""
        for rid in ids:
            self._known.pop(rid, None)

    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """Each known host as ACTIVE; a host found by id (``manager.get``) becomes known."""
        found: dict[str, ResourceInfo] = {}
        for rid in ids:
            info = self._known.get(rid)
            if info is None:
                try:
                    info = self.adopt(rid)
                except BadParameter:
                    continue
            found[rid] = info
        return found

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """The hosts known to this session that carry all ``tags``."""
        return [info for info in self._known.values() if tags <= info.tags]


class HostsPlugin(AdaptorPlugin):
    """Opens the ``hosts://`` resource manager."""

    name = "hosts"
    schemes = frozenset({SCHEME})

    def resource_adaptor(self, url: URL, env: AdaptorEnv) -> HostsResourceAdaptor:
        return HostsResourceAdaptor(url, env)


#: The plugin the registry loads for ``hosts://``.
plugin = HostsPlugin()
