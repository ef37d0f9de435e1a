"""The simulated cloud: VMs, their lifecycles and the control socket (one per directory).

:class:`Cloud` runs in the cloud process (``python -m aiores_sim.server``) or, for
tests, in-process. It holds a lock file for its whole life, so at most one cloud
serves a directory; clients talk to it over the control socket (see
:mod:`aiores_sim._protocol`) and are told of every VM change at once.

A VM is PENDING from its acquire until its boot delay has passed, then ACTIVE (its
SSH server answers), and ends CANCELED (destroyed), EXPIRED (its duration ran out,
or it was preempted) or FAILED (an injected boot failure or death). Ended VMs are
torn down in batches: servers closed, every process they started killed (found by
session, environment, working directory and ancestry: :mod:`aiores_sim._procs`),
disks removed; their records stay for describe (the newest ``keep_ended`` of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import secrets
import shutil
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import asyncssh

from aiores import AioresError, BadParameter, DoesNotExist, IncorrectState, NoSuccess
from aiores import ResourceState as S
from aiores.adaptor import concurrency, private, validate

from ._isolation import (
    Isolation,
    choose,
    requested,
    shared_paths,
    start_holder,
    start_machine,
)
from ._lease import LeaseOps, countdown_step
from ._networks import LOOPBACK, NetworkOps
from ._options import IMAGES, TEMPLATES, Faults, choose_template
from ._procs import Owner, ProcessTable, adopted_zombies, become_subreaper, kill, kill_descendants
from ._protocol import (
    LINE_LIMIT,
    PROTOCOL_VERSION,
    encode,
    encode_error,
    socket_path,
)
from ._spawner import Spawner
from ._vm import VM, Prepared, VMSpec, prepare

__all__ = ["Cloud", "CloudRunning", "is_locked", "wipe_stale"]

log = logging.getLogger("aiores.sim")

#: Most VMs one acquire may ask for.
MAX_COUNT = 10000
#: Seconds a cancelled acquire may spend removing what it made.
CLEANUP_TIMEOUT = 60.0
#: VM machines (namespaces, mounts) made at once: the kernel makes mounts one at a
#: time (one lock for all), so more at once only make each slower; a VM waits its
#: turn before its making's own time limit starts (10,000 VMs booting together).
MAKING_AT_ONCE = 8
#: Seconds between the orphan reaper's scans when no SIGCHLD came (one dropped from
#: asyncio's full wakeup buffer is not lost for longer).
REAP_SCAN = 30.0
#: Where the directories of a cloud's region processes are (see :mod:`._regions`).
REGIONS = "regions"


class CloudRunning(NoSuccess):
    """Another cloud already serves this directory."""


class Cloud(LeaseOps, NetworkOps):
    """A simulated cloud serving ``directory`` (start with :meth:`start`).

    Args:
        directory: Where its lock, pid file, socket and VM disks live.
        idle_exit: Stop after this many seconds with no live VM and no client
            connected (None: never).
        keep_ended: How many ended VM records stay answerable by describe.
        subreaper: Adopt the orphans of VM processes (the cloud process does): then
            every VM process stays a descendant of this one, stopping kills them all
            however they hid, and the cloud reaps the orphans it adopted. Leave it off
            in a process that has other children (an in-process cloud in tests).
        watch_pid: Stop once the process with this pid has ended (a test session
            that started this cloud for itself, even if it was killed).
        isolation: ``namespaces``, ``none`` or ``auto`` (see :mod:`._isolation`);
            None: ``$AIORES_SIM_ISOLATION``, else ``auto``.
        shared: Host directories every isolated VM shares, each bound read-write at
            its own path (as a cluster's NFS export is mounted on every node); None:
            ``$AIORES_SIM_SHARED`` (``os.pathsep``-separated), else none.
    """

    def __init__(
        self,
        directory: Path,
        *,
        idle_exit: float | None = None,
        keep_ended: int = 10000,
        subreaper: bool = False,
        watch_pid: int | None = None,
        isolation: str | None = None,
        shared: list[str] | None = None,
    ) -> None:
        self.directory = directory.absolute()
        self._isolation_asked = requested(isolation)
        self.shared = shared_paths(shared)
        self.isolation = Isolation("none", reason="not started")
        self.idle_exit = idle_exit
        self.watch_pid = watch_pid
        self.keep_ended = keep_ended
        self.subreaper = subreaper
        self._table = ProcessTable()
        self._spawner: Spawner | None = None
        self._exited = asyncio.Event()
        self.vms: dict[str, VM] = {}
        self._ended: deque[str] = deque()
        self._lock: IO[bytes] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._socket: Path | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._subscribers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups = concurrency.Cleanups(CLEANUP_TIMEOUT, log)
        self._doomed: list[VM] = []
        self._acquiring: dict[str, asyncio.Event] = {}
        self._reap = asyncio.Event()
        self._making = asyncio.Semaphore(MAKING_AT_ONCE)
        self._idle_since = time.monotonic()
        self.stopped = asyncio.Event()
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Take the directory's lock and listen on the control socket.

        Raises:
            CloudRunning: another cloud holds the lock.
            NoSuccess: the directory or socket cannot be made.
        """
        self._lock, self._socket = await asyncio.to_thread(self._claim)
        try:
            self.isolation = await asyncio.to_thread(choose, self._isolation_asked)
            if self.isolation.on and not self.isolation.user_namespace:
                await self._start_spawner()
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self._socket), limit=LINE_LIMIT
            )
            await asyncio.to_thread(self._announce)
        except BaseException:
            await self._release()
            raise
        self._spawn(self._reaper(), "reaper")
        if self.subreaper:
            self._adopt()
        if self.idle_exit is not None:
            self._spawn(self._idle_watch(self.idle_exit), "idle watch")
        if self.watch_pid is not None:
            self._spawn(self._pid_watch(self.watch_pid), "pid watch")
        log.info("sim cloud %s listening on %s (pid %d)", self.directory, self._socket, os.getpid())
        log.info("sim cloud isolation: %s", self.isolation.describe())

    async def _start_spawner(self) -> None:
        """Start the fork server that makes this cloud's VMs and starts their commands."""
        spawner = Spawner()
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        await spawner.start(env, lambda coro, what: self._spawn(coro, what))
        assert spawner.pid is not None
        self._table.managed.add(spawner.pid)
        self._spawner = spawner

    def _claim(self) -> tuple[IO[bytes], Path]:
        private.private_dir(self.directory)
        private.private_dir(self.directory / "vms")
        lock = _lock(self.directory)
        if lock is None:
            raise CloudRunning(f"a sim cloud already serves {self.directory}")
        try:
            _wipe_unlocked(self.directory)
        except BaseException:
            lock.close()
            raise
        return lock, socket_path(self.directory)

    def _adopt(self) -> None:
        """Become the subreaper of VM processes and reap the orphans adopted."""
        if not become_subreaper():
            log.warning("sim cloud: cannot adopt orphans (no PR_SET_CHILD_SUBREAPER)")
            self.subreaper = False
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self._exited.set)
        # asyncio's wakeup descriptor reports a full buffer from the C signal handler by
        # a pending call, whose lock the interrupted main thread may hold: with
        # thousands of commands ending while the loop is busy, the cloud deadlocked
        # there. A full buffer already wakes the loop; a SIGCHLD it drops is caught by
        # the reaper's periodic scan (and one scan now, for a signal between the calls).
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)
        self._exited.set()
        self._spawn(self._reap_adopted(), "orphan reaper")

    async def _reap_adopted(self) -> None:
        me = os.getpid()
        while True:
            async with concurrency.move_on_after(REAP_SCAN):
                await self._exited.wait()
            await asyncio.sleep(0.05)  # one scan for a burst of exits
            self._exited.clear()
            self._reap_zombies(await asyncio.to_thread(adopted_zombies, me))

    def _reap_zombies(self, zombies: list[tuple[int, int]]) -> None:
        """Reap exited children that asyncio does not wait for (orphans adopted)."""
        for pid, sid in zombies:
            if pid in self._table.managed:
                continue  # a command's shell: asyncio reaps it
            if pid == sid and self._table.spawning:
                # Maybe a shell whose start has not returned yet: look again later.
                self._exited.set()
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _announce(self) -> None:
        assert self._socket is not None
        private.tighten(self._socket)
        private.private_file(self.directory / "cloud.pid", f"{os.getpid()}\n")

    async def __aenter__(self) -> Cloud:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve(self) -> None:
        """Run until :meth:`stop` (or a ``shutdown`` request) has finished."""
        await self.stopped.wait()

    async def stop(self) -> None:
        """End every VM (CANCELED), tear them all down, close clients, release the lock.

        Requests still being answered are cancelled; the cleanups they leave (removing
        what a cancelled acquire made) are waited for (bounded) before the lock goes.
        """
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        try:
            if self._server is not None:
                self._server.close()
            await self._stop_regions()
            vms = list(self.vms.values())
            for vm in vms:
                self._end(vm, S.CANCELED, "the cloud stopped")
            waits = [vm.gone.wait() for vm in vms if not vm.gone.is_set()]
            if waits:
                async with asyncio.timeout(60):
                    await asyncio.gather(*waits)
            if self.subreaper:
                # Whatever hid from every VM's teardown is still a descendant of ours.
                me = os.getpid()
                await asyncio.to_thread(kill_descendants, me)
                self._reap_zombies(await asyncio.to_thread(adopted_zombies, me))
        finally:
            try:
                for writer in list(self._clients):
                    writer.close()
                others = self._tasks - {asyncio.current_task()}
                for task in others:
                    task.cancel()
                if others:  # wait for the cancelled tasks to end (_spawn logs failures)
                    await asyncio.wait(others)
                await self._cleanups.drain(CLEANUP_TIMEOUT)
                await self._release()
            finally:
                # Whatever failed above, the process must be able to end.
                self.stopped.set()
                log.info("sim cloud %s stopped", self.directory)

    async def _stop_regions(self) -> None:
        """Stop the other processes serving this cloud's VMs (none here; see _regions)."""

    def live(self) -> int:
        """How many VMs have not ended."""
        return sum(not vm.state.final for vm in self.vms.values())

    def _busy(self) -> bool:
        """A client is connected or a VM lives (the idle exit waits)."""
        return bool(self._clients) or any(not vm.state.final for vm in self.vms.values())

    async def _release(self) -> None:
        if self._spawner is not None:
            spawner, self._spawner = self._spawner, None
            await spawner.close()
        if self.subreaper:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

        def remove() -> None:
            if self._socket is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._socket.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "cloud.pid").unlink()
            if self._lock is not None:
                self._lock.close()  # releases the flock

        await asyncio.to_thread(remove)
        self._lock = None

    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("sim cloud: %s failed", what, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    async def _idle_watch(self, idle_exit: float) -> None:
        while True:
            await asyncio.sleep(min(max(idle_exit / 4, 0.05), 30.0))
            if self._busy():
                self._idle_since = time.monotonic()
            elif time.monotonic() - self._idle_since >= idle_exit:
                log.info("sim cloud idle for %.0f s: stopping", idle_exit)
                self._spawn(self.stop(), "stop")
                return

    async def _pid_watch(self, pid: int) -> None:
        await _ended(pid)
        log.info("sim cloud: process %d has ended: stopping", pid)
        self._spawn(self.stop(), "stop")

    # -- VM lifecycles ----------------------------------------------------------------
    def _changed(self, vm: VM) -> None:
        if not self._subscribers:
            return
        self._broadcast(encode({"event": "vm", "vm": vm.to_json()}))

    def _end(self, vm: VM, state: S, detail: str) -> asyncio.Event:
        """Move ``vm`` to a final state and queue its teardown; returns its ``gone`` event."""
        if vm.state.final:
            return vm.gone
        current = asyncio.current_task()
        for task in list(vm.tasks):
            if task is not current:
                task.cancel()
        # Off the network before the end is announced: whoever hears of it finds the
        # port closed.
        vm.close_server()
        vm.kill_processes()
        vm.set_state(state, detail)
        self._doomed.append(vm)
        self._reap.set()
        self._ended.append(vm.id)
        return vm.gone

    def _forget_ended(self) -> None:
        """Drop the oldest ended records beyond ``keep_ended``, once they are torn down.

        A record whose teardown is not finished stays: stop and destroy wait on it.
        """
        while len(self._ended) > self.keep_ended:
            vm = self.vms.get(self._ended[0])
            if vm is not None and not vm.gone.is_set():
                return
            self.vms.pop(self._ended.popleft(), None)

    async def _reaper(self) -> None:
        """Tear ended VMs down in batches: one /proc scan for many VMs."""
        while True:
            await self._reap.wait()
            self._reap.clear()
            batch, self._doomed = self._doomed, []
            if not batch:
                continue
            owners = [Owner(vm.id, vm.disk, frozenset(vm.sessions)) for vm in batch]
            await self._end_holders(batch)
            root = os.getpid() if self.subreaper else None
            try:
                await asyncio.to_thread(_wipe, owners, root)
            finally:
                for vm in batch:
                    vm.gone.set()
                self._forget_ended()

    async def _end_holders(self, batch: list[VM]) -> None:
        """Wait (bounded) for the killed holders of ended VMs: their machines are gone."""
        holders = [vm.holder for vm in batch if vm.holder is not None]
        for holder in holders:
            holder.kill()
        if holders:
            # Bounded, never raised: the reaper tears down every later VM too.
            async with concurrency.move_on_after(CLEANUP_TIMEOUT) as waited:
                await asyncio.gather(*(h.wait() for h in holders))
            if waited.expired:
                log.warning(
                    "sim cloud: a machine of %d VMs ended is still there %.0f s after"
                    " SIGKILL (PID 1s %s)",
                    len(holders),
                    CLEANUP_TIMEOUT,
                    " ".join(str(h.init) for h in holders),
                )
        for holder in holders:
            if holder.process is not None:
                self._table.managed.discard(holder.process.pid)

    async def _boot(self, vm: VM) -> bool:
        """Make the VM's machine (isolation on); False if it failed to (the VM ended)."""
        if not self.isolation.on:
            return True
        try:
            async with self._making:
                if vm.state.final:  # ended while it waited its turn
                    return False
                self._table.spawning += 1
                try:
                    if self._spawner is not None:
                        holder = await start_machine(vm.id, vm.disk, self._spawner, self.shared)
                    else:
                        holder = await start_holder(vm.id, vm.disk, self.isolation, self.shared)
                finally:
                    self._table.spawning -= 1
        except NoSuccess as exc:
            log.warning("sim cloud: %s", exc)
            self._end(vm, S.FAILED, str(exc))
            return False
        if holder.process is not None:
            self._table.managed.add(holder.process.pid)
        vm.holder = holder
        if vm.state.final:  # ended meanwhile: its teardown may have missed the holder
            holder.kill()
            return False
        return True

    async def _life(self, vm: VM) -> None:
        faults = vm.spec.faults
        await asyncio.sleep(faults.boot_delay.draw(vm.rng))
        if vm.rng.random() < faults.boot_failure:
            self._end(vm, S.FAILED, "boot failed (injected fault)")
            return
        if not await self._boot(vm):
            return
        impostor = None
        if vm.rng.random() < faults.wrong_host_key:
            impostor = asyncssh.generate_private_key("ssh-ed25519")
        try:
            await vm.listen(impostor)
        except Exception as exc:  # its port, its keys: the VM cannot come up
            log.warning("sim cloud: the SSH server of %s did not start: %r", vm.id, exc)
            self._end(vm, S.FAILED, f"its SSH server did not start: {exc}")
            return
        if not vm.set_state(S.ACTIVE, "running"):
            return
        timeline: list[tuple[float, str]] = []
        if faults.die_after is not None:
            timeline.append((faults.die_after, "die"))
        if faults.preempt_after is not None:
            timeline.append((faults.preempt_after, "notice"))
            timeline.append((faults.preempt_after + faults.preempt_notice, "preempt"))
        if faults.revoke is not None:
            timeline.append((faults.revoke, "revoke"))
        elapsed = 0.0
        for at, what in sorted(timeline):
            await asyncio.sleep(max(0.0, at - elapsed))
            elapsed = at
            if what == "die":
                self._end(vm, S.FAILED, "the VM died (injected fault)")
                return
            if what == "revoke":
                self._revoke(vm, faults.revoke_wait)
                continue
            if what == "notice":
                notice = faults.preempt_notice
                if vm.set_state(
                    S.ACTIVE,
                    "preempting",
                    preempt_at=time.time() + notice,
                    preempt_notice=notice,
                ):
                    vm.tasks.add(self._spawn(self._count_down(vm), f"countdown of {vm.id}"))
            else:
                self._end(vm, S.EXPIRED, "preempted")
                return

    async def _count_down(self, vm: VM) -> None:
        """Tell subscribers the VM's record every few moments of a preemption notice.

        Its ``extra["preempt_in"]`` shrinks all along, as a cloud's metadata would
        say; whoever follows the VM's changes sees a fresh countdown without asking.
        Ends when the VM does (its tasks are cancelled then).
        """
        step = countdown_step(vm.spec.faults.preempt_notice)
        while not vm.state.final:
            await asyncio.sleep(step)
            if not vm.state.final:
                self._changed(vm)

    # -- the control socket -----------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        self._idle_since = time.monotonic()
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    writer.write(encode_error(None, BadParameter(f"bad request line: {exc}")))
                    continue
                self._spawn(self._answer(message, writer), f"request {message.get('op')!r}")
        except (ConnectionError, ValueError) as exc:  # ValueError: a line over the limit
            log.warning("sim cloud: dropping a client: %r", exc)
        finally:
            self._clients.discard(writer)
            self._subscribers.discard(writer)
            self._idle_since = time.monotonic()
            writer.close()

    async def _answer(self, message: Mapping[str, Any], writer: asyncio.StreamWriter) -> None:
        request_id = message.get("id")
        op = message.get("op")
        args = message.get("args") or {}
        handler: Callable[[Mapping[str, Any]], Awaitable[Any]] | None = getattr(
            self, f"op_{op}", None
        )
        try:
            if handler is None or not isinstance(op, str) or not isinstance(args, dict):
                raise BadParameter(f"the sim cloud has no operation {op!r}")
            if op == "subscribe":
                self._subscribers.add(writer)
            result = await handler(args)
            line = encode({"id": request_id, "ok": True, "result": result})
        except AioresError as exc:
            line = encode_error(request_id, exc)
        except Exception as exc:
            log.exception("sim cloud: %s failed", op)
            line = encode_error(request_id, NoSuccess(f"the sim cloud failed: {exc!r}"))
        if not writer.is_closing():
            writer.write(line)
        if op == "shutdown":
            self._spawn(self.stop(), "stop")

    # -- operations (op_<name>: args -> JSON result) ----------------------------------
    async def op_hello(self, args: Mapping[str, Any]) -> Any:
        return {
            "version": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "vms": self.live(),
            "isolation": self.isolation.mode,
            "isolation_detail": self.isolation.describe(),
            "shared": list(self.shared) if self.isolation.on else [],
        }

    async def op_subscribe(self, args: Mapping[str, Any]) -> Any:
        return None

    async def op_acquire(self, args: Mapping[str, Any]) -> Any:
        if self._stopping:
            raise IncorrectState("the sim cloud is stopping")
        count = validate.count(args.get("count"), "count", max=MAX_COUNT)
        args = self._place(args, count)  # addresses on its network (see _networks)
        spec = _spec(args)
        first = validate.count(args.get("first_index", 0), "first_index", min=0)
        # Until its VMs are registered, a find() for this token waits (the client may
        # have given up on this acquire and be cleaning up after it).
        done = self._acquiring.setdefault(spec.token, asyncio.Event())
        try:
            return await self._make(spec, count, first)
        finally:
            self._acquiring.pop(spec.token, None)
            done.set()

    async def _make(self, spec: VMSpec, count: int, first: int = 0) -> list[dict[str, Any]]:
        """Make ``count`` VMs of ``spec`` here (the ``first``-th of their acquire on)."""
        seed = spec.faults.seed
        ids = [self._new_id() for _ in range(count)]
        specs = [spec.placed(first + k) for k in range(count)]
        made = await self._prepare(list(zip(specs, ids, strict=True)))
        if self._stopping:
            await asyncio.to_thread(_discard, made)
            raise IncorrectState("the sim cloud is stopping")
        vms = []
        for index, (item, vm_spec) in enumerate(zip(made, specs, strict=True), start=first):
            rng = random.Random(f"{seed}:{index}") if seed is not None else random.Random()
            vm = VM(
                item.id,
                vm_spec,
                item.disk,
                item.port,
                item.host_key,
                item.sock,
                self._changed,
                rng,
                table=self._table,
                isolation=self.isolation,
                spawner=self._spawner,
            )
            self.vms[vm.id] = vm
            vms.append(vm)
        for vm in vms:
            vm.tasks.add(self._spawn(self._life(vm), f"life of {vm.id}"))
            if spec.duration is not None:
                self._lease(vm, spec.duration)
            self._changed(vm)
        return [vm.to_json() for vm in vms]

    async def _prepare(self, specs: list[tuple[VMSpec, str]]) -> list[Prepared]:
        """Make VMs' disks, host keys and ports in a thread.

        The thread cannot be stopped: if cancelled (the cloud is stopping), removing
        what it made once it ends is one of the cloud's cleanups, which :meth:`stop`
        waits for (bounded by :data:`CLEANUP_TIMEOUT`). Should that be cut short, what
        it made is removed when the thread ends.
        """
        return await self._cleanups.to_thread(
            prepare,
            self.directory / "vms",
            specs,
            dispose=_discard,
            what="sim cloud: discarding a cancelled acquire's VMs",
        )

    def _new_id(self) -> str:
        while True:
            vm_id = "vm-" + secrets.token_hex(5)
            if vm_id not in self.vms:
                return vm_id

    async def op_describe(self, args: Mapping[str, Any]) -> Any:
        ids = _str_list(args, "ids")
        return {i: self.vms[i].to_json() for i in ids if i in self.vms}

    async def op_find(self, args: Mapping[str, Any]) -> Any:
        token = args.get("token")
        pending = self._acquiring.get(str(token))
        if pending is not None:
            await pending.wait()
        return [
            vm.to_json()
            for vm in self.vms.values()
            if vm.spec.token == token and not vm.state.final
        ]

    async def op_list(self, args: Mapping[str, Any]) -> Any:
        tags = set(_str_list(args, "tags"))
        return [
            vm.to_json() for vm in self.vms.values() if not vm.state.final and tags <= vm.spec.tags
        ]

    async def op_destroy(self, args: Mapping[str, Any]) -> Any:
        ids = _str_list(args, "ids")
        waits = [
            self._end(self.vms[i], S.CANCELED, "terminated").wait() for i in ids if i in self.vms
        ]
        if waits:
            await asyncio.gather(*waits)
        return None

    async def op_templates(self, args: Mapping[str, Any]) -> Any:
        return [{"name": t.name, "cpus": t.cpus, "memory": t.memory} for t in TEMPLATES]

    async def op_images(self, args: Mapping[str, Any]) -> Any:
        return [{"name": i.name, "description": i.description} for i in IMAGES]

    async def op_rekey(self, args: Mapping[str, Any]) -> Any:
        """Fault injection: the VM answers with a new host key (not the published one)."""
        vm = self.vms.get(str(args.get("id")))
        if vm is None:
            raise DoesNotExist(f"the sim cloud has no VM {args.get('id')!r}")
        if vm.state is not S.ACTIVE:
            raise IncorrectState(f"VM {vm.id} is {vm.state.name}, not ACTIVE")
        key = asyncssh.generate_private_key("ssh-ed25519")
        vm.close_server()
        await vm.listen(key)
        return {"host_key": key.export_public_key().decode().strip()}

    async def op_shutdown(self, args: Mapping[str, Any]) -> Any:
        return {"pid": os.getpid()}


async def _ended(pid: int) -> None:
    """Return once the process ``pid`` has ended (at once if there is none)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):  # no pidfd here: ask now and then
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass  # alive, someone else's
            await asyncio.sleep(1.0)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)  # a pidfd is readable once its process ends
    try:
        await readable.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _discard(made: list[Prepared]) -> None:
    """Blocking: let go of prepared VMs' ports and remove their disks."""
    for item in made:
        item.sock.close()
        shutil.rmtree(item.disk, ignore_errors=True)


def _lock(directory: Path) -> IO[bytes] | None:
    """Blocking: the directory's cloud lock, taken; None if a cloud holds it."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(directory / "cloud.lock", flags, 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)  # one made laxer by an older version
    lock = open(fd, "ab")  # noqa: SIM115 (held by the caller)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def is_locked(directory: Path) -> bool:
    """Blocking: True while a cloud holds ``directory`` (starting, serving or stopping)."""
    if not (directory / "cloud.lock").exists():
        return False
    lock = _lock(directory)
    if lock is None:
        return True
    lock.close()
    return False


def wipe_stale(directory: Path) -> bool | None:
    """Blocking: remove what a cloud that crashed in ``directory`` left behind.

    Under the directory's lock, as a starting cloud does: its VMs' processes are
    killed (found by environment and working directory), their disks removed, its
    pid file and control socket too. Returns None if a cloud holds the lock (it runs,
    or is starting or stopping), else whether anything was left.
    """
    if not (directory / "cloud.lock").exists():
        return False  # no cloud ever ran here
    lock = _lock(directory)
    if lock is None:
        return None
    with lock:
        return _wipe_unlocked(directory)


def _wipe_unlocked(directory: Path) -> bool:
    """Blocking: :func:`wipe_stale` for a caller that holds the lock."""
    path = socket_path(directory)
    left = False
    for stale_file in (path, directory / "cloud.pid"):
        with contextlib.suppress(FileNotFoundError):
            stale_file.unlink()
            left = True
    # What a crashed cloud left behind belongs to no VM any more.
    with contextlib.suppress(FileNotFoundError):
        stale = list((directory / "vms").iterdir())
        if stale:
            left = True
            _wipe([Owner(disk.name, disk) for disk in stale], None)
    # Its regions (the processes serving its VMs beyond the first's share) end with
    # it; one that crashed too left its own directory to wipe.
    with contextlib.suppress(FileNotFoundError):
        for region in (directory / REGIONS).iterdir():
            if wipe_stale(region) is not None:
                left = True
                shutil.rmtree(region, ignore_errors=True)
    return left


def _wipe(owners: list[Owner], root: int | None) -> None:
    """Blocking: kill the VMs' processes (descendants of ``root`` only), remove their disks."""
    kill(owners, root=root)
    for owner in owners:
        # An overlay leaves its work directory unreadable (mode 0): not even its
        # owner could remove it without root.
        with contextlib.suppress(OSError):
            os.chmod(owner.disk / ".sim" / "work" / "work", 0o700)
        shutil.rmtree(owner.disk, ignore_errors=True)


def _str_list(args: Mapping[str, Any], name: str) -> list[str]:
    value = args.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f"{name} must be a list of str")
    return value


