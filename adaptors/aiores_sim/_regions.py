"""A cloud larger than one process serves: regions, each a process of its own.

Each VM holds descriptors in the process that serves it (its listening socket, the
connections to it, the pipes of its commands), and one process has a limit on them
(the cloud raises its own to the hard limit at start, 20,000 here). So a cloud
serves at most ``region_capacity`` live VMs itself (by default what its limit
allows at :data:`FDS_PER_VM` descriptors each); past that it starts a region: a
cloud process of its own in ``<dir>/regions/<n>`` (``python -m aiores_sim.server
--region-of <pid>``), which stops when the first one does (or dies).

Clients see none of it: they talk to the first process, on the one control socket,
which sends each acquire's share to the regions with room (starting one when none
has), routes describe, destroy, rekey, renew and set_values by VM id, gathers find
and list from all, and passes every region's VM events on to its own subscribers. SSH goes straight
to the VM's port, whichever process serves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiores import IncorrectState, NoSuccess
from aiores.adaptor import validate

from ._client import CloudClient, start_cloud, stop_cloud
from ._cloud import MAX_COUNT, REGIONS, Cloud, _spec, _str_list
from ._protocol import encode

__all__ = ["FDS_PER_VM", "RegionalCloud", "default_capacity"]

log = logging.getLogger("aiores.sim")

#: Descriptors one live VM may hold in its process: its listening socket, a client's
#: connection, the three pipes of a command (and a second connection at times).
FDS_PER_VM = 5
#: Descriptors kept for the process itself (control connections, logs, threads).
RESERVED_FDS = 256
#: Seconds a region process may take to stop.
STOP_TIMEOUT = 60.0


def default_capacity() -> int:
    """Live VMs one process serves: what its descriptor limit allows (at least 100)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(100, (soft - RESERVED_FDS) // FDS_PER_VM)


@dataclass(eq=False)
class Region:
    """Another process of this cloud and what the first one knows of its VMs."""

    name: str
    directory: Path
    #: The control connection to it (subscribed to its VM events).
    client: CloudClient = field(init=False)
    #: The record of each VM it serves, as its last event said.
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Ids of those that have not ended.
    live: set[str] = field(default_factory=set)
    #: VMs promised to acquires under way.
    reserved: int = 0
    lost: bool = False


class RegionalCloud(Cloud):
    """A :class:`Cloud` that serves VMs past ``region_capacity`` in region processes.

    Args:
        directory: As for :class:`Cloud`; regions live in ``directory/regions/<n>``.
        region_capacity: Live VMs each process serves at most (default:
            :func:`default_capacity`).
        **options: As for :class:`Cloud`.
    """

    def __init__(
        self, directory: Path, *, region_capacity: int | None = None, **options: Any
    ) -> None:
        super().__init__(directory, **options)
        self.capacity = validate.count(
            region_capacity if region_capacity is not None else default_capacity(),
            "region_capacity",
        )
        self.regions: list[Region] = []
        self._where: dict[str, Region] = {}
        self._planning = asyncio.Lock()
        self._reserved_here = 0

    # -- regions --------------------------------------------------------------------
    async def _new_region(self) -> Region:
        """Start a region process and connect to it (subscribed to its VM events)."""
        if self._stopping:
            raise IncorrectState("the sim cloud is stopping")
        name = str(len(self.regions) + 2)  # this process is region 1
        directory = self.directory / REGIONS / name
        await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
        await start_cloud(directory, region_of=os.getpid(), cleanups=self._cleanups)
        region = Region(f"sim-{name}", directory)
        region.client = CloudClient(
            directory,
            on_event=lambda vm: self._relay(region, vm),
            on_lost=lambda: self._region_lost(region),
            subscribe=True,
        )
        try:
            await region.client.connect(start=False)
        except BaseException:
            await region.client.close()
            raise
        self.regions.append(region)
        log.info("sim cloud: region %s serves VMs (%s)", region.name, directory)
        return region

    def _track(self, region: Region, vm: Mapping[str, Any]) -> None:
        vm_id = str(vm["id"])
        region.records[vm_id] = dict(vm)
        self._where[vm_id] = region
        if vm.get("state") in ("PENDING", "ACTIVE"):
            region.live.add(vm_id)
        else:
            region.live.discard(vm_id)

    def _relay(self, region: Region, vm: Mapping[str, Any]) -> None:
        """A region's VM changed: note it, tell our subscribers."""
        self._track(region, vm)
        if not self._subscribers:
            return
        line = encode({"event": "vm", "vm": vm})
        for writer in list(self._subscribers):
            if writer.is_closing():
                self._subscribers.discard(writer)
            else:
                writer.write(line)

    def _region_lost(self, region: Region) -> None:
        """A region process went away: its VMs went with it."""
        region.lost = True
        if self._stopping:
            return
        log.error("sim cloud: region %s went away with %d VMs", region.name, len(region.live))
        for vm_id in list(region.live):
            record = {
                **region.records[vm_id],
                "state": "FAILED",
                "detail": "its region process ended",
            }
            self._relay(region, record)

    async def _stop_regions(self) -> None:
        async def stop(region: Region) -> None:
            try:
                await stop_cloud(region.directory, timeout=STOP_TIMEOUT)
            finally:
                await region.client.close()

        regions, self.regions = self.regions, []
        results = await asyncio.gather(*(stop(r) for r in regions), return_exceptions=True)
        for region, result in zip(regions, results, strict=True):
            if isinstance(result, Exception):
                log.error("sim cloud: region %s did not stop: %r", region.name, result)

    def live(self) -> int:
        return super().live() + sum(len(r.live) for r in self.regions)

    def _busy(self) -> bool:
        return super()._busy() or any(r.live for r in self.regions)

    # -- routing --------------------------------------------------------------------
    async def _plan(self, count: int) -> list[tuple[Region | None, int]]:
        """Shares of ``count`` new VMs: (None for here, or a region; how many), reserved."""
        async with self._planning:
            plan: list[tuple[Region | None, int]] = []
            room = self.capacity - super().live() - self._reserved_here
            if room > 0:
                here = min(room, count)
                self._reserved_here += here
                plan.append((None, here))
                count -= here
            for region in [r for r in self.regions if not r.lost]:
                room = self.capacity - len(region.live) - region.reserved
                if count and room > 0:
                    share = min(room, count)
                    region.reserved += share
                    plan.append((region, share))
                    count -= share
            while count:
                try:
                    region = await self._new_region()
                except BaseException:
                    self._unreserve(plan)
                    raise
                share = min(self.capacity, count)
                region.reserved += share
                plan.append((region, share))
                count -= share
            return plan

    def _unreserve(self, plan: Sequence[tuple[Region | None, int]]) -> None:
        for region, share in plan:
            if region is None:
                self._reserved_here -= share
            else:
                region.reserved -= share

    async def op_acquire(self, args: Mapping[str, Any]) -> Any:
        if self._stopping:
            raise IncorrectState("the sim cloud is stopping")
        count = validate.count(args.get("count"), "count", max=MAX_COUNT)
        args = self._place(args, count)  # addresses on its network (see _networks)
        spec = _spec(args)  # a bad request fails before any region starts
        done = self._acquiring.setdefault(spec.token, asyncio.Event())
        try:
            plan = await self._plan(count)
            try:
                first = 0
                parts = []
                for region, share in plan:
                    if region is None:
                        parts.append(self._make(spec, share, first))
                    else:
                        part_args = {**args, "count": share, "first_index": first}
                        parts.append(self._in(region, "acquire", part_args))
                    first += share
                results = await asyncio.gather(*parts, return_exceptions=True)
            finally:
                self._unreserve(plan)
        finally:
            self._acquiring.pop(spec.token, None)
            done.set()
        made: list[dict[str, Any]] = []
        for (region, _), result in zip(plan, results, strict=True):
            if isinstance(result, BaseException):
                # What the other shares made, find(token) finds (the client cleans up).
                raise result
            if region is not None:
                for vm in result:
                    self._track(region, vm)
            made.extend(result)
        return made

    async def _in(self, region: Region, op: str, args: Mapping[str, Any]) -> Any:
        if region.lost:
            raise NoSuccess(f"the sim cloud's region {region.name} went away")
        return await region.client.call(op, args, start=False)

    def _by_region(self, ids: Sequence[str]) -> tuple[list[str], dict[Region, list[str]]]:
        here: list[str] = []
        there: dict[Region, list[str]] = {}
        for vm_id in ids:
            region = self._where.get(vm_id)
            if region is None:
                here.append(vm_id)
            else:
                there.setdefault(region, []).append(vm_id)
        return here, there

    async def _gather(
        self, op: str, args: Mapping[str, Any], regions: Sequence[Region] | None = None
    ) -> list[Any]:
        """``op`` in every live region (or ``regions``), all at once."""
        targets = [r for r in (self.regions if regions is None else regions) if not r.lost]
        return await asyncio.gather(*(self._in(r, op, args) for r in targets))

    async def op_describe(self, args: Mapping[str, Any]) -> Any:
        here, there = self._by_region(_str_list(args, "ids"))
        found: dict[str, Any] = await super().op_describe({"ids": here})
        for region, ids in there.items():
            if region.lost:  # what it was last, FAILED: the process is gone
                found.update({i: region.records[i] for i in ids if i in region.records})
                continue
            found.update(await self._in(region, "describe", {"ids": ids}))
        return found

    async def op_find(self, args: Mapping[str, Any]) -> Any:
        found: list[Any] = await super().op_find(args)  # waits for an acquire under way
        for part in await self._gather("find", args):
            found.extend(part)
        return found

    async def op_list(self, args: Mapping[str, Any]) -> Any:
        found: list[Any] = await super().op_list(args)
        for part in await self._gather("list", args):
            found.extend(part)
        return found

    async def op_destroy(self, args: Mapping[str, Any]) -> Any:
        here, there = self._by_region(_str_list(args, "ids"))
        await asyncio.gather(
            super().op_destroy({"ids": here}),
            *(self._in(r, "destroy", {"ids": ids}) for r, ids in there.items() if not r.lost),
        )
        return None

    async def op_rekey(self, args: Mapping[str, Any]) -> Any:
        region = self._where.get(str(args.get("id")))
        if region is None:
            return await super().op_rekey(args)
        return await self._in(region, "rekey", args)

    async def op_renew(self, args: Mapping[str, Any]) -> Any:
        region = self._where.get(str(args.get("id")))
        if region is None:
            return await super().op_renew(args)
        return await self._in(region, "renew", args)

    async def op_set_values(self, args: Mapping[str, Any]) -> Any:
        values = args.get("values")
        if not isinstance(values, dict):
            return await super().op_set_values(args)  # refused there
        here, there = self._by_region([str(i) for i in values])
        await asyncio.gather(
            super().op_set_values({"values": {i: values[i] for i in here}}),
            *(
                self._in(r, "set_values", {"values": {i: values[i] for i in ids}})
                for r, ids in there.items()
                if not r.lost
            ),
        )
        return None

    async def op_hello(self, args: Mapping[str, Any]) -> Any:
        hello: dict[str, Any] = await super().op_hello(args)
        hello["regions"] = 1 + len(self.regions)
        return hello
