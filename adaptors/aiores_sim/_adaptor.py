"""The ``sim://`` resource manager: the client side of the simulated cloud.

Every request is one line on the cloud's control socket; the cloud pushes each VM
change to the adaptor, which publishes it at once (no polling delay). The stream is
ordered and nothing is lost while the connection stands, so the session's watcher
does not poll (:attr:`SimResourceAdaptor.poll` is None): a describe per tick of every
watched VM cost the client more than booting them (10,000 VMs watched at a 1 s
floor are 10,000 records a second to parse and apply). If the connection breaks,
the adaptor asks the cloud (without starting one) for every VM it reported that had
not ended, and publishes the answers; a VM the cloud no longer knows, or every VM
if no cloud runs, is published FAILED ("the sim cloud process ended").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiores import (
    AioresError,
    BadParameter,
    ComputeDescription,
    IncorrectState,
    IncorrectURL,
    NetworkDescription,
    NoSuccess,
    NotSupported,
    ResourceState,
    SSHContext,
    StorageDescription,
)
from aiores.adaptor import (
    URL,
    AdaptorEnv,
    Image,
    PollPolicy,
    ResourceAdaptor,
    ResourceInfo,
    Template,
    validate,
)

from ._client import CloudClient
from ._keys import authorized_keys
from ._networks import is_network_id, network_args
from ._options import IMAGES, TEMPLATES, Faults, parse_faults, user_data_faults
from ._protocol import cloud_dir, info_from_json

__all__ = ["SimResourceAdaptor", "url_faults"]

log = logging.getLogger("aiores.sim")

LOOPBACK = "127.0.0.1"


def url_faults(url: URL) -> Faults:
    """The faults a ``sim://`` URL asks for (its query).

    Raises:
        IncorrectURL: the URL names a host other than localhost, or an unknown option.
    """
    if url.host not in ("", "localhost", LOOPBACK):
        raise IncorrectURL(f"{url}: the simulated cloud runs on this machine; use sim://")
    try:
        return parse_faults(url.query)
    except BadParameter as exc:
        raise IncorrectURL(f"{url}: {exc}") from None


class SimResourceAdaptor(ResourceAdaptor):
    """VMs of the simulated cloud (``sim://``, fault options in the query)."""

    #: None: the cloud pushes every change (see the module's docstring).
    poll: PollPolicy | None = None
    supports_networks = True

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self.faults = url_faults(url)
        self.directory: Path = cloud_dir(env.state_dir)
        self._client: CloudClient | None = None
        self._user = ""
        self._keys = ""
        self._login_keys: tuple[str, ...] = ()
        self._closed = False
        #: The last record of each VM reported that had not ended then.
        self._live: dict[str, ResourceInfo] = {}

    # -- connection -------------------------------------------------------------------
    async def open(self) -> None:
        """Read the client keys to authorize (making the managed key on first use).

        The VMs authorize the session's SSHContext ``key_files`` when it names some,
        else the aiores-managed key, which every VM reported then names as its
        ``login_keys`` (so ``ssh://`` logs in with it and no context is needed).

        The cloud is reached on first use: started by acquire, templates and images
        if none runs; describe, find, list and destroy never start one (no cloud, no
        VMs). Every connection subscribes to VM changes.

        Raises:
            DoesNotExist, AuthenticationFailed: a key file of the SSH context is
                missing or unreadable.
        """
        ctx = self.env.context(SSHContext, LOOPBACK)
        key_files = ctx.key_files if ctx is not None else None
        passphrase = ctx.passphrase if ctx is not None else None
        self._keys, files = await asyncio.to_thread(
            authorized_keys, self.env.state_dir, key_files, passphrase
        )
        self._login_keys = () if key_files else tuple(files)
        # The local login name may take a passwd lookup: off the loop too.
        user = ctx.user if ctx is not None else None
        if not user:
            user = await asyncio.to_thread(getpass.getuser)
        self._user = user

        def spawn(fn: Callable[[], Awaitable[None]], name: str) -> None:
            self.env.spawn(fn, name=name)

        self._client = CloudClient(
            self.directory,
            on_event=self._on_event,
            spawn=spawn,
            subscribe=True,
            on_lost=self._on_lost,
        )

    def _info(self, data: Mapping[str, Any]) -> ResourceInfo:
        info = info_from_json(data, self._login_keys)
        if info.state.final:
            self._live.pop(info.id, None)
        else:
            self._live[info.id] = info
        return info

    def _on_event(self, data: Mapping[str, Any]) -> None:
        self.publish(self._info(data))

    def _on_lost(self) -> None:
        """The control connection broke: changes may have been missed."""
        if not self._closed and self._live:
            # A session closing (IncorrectState) has nobody following these VMs any more.
            with contextlib.suppress(IncorrectState):
                self.env.spawn(self._catch_up, name=f"aiores-sim catch-up {self.directory}")

    async def _catch_up(self) -> None:
        """Publish what the cloud says now of every VM reported alive."""
        ids = list(self._live)
        try:
            found = await self.describe(ids)  # publishes nothing itself
        except AioresError as exc:
            log.warning("sim://: the cloud does not answer after a broken connection: %r", exc)
            found = {}
        for vm_id in ids:
            info = found.get(vm_id)
            if info is None:
                last = self._live.pop(vm_id, None)
                if last is None:
                    continue
                info = dataclasses.replace(
                    last,
                    state=ResourceState.FAILED,
                    state_detail="the sim cloud process ended",
                )
            self.publish(info)

    async def aclose(self) -> None:
        """Close the control connection; the cloud and its VMs go on."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _call(self, op: str, args: Mapping[str, Any] | None = None, *, start: bool) -> Any:
        if self._closed:
            raise IncorrectState(f"the {self.url} resource manager is closed")
        if self._client is None:
            await self.open()
        assert self._client is not None
        return await self._client.call(op, args, start=start)

    # -- the ResourceAdaptor contract -------------------------------------------------
    async def acquire(
        self,
        description: ComputeDescription | StorageDescription | NetworkDescription,
        count: int,
        token: str,
    ) -> Sequence[ResourceInfo]:
        """Start ``count`` VMs; they come back PENDING with access URL and host key.

        Faults come from the URL, overridden by ``#sim:`` lines of the user data.
        A NetworkDescription makes ``count`` networks (ACTIVE at once; see
        :mod:`aiores_sim._networks`); VMs of a description with a ``network`` listen
        at addresses of their own in its range.

        Raises:
            NotSupported: a StorageDescription (the sim cloud has VMs only).
            BadParameter: a network range outside 127.0.0.0/8, holding 127.0.0.1, or
                overlapping a live network of the cloud.
            IncorrectState: the network was destroyed, or is too small for ``count``
                more VMs.
            DoesNotExist: an unknown image or template (the message lists them).
            BadParameter: bad faults in the user data, or a size no template has.
            ConnectionLost, NoSuccess: the cloud went away or could not start.

        If cancelled, the VMs may still be made: :meth:`find` with ``token`` finds them.
        """
        if isinstance(description, NetworkDescription):
            request = network_args(description, token)
            made = [await self._call("network_acquire", request, start=True) for _ in range(count)]
            return [self._info(item) for item in made]
        if not isinstance(description, ComputeDescription):
            raise NotSupported("sim:// offers VMs and networks, no storage")
        faults = parse_faults(user_data_faults(description.user_data), self.faults)
        args = {
            "count": count,
            "token": token,
            "image": description.image,
            "template": description.template,
            "cpus": description.cpus,
            "memory": description.memory,
            "tags": sorted(description.tags),
            "duration": description.duration,
            "user_data": description.user_data,
            "user": self._user,
            "authorized_keys": self._keys,
            "faults": faults.to_json(),
        }
        if description.network is not None:
            args["network"] = description.network
        result = await self._call("acquire", args, start=True)
        return [self._info(item) for item in result]

    async def find(self, token: str) -> Sequence[ResourceInfo]:
        """VMs made under ``token`` that have not ended (none if no cloud runs).

        Waits for an acquire under ``token`` that the cloud is still carrying out.

        Raises:
            NoSuccess, ConnectionLost: the cloud failed or went away mid-request.
        """
        vms = await self._gone_ok("find", {"token": token}, [])
        nets = await self._gone_ok("network_find", {"token": token}, [])
        return [self._info(i) for i in [*vms, *nets]]

    async def destroy(self, ids: Sequence[str]) -> None:
        """End the VMs (CANCELED); returns once their processes and disks are gone.

        Networks among the ids are deleted after the VMs. Ids unknown or already
        ended are ignored; with no cloud running there is nothing to end.

        Raises:
            IncorrectState: a network is still used by a VM not among the ids.
            NoSuccess, ConnectionLost: the cloud failed or went away mid-request.

        Cancelling it abandons the wait; the cloud finishes the teardown.
        """
        vms = [i for i in ids if not is_network_id(i)]
        nets = [i for i in ids if is_network_id(i)]
        if vms:
            await self._gone_ok("destroy", {"ids": vms}, None)
        if nets:  # after their VMs: a network in use cannot go
            await self._gone_ok("network_destroy", {"ids": nets}, None)

    async def describe(self, ids: Sequence[str]) -> Mapping[str, ResourceInfo]:
        """The record of each known VM (one request for all ``ids``).

        Raises:
            NoSuccess, ConnectionLost: the cloud failed or went away mid-request.
        """
        vms = [i for i in ids if not is_network_id(i)]
        nets = [i for i in ids if is_network_id(i)]
        result = await self._gone_ok("describe", {"ids": vms}, {}) if vms else {}
        if nets:
            result.update(await self._gone_ok("network_describe", {"ids": nets}, {}))
        return {vm_id: self._info(data) for vm_id, data in result.items()}

    async def list(self, tags: frozenset[str] = frozenset()) -> Sequence[ResourceInfo]:
        """VMs and networks not ended that carry all ``tags``."""
        vms = await self._gone_ok("list", {"tags": sorted(tags)}, [])
        nets = await self._gone_ok("network_list", {"tags": sorted(tags)}, [])
        return [self._info(i) for i in [*vms, *nets]]

    async def _gone_ok(self, op: str, args: Mapping[str, Any], empty: Any) -> Any:
        """Ask the cloud without starting one: no cloud means no VMs."""
        try:
            return await self._call(op, args, start=False)
        except NoSuccess as exc:
            if self._client is not None and not self._client.connected:
                return empty  # no cloud runs: everything it had is gone
            raise exc

    async def renew(self, id: str, seconds: float) -> ResourceInfo:
        """Renew a VM's lease at the cloud: it ends (EXPIRED) ``seconds`` from now.

        Raises:
            DoesNotExist: no such VM.
            IncorrectState: it has ended, or was acquired with no duration.
        """
        return self._info(await self._call("renew", {"id": id, "seconds": seconds}, start=False))

    async def list_templates(self) -> Sequence[Template]:
        """The VM sizes: tiny, small (the default), medium, large, xlarge (no cloud needed)."""
        return list(TEMPLATES)

    async def list_images(self) -> Sequence[Image]:
        """The images (all run this host's userland; the name is a label)."""
        return list(IMAGES)

    # -- fault injection ----------------------------------------------------------------
    async def rekey(self, id: str) -> str:
        """Make an ACTIVE VM answer with a new host key (not the published one).

        Its connections drop; clients that pinned the published key refuse it from
        then on. Returns the new public key.

        Raises:
            DoesNotExist: no such VM.
            IncorrectState: it is not ACTIVE.
        """
        result = await self._call("rekey", {"id": id}, start=False)
        return str(result["host_key"])

    async def set_values(self, values: Mapping[str, float]) -> None:
        """Say how much the provider wants each VM back (CloudLab's SetResourceValues).

        Each VM of ``values`` (by id) carries its value as ``extra["value"]`` from
        then on (pushed at once); pools release the idle ones of higher value
        first. Ids unknown or ended are ignored.

        Raises:
            BadParameter: a value that is not a finite number.
        """
        checked = {
            str(vm_id): validate.number(value, f"values[{vm_id!r}]")
            for vm_id, value in values.items()
        }
        await self._call("set_values", {"values": checked}, start=False)