def _spec(args: Mapping[str, Any]) -> VMSpec:
    from aiores.adaptor import Image

    image_name = args.get("image") or "sim-linux"
    image = next((i for i in IMAGES if i.name == image_name), None)
    if image is None:
        known = ", ".join(i.name for i in IMAGES)
        raise DoesNotExist(f"sim:// has no image {image_name!r}; it has: {known}")
    assert isinstance(image, Image)
    template = choose_template(args.get("template"), args.get("cpus"), args.get("memory"))
    keys = args.get("authorized_keys")
    if not isinstance(keys, str) or not keys.strip():
        raise BadParameter("acquire needs the client's public keys (authorized_keys)")
    try:
        asyncssh.import_authorized_keys(keys)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise BadParameter(f"the client's public keys cannot be read: {exc}") from None
    user = args.get("user")
    if not isinstance(user, str) or not user or "@" in user or "/" in user:
        raise BadParameter(f"a login name must be a plain non-empty str, not {user!r}")
    duration = args.get("duration")
    if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
        raise BadParameter(f"duration must be positive seconds, not {duration!r}")
    tags = args.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadParameter("tags must be a list of str")
    user_data = args.get("user_data")
    network = args.get("network")
    addresses = args.get("addresses") or []
    if not isinstance(addresses, list) or not all(
        isinstance(a, str) and a.startswith("127.") for a in addresses
    ):
        raise BadParameter("addresses must be a list of addresses in 127.0.0.0/8")
    return VMSpec(
        token=str(args.get("token") or ""),
        user=user,
        template=template,
        image=image,
        tags=frozenset(tags),
        duration=float(duration) if duration is not None else None,
        user_data=user_data if isinstance(user_data, str) else None,
        authorized_keys=keys,
        faults=Faults.from_json(args.get("faults") or {}),
        network=str(network) if network is not None else None,
        addresses=tuple(addresses),
        address=LOOPBACK,
    )
