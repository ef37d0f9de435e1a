"""This host as a Compute resource: the ``local://`` resource manager.

Acquiring the local host hands out lease records, each ACTIVE at once with
``access="local://"``, so code written for cloud VMs (run, put, get, job services)
runs unchanged against this machine. Leases are records in this adaptor only: they
end with the session, and destroying one does nothing to the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping, Sequence

from aiores import (
    BadParameter,
    ComputeDescription,
    DoesNotExist,
    IncorrectState,
    NotSupported,
    ResourceState,
    StorageDescription,
)
from aiores.adaptor import (
    URL,
    AdaptorEnv,
    Image,
    ResourceAdaptor,
    ResourceInfo,
    Template,
    validate,
)

from ._options import parse_options

__all__ = ["LocalResourceAdaptor"]

NAME = "localhost"
LOOPBACK = "127.0.0.1"


def _memory_mib() -> int | None:
    """Blocking: total memory in MiB, from /proc/meminfo or sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (OSError, ValueError):
        return None


class LocalResourceAdaptor(ResourceAdaptor):
    """Leases of this host: one template and one image, both named ``localhost``."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        parse_options(url)
        self._leases: dict[str, ResourceInfo] = {}
        self._template: Template | None = None
        self._closed = False

    async def open(self) -> None:
        """Read this host's size (CPUs, memory) once, off the loop."""
        if self._template is None:
            memory = await asyncio.to_thread(_memory_mib)
            self._template = Template(name=NAME, cpus=os.cpu_count(), memory=memory)

    async def aclose(self) -> None:
        """Refuse new leases; existing records stay readable."""
        self._closed = True

    async def _host(self) -> Template:
        if self._template is None:
            await self.open()
        assert self._template is not None
        return self._template

    async def acquire(
        self,
        description: ComputeDescription | StorageDescription,
        count: int,
        token: str,
    ) -> Sequence[ResourceInfo]:
        """Lease this host ``count`` times; each lease is ACTIVE at once.

        Raises:
            NotSupported: ``description`` is not a ComputeDescription.
            DoesNotExist: it names an image or template other than ``localhost``.
            BadParameter: it asks for more CPUs or memory than this host has, or
                ``count`` < 1.
            IncorrectState: the adaptor is closed.

        Cancelling it is harmless: it does not await once checks are done.
        """
        if self._closed:
            raise IncorrectState(f"{self.url} resource manager is closed")
        if not isinstance(description, ComputeDescription):
            raise NotSupported("local:// offers compute resources only (this host), no storage")
        validate.count(count, "count")
        host = await self._host()
        for kind, value in (("image", description.image), ("template", description.template)):
            if value not in (None, NAME):
                raise DoesNotExist(f"local:// has no {kind} {value!r}; its only {kind} is {NAME!r}")
        if description.cpus is not None and host.cpus and description.cpus > host.cpus:
            raise BadParameter(f"this host has {host.cpus} CPUs, fewer than {description.cpus}")
        if description.memory is not None and host.memory and description.memory > host.memory:
            raise BadParameter(
                f"this host has {host.memory} MiB of memory, less than {description.memory}"
            )
        infos = []
        for _ in range(count):
            lease = ResourceInfo(
                id=self._new_id(),
                state=ResourceState.ACTIVE,
                state_detail="running",
                access="local://",
                public_address=LOOPBACK,
                private_address=LOOPBACK,
                tags=description.tags,
                token=token,
                extra={"cpus": host.cpus, "memory": host.memory},
            )
            self._leases[lease.id] = lease
            infos.append(lease)
        return infos

    def _new_id(self) -> str:
        while True:
            id = f"{NAME}-{os.urandom(6).hex()}"
            if id not in self._leases:
                return id

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """Leases made under ``token`` that have not been destroyed."""
        return [r for r in self._leases.values() if r.token == token and not r.state.final]

    async def destroy(self, ids: Sequence[str]) -> None:
        """End the leases (CANCELED); unknown or ended ids are ignored. The host is untouched."""
        for id in ids:
            lease = self._leases.get(id)
            if lease is not None and not lease.state.final:
                ended = dataclasses.replace(
                    lease, state=ResourceState.CANCELED, state_detail="lease released"
                )
                self._leases[id] = ended
                self.publish(ended)

    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """The current record of each known lease."""
        return {id: self._leases[id] for id in ids if id in self._leases}

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """Leases not destroyed that carry all ``tags``."""
        return [r for r in self._leases.values() if not r.state.final and tags <= r.tags]

    async def list_templates(self) -> Sequence[Template]:
        """One template, ``localhost``: this host's CPUs and memory (MiB)."""
        return [await self._host()]

    async def list_images(self) -> Sequence[Image]:
        """One image, ``localhost``: whatever this host runs."""
        return [Image(name=NAME, description="this host, as it is")]
