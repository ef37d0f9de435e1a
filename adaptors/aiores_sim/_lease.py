"""Leases, revocations and provider values of the simulated cloud's VMs.

- **Leases.** A VM acquired with a ``duration`` ends EXPIRED ("lease expired") when
  its lease does, at the cloud, whatever became of the client; ``extra["expires_at"]``
  says when (seconds since the epoch). ``renew`` (op ``renew``: ``{"id", "seconds"}``)
  makes it end ``seconds`` from now.
- **Revocations** (the ``revoke`` fault), as CloudLab's NotifyDeletePending: the VM
  stays ACTIVE with state detail ``"delete-pending"`` and ``extra["max_wait_time"]``,
  the seconds it has left, pushed afresh at least 4 times, at most 1 s apart, each
  smaller than the last; at 0 it is gone (EXPIRED, "revoked: ...", with
  ``max_wait_time`` 0 in its last record). ``revoke_wait=0`` takes it at once.
- **Provider values** (op ``set_values``: ``{"values": {id: number}}``), as
  CloudLab's SetResourceValues: how much the provider wants each VM back, pushed as
  ``extra["value"]`` (the higher, the sooner an idle one should go).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from aiores import BadParameter, DoesNotExist, IncorrectState
from aiores import ResourceState as S
from aiores.adaptor import validate

if TYPE_CHECKING:
    from ._vm import VM

__all__ = ["COUNTDOWN_STEP", "LeaseOps", "countdown_step", "max_wait_time"]

#: Most seconds between two reports of a countdown (preemption, revocation).
COUNTDOWN_STEP = 1.0


def countdown_step(notice: float) -> float:
    """Seconds between reports of a countdown of ``notice`` seconds (at least 4 of them)."""
    return max(0.05, min(COUNTDOWN_STEP, notice / 4))


class LeaseOps:
    """The cloud's lease, revocation and provider-value operations (a mixin of ``Cloud``)."""

    if TYPE_CHECKING:
        vms: dict[str, VM]

        def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]: ...
        def _end(self, vm: VM, state: S, detail: str) -> asyncio.Event: ...
        def _changed(self, vm: VM) -> None: ...

    #: The expiry task of each leased VM, by id (made on first use).
    _lease_tasks: dict[str, asyncio.Task[None]] | None = None

    # -- leases -----------------------------------------------------------------------
    def _lease(self, vm: VM, seconds: float) -> None:
        """Make ``vm`` end (EXPIRED) ``seconds`` from now, instead of when it would have."""
        tasks = self._lease_tasks
        if tasks is None:
            tasks = self._lease_tasks = {}
        old = tasks.pop(vm.id, None)
        if old is not None:
            old.cancel()
            vm.tasks.discard(old)
        vm.extra["expires_at"] = round(time.time() + seconds, 3)
        task = self._spawn(self._expire(vm, seconds), f"lease of {vm.id}")
        tasks[vm.id] = task
        vm.tasks.add(task)
        task.add_done_callback(lambda t: tasks.pop(vm.id, None) if tasks.get(vm.id) is t else None)

    async def _expire(self, vm: VM, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._end(vm, S.EXPIRED, f"expired (its lease of {seconds:g} s ended)")

    async def op_renew(self, args: Mapping[str, Any]) -> Any:
        vm = self._vm(args.get("id"))
        seconds = validate.number(args.get("seconds"), "seconds", above=0.0)
        if vm.state.final:
            raise IncorrectState(f"VM {vm.id} is {vm.state.name}: it has no lease to renew")
        if "expires_at" not in vm.extra:
            raise IncorrectState(
                f"VM {vm.id} has no lease to renew (it was acquired with no duration)"
            )
        self._lease(vm, seconds)
        self._changed(vm)
        return vm.to_json()

    # -- revocations ------------------------------------------------------------------
    def _revoke(self, vm: VM, wait: float) -> None:
        """Announce that ``vm`` goes in ``wait`` seconds (0: it is gone now)."""
        if vm.state.final:
            return
        if wait <= 0:
            vm.extra["revoked_at"] = time.time()  # its last record says max_wait_time 0
            self._end(vm, S.EXPIRED, "revoked: delete-pending with max_wait_time 0")
            return
        if vm.set_state(S.ACTIVE, "delete-pending", revoked_at=time.time() + wait):
            vm.tasks.add(self._spawn(self._revocation(vm, wait), f"revocation of {vm.id}"))

    async def _revocation(self, vm: VM, wait: float) -> None:
        """Push the VM's record every few moments of its notice, then take it."""
        step = countdown_step(wait)
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(step, left))
            if time.monotonic() < end:
                self._changed(vm)
        self._end(vm, S.EXPIRED, f"revoked: delete-pending for {wait:g} s")

    # -- provider values --------------------------------------------------------------
    async def op_set_values(self, args: Mapping[str, Any]) -> Any:
        values = args.get("values")
        if not isinstance(values, dict):
            raise BadParameter("values must be an object of VM ids to numbers")
        checked = {
            str(vm_id): validate.number(value, f"values[{vm_id!r}]")
            for vm_id, value in values.items()
        }
        for vm_id, value in checked.items():
            vm = self.vms.get(vm_id)
            if vm is not None and not vm.state.final:
                vm.extra["value"] = value
                self._changed(vm)
        return None

    def _vm(self, vm_id: object) -> VM:
        vm = self.vms.get(str(vm_id))
        if vm is None:
            raise DoesNotExist(f"the sim cloud has no VM {vm_id!r}")
        return vm


def max_wait_time(extra: Mapping[str, Any], final: bool) -> dict[str, float]:
    """``{"max_wait_time": seconds left}`` for a VM whose revocation was announced."""
    at = extra.get("revoked_at")
    if not isinstance(at, int | float) or math.isnan(at):
        return {}
    return {"max_wait_time": 0.0 if final else round(max(0.0, at - time.time()), 3)}
