"""Groups of machines: run, put, get and copy_and_run on every member at once.

Every member's work runs concurrently, each in a task of its own that the fan-out
owns and awaits (nothing outlives the call). Concurrency is bounded by the SSH pool's
admission control (handshakes and channels per host and per session) and, per call,
by ``limit``. Each member's outcome becomes a :class:`~aiores.RunResult`, never
dropped: a member that could not run at all gets one with ``error`` set.

Members' tasks start at most :data:`_STARTS_PER_TURN` per loop iteration (a
:class:`~aiores.adaptor.concurrency.TurnGate`): each task's first step (finding its
adaptor, leasing a channel) costs the loop a tenth of a millisecond, and 2000 of them
in one iteration stalled every other task for a quarter of a second or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, overload

from . import _shell
from . import _validate as validate
from ._concurrency import TaskSet, TurnGate, fail_after
from ._exceptions import AioresError, BadParameter, DoesNotExist, Timeout
from ._results import GroupResult, RunResult
from ._url import URL, split_id

if TYPE_CHECKING:
    from ._resource import Compute
    from .adaptor import FileAdaptor

__all__ = ["Group"]

#: The remote side of copy_and_run: the script arrives on standard input and is
#: written to a fresh 0700 file, which is opened and removed BEFORE the script runs
#: (it runs from the open descriptor), so nothing is left behind however the run ends,
#: a KILL included. The script itself runs with the login's own umask.
_COPY_AND_RUN = (
    'm=$(umask); umask 077; f=$(mktemp "${TMPDIR:-/tmp}/aiores-script.XXXXXXXX") || exit 125\n'
    "trap 'rm -f \"$f\"' EXIT\n"
    "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM\n"
    'cat >"$f" && chmod 700 "$f" && exec 3<"$f" && rm -f "$f" && umask "$m" && /dev/fd/3'
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Members' tasks started per loop iteration by a fan-out.
_STARTS_PER_TURN = 16

Op = Callable[["Compute", "float | None"], Awaitable[RunResult]]
#: ``on_line(resource, stream, line)``: one line of a machine's output as it arrives.
OnLine = Callable[["Compute", str, str], None]


class Group(Sequence["Compute"]):
    """Machines to fan out to, in a stable order (``fleet.select(*tags)``, or by hand).

    A group may hold machines of several managers and clouds (and hosts added with
    ``fleet.add``): one call reaches them all. It is a sequence of its
    :class:`~aiores.Compute` resources.

    Args:
        resources: The machines (duplicates are dropped, the order is kept).

    Raises:
        BadParameter: something other than a Compute resource.
    """

    def __init__(self, resources: Iterable[Compute] = ()) -> None:
        from ._resource import Compute

        if isinstance(resources, str | bytes) or not isinstance(resources, Iterable):
            raise validate.fail("resources", "an iterable of Compute resources", resources)
        members: dict[int, Compute] = {}
        for resource in resources:
            if not isinstance(resource, Compute):
                raise BadParameter(f"a Group holds Compute resources, not {resource!r}")
            members.setdefault(id(resource), resource)
        self._resources = tuple(members.values())

    def __repr__(self) -> str:
        return f"<aiores.Group of {len(self._resources)}>"

    @overload
    def __getitem__(self, index: int) -> Compute: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Compute]: ...
    def __getitem__(self, index: int | slice) -> Compute | Sequence[Compute]:
        return self._resources[index]

    def __len__(self) -> int:
        return len(self._resources)

    def __iter__(self) -> Iterator[Compute]:
        return iter(self._resources)

    @property
    def resources(self) -> list[Compute]:
        """The machines, in the group's order."""
        return list(self._resources)

    @property
    def public_hostnames(self) -> list[str | None]:
        """Each machine's public address (else its access URL's host; None if unknown)."""
        return [r.public_address or _access_host(r) for r in self._resources]

    @property
    def private_hostnames(self) -> list[str | None]:
        """Each machine's private address (else its public one; None if unknown)."""
        return [r.private_address or r.public_address or _access_host(r) for r in self._resources]

    # -- run ----------------------------------------------------------------------------
    async def run(
        self,
        command: str | Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        limit: int | None = None,
        deadline: float | None = None,
        on_line: OnLine | None = None,
    ) -> GroupResult:
        """Run ``command`` on every machine at once; one result per machine.

        Args:
            command: A shell command (str), or a program and its arguments (a
                sequence, never interpreted by a shell).
            user: Log in as this user instead of the access URL's (same host).
            check: Raise :class:`~aiores.FanOutError` if any machine failed, once
                every machine has finished.
            timeout: Seconds each machine's run may take (connecting included);
                past it the command is stopped and the machine's result carries a
                :class:`~aiores.Timeout`.
            env: Environment variables for the command.
            limit: The most machines to run on at once (None: all; the SSH pool
                still bounds handshakes and channels).
            deadline: Seconds the whole fan-out may take; machines not done by then
                are stopped and get a :class:`~aiores.Timeout` result.
            on_line: Called on the event loop as output arrives, with the machine,
                ``"stdout"`` or ``"stderr"`` and one line of that stream (decoded as
                UTF-8, bad bytes replaced, without its newline); a last line with no
                newline comes when that machine's run ends (however it ends: a
                timeout, a cancellation too). Lines of one machine's stream come in
                order; machines interleave. It must not raise: an error it raises
                stops that machine's command and becomes its result's ``error``.
                The results still carry the whole output.

        Returns:
            One :class:`~aiores.RunResult` per machine, in the group's order.

        Raises:
            FanOutError: ``check`` and some machine failed (non-zero exit, signal,
                connection lost, timeout): one exception per failed machine, every
                result in its ``results``.
            BadParameter: a bad argument (nothing ran).

        Cancelling it stops the command on every machine (the ssh adaptor signals
        the remote process group), waits for that, and re-raises the cancellation.
        """
        op = self._run_op(command, user=user, env=env, on_line=on_line)
        return await self._collect(op, "command", check, limit, timeout, deadline)

    def run_stream(
        self,
        command: str | Sequence[str],
        *,
        user: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        limit: int | None = None,
        deadline: float | None = None,
        on_line: OnLine | None = None,
    ) -> AsyncGenerator[RunResult, None]:
        """Like :meth:`run`, yielding each machine's result as it completes.

        For progress displays and early decisions::

            async with contextlib.aclosing(group.run_stream("make test")) as results:
                async for result in results:
                    if not result.ok:
                        break  # the other machines' commands are stopped

        Nothing is raised for failed machines: each result says how it went. With
        ``on_line`` (as for :meth:`run`) lines come as they arrive, a machine's
        last ones before its result is yielded::

            def show(vm: Compute, stream: str, line: str) -> None:
                out = sys.stderr if stream == "stderr" else sys.stdout
                print(f"[{vm.native_id}] {line}", file=out)

            async with contextlib.aclosing(group.run_stream(cmd, on_line=show)) as results:
                async for result in results:
                    print(f"{result.resource.native_id}: exit {result.exit_status}")

        Raises:
            BadParameter: a bad argument (raised at once; nothing ran).

        Leaving the iteration early (``break``, an exception, cancellation) stops the
        commands still running once the iterator is closed: use
        :func:`contextlib.aclosing` to close it at once rather than when it is
        garbage collected.
        """
        op = self._run_op(command, user=user, env=env, on_line=on_line)
        return self._stream(op, "command", limit, timeout, deadline)

    # -- files ---------------------------------------------------------------------------
    async def put(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float | None = None,
        limit: int | None = None,
        deadline: float | None = None,
    ) -> GroupResult:
        """Copy a local file or directory tree to ``remote`` on every machine.

        A machine's result has ``exit_status`` 0 once its copy is complete.
        ``user``, ``check``, ``timeout``, ``limit`` and ``deadline`` are as for
        :meth:`run`.

        Raises:
            FanOutError: ``check`` and some copy failed (every result in ``results``).
            DoesNotExist: ``local`` does not exist (nothing was copied).

        Cancelling it stops every transfer (what was written so far stays) and
        re-raises the cancellation.
        """
        path = Path(validate.path(local, "local"))
        _check_path("remote", remote)
        self._check_login(user)
        _check_fan_out(check, limit, timeout, deadline)  # before looking at the disk
        if not await asyncio.to_thread(path.exists):
            raise DoesNotExist(f"cannot put {os.fspath(local)!r}: no such file or directory")

        async def op(resource: Compute, seconds: float | None) -> RunResult:
            files = await _files(resource, user)
            await _within(seconds, resource, "putting", files.put(path, remote))
            return RunResult(exit_status=0)

        return await self._collect(op, "put", check, limit, timeout, deadline)

    async def get(
        self,
        remote: str,
        local: str | os.PathLike[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float | None = None,
        limit: int | None = None,
        deadline: float | None = None,
    ) -> GroupResult:
        """Copy ``remote`` (a file or directory tree) from every machine.

        Into an existing directory ``local``, each machine's copy goes to
        ``local/<machine>/<name>``, whatever the number of machines (as Ansible's
        fetch does): ``<machine>`` is a filesystem-safe form of its id (``sim-vm-3``
        for ``[sim://]-[vm-3]``), ``<name>`` the last part of ``remote`` (a
        ``remote`` without one, such as ``.``, becomes ``local/<machine>`` itself).
        Otherwise, with one machine the copy goes to ``local``; with more, each
        goes to ``local`` suffixed with ``.`` and the machine's safe id.
        :meth:`local_path` says where. Other arguments are as for :meth:`run`.

        Raises:
            FanOutError: ``check`` and some copy failed (every result in ``results``).

        Cancelling it stops every transfer (partly written local files stay) and
        re-raises the cancellation.
        """
        _check_path("remote", remote)
        self._check_login(user)
        base = validate.path(local, "local")
        _check_fan_out(check, limit, timeout, deadline)  # before looking at the disk
        targets, into = await asyncio.to_thread(self._local_paths, base, remote)

        async def op(resource: Compute, seconds: float | None) -> RunResult:
            files = await _files(resource, user)
            target = targets[id(resource)]
            if into and target.parent != Path(base):  # local/<machine>/, made once asked
                await asyncio.to_thread(target.parent.mkdir, exist_ok=True)
            await _within(seconds, resource, "getting", files.get(remote, target))
            return RunResult(exit_status=0)

        return await self._collect(op, "get", check, limit, timeout, deadline)

    def local_path(
        self, local: str | os.PathLike[str], resource: Compute, remote: str | None = None
    ) -> Path:
        """Where :meth:`get` of ``remote`` to ``local`` puts ``resource``'s copy.

        It looks at the disk (is ``local`` a directory?): in a coroutine, call it
        through :func:`asyncio.to_thread`. Without ``remote``, in a directory, it
        is the machine's directory there.

        Raises:
            BadParameter: ``resource`` is not in the group.
        """
        paths, _ = self._local_paths(local, remote)
        if id(resource) not in paths:
            raise BadParameter(f"{resource!r} is not in {self!r}")
        return paths[id(resource)]

    def local_paths(self, local: str | os.PathLike[str], remote: str | None = None) -> list[Path]:
        """:meth:`local_path` of every machine, in the group's order (blocking likewise)."""
        paths, _ = self._local_paths(local, remote)
        return [paths[id(r)] for r in self._resources]

    def _local_paths(
        self, local: str | os.PathLike[str], remote: str | None
    ) -> tuple[dict[int, Path], bool]:
        """Blocking: each member's target, and whether they go into a directory."""
        base = Path(local)
        into = base.is_dir()
        if len(self._resources) == 1 and not into:
            return {id(self._resources[0]): base}, False
        suffixes = [_safe_suffix(r.id) for r in self._resources]
        if len(set(suffixes)) < len(suffixes):  # two ids alike once made safe
            suffixes = [_UNSAFE.sub("_", r.id).strip("_") for r in self._resources]
        if len(set(suffixes)) < len(suffixes):
            suffixes = [f"{s}.{i}" for i, s in enumerate(suffixes)]
        if not into:
            return {
                id(r): base.with_name(f"{base.name}.{s}")
                for r, s in zip(self._resources, suffixes, strict=True)
            }, False
        name = PurePosixPath(remote).name if remote is not None else ""
        return {
            id(r): base / s / name if name not in ("", ".", "..") else base / s
            for r, s in zip(self._resources, suffixes, strict=True)
        }, True

    # -- scripts -------------------------------------------------------------------------
    async def copy_and_run(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        limit: int | None = None,
        deadline: float | None = None,
        on_line: OnLine | None = None,
    ) -> GroupResult:
        """Copy the local file ``script`` to every machine, run it with ``args``, remove it.

        On each machine the script is written to a fresh file (mode 0700) in
        ``$TMPDIR`` (else ``/tmp``), run with its arguments quoted, and removed
        however the run ends (stopped by a timeout or cancellation, too). The
        script travels on the command's standard input, so it costs one channel
        per machine, not three; the script itself reads an empty standard input.
        Other arguments are as for :meth:`run`.

        Raises:
            FanOutError: ``check`` and some machine failed (every result in ``results``).
            DoesNotExist: ``script`` does not exist (nothing ran).
            BadParameter: ``args`` is not a sequence of str.

        Cancelling it stops the script on every machine and re-raises.
        """
        op = await self._script_op(script, args, user=user, env=env, on_line=on_line)
        return await self._collect(op, "script", check, limit, timeout, deadline)

    async def copy_and_run_stream(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        user: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        limit: int | None = None,
        deadline: float | None = None,
        on_line: OnLine | None = None,
    ) -> AsyncGenerator[RunResult, None]:
        """Like :meth:`copy_and_run`, yielding each machine's result as it completes.

        Stops as :meth:`run_stream` does; a bad argument or a missing script raises
        (BadParameter, DoesNotExist) at the first iteration.
        """
        op = await self._script_op(script, args, user=user, env=env, on_line=on_line)
        stream = self._stream(op, "script", limit, timeout, deadline)
        async with contextlib.aclosing(stream) as it:
            async for result in it:
                yield result

    async def _script_op(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str],
        *,
        user: str | None,
        env: Mapping[str, str] | None,
        on_line: OnLine | None,
    ) -> Op:
        args = validate.str_seq(args, "args")
        path = Path(validate.path(script, "script"))
        try:
            text = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise DoesNotExist(f"no script {os.fspath(script)!r}") from exc
        except OSError as exc:
            raise BadParameter(f"cannot read the script {os.fspath(script)!r}: {exc}") from exc
        command = _COPY_AND_RUN + "".join(" " + _shell.quote(a, "args") for a in args)
        return self._run_op(command, user=user, env=env, stdin=text, on_line=on_line)

    # -- the fan-out --------------------------------------------------------------------
    def _run_op(
        self,
        command: str | Sequence[str],
        *,
        user: str | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None = None,
        on_line: OnLine | None = None,
    ) -> Op:
        command, stdin, env, _ = validate.run_arguments(command, stdin, env, None)
        self._check_login(user)
        if on_line is not None and not callable(on_line):
            raise validate.fail("on_line", "a callable or None", on_line)

        # Checked once here for every machine: each runs them as they are (the
        # result's resource is set by _on_host).
        if on_line is None:

            def run(resource: Compute, seconds: float | None) -> Awaitable[RunResult]:
                # The run itself, no coroutine of its own around it.
                return resource._run_checked(command, stdin, env, seconds, user, None)

            return run

        async def op(resource: Compute, seconds: float | None) -> RunResult:
            assert on_line is not None
            lines = _Lines(resource, on_line)
            try:
                result = await resource._run_checked(command, stdin, env, seconds, user, lines)
            except BaseException:
                # What came stays shown; the run's own exception is what counts.
                with contextlib.suppress(Exception):
                    lines.flush()
                raise
            lines.flush()
            return result

        return op

    def _check_login(self, user: str | None) -> None:
        """Raise BadParameter at once for a ``user`` that is no login name (the rule
        of :meth:`Compute.access_as`); a member it cannot be asked of (not reachable)
        says so in its own result."""
        if user is None:
            return
        for resource in self._resources:
            try:
                resource.access_as(user)
            except BadParameter:
                raise
            except AioresError:
                continue  # no access URL: the rule is checked on the next one
            return

    async def _collect(
        self,
        op: Op,
        what: str,
        check: bool,
        limit: int | None,
        timeout: float | None,
        deadline: float | None,
    ) -> GroupResult:
        limit, timeout, deadline = _check_fan_out(check, limit, timeout, deadline)
        results: list[RunResult] = []
        if self._resources:
            # As _fan_out, with the results in the group's order as they come: leaving
            # early cancels what still runs and waits for it.
            async with TaskSet(what) as tasks:
                work = self._work(op, what, limit, timeout, deadline)
                await self._start_each(tasks, what, lambda _, r: work(r))
                results = await tasks.results()
        outcome = GroupResult(results, what)
        return outcome.check() if check else outcome

    def _stream(
        self,
        op: Op,
        what: str,
        limit: int | None,
        timeout: float | None,
        deadline: float | None,
    ) -> AsyncGenerator[RunResult, None]:
        limit, timeout, deadline = _check_fan_out(None, limit, timeout, deadline)
        return _results_only(self._fan_out(op, what, limit, timeout, deadline))

    async def _fan_out(
        self,
        op: Op,
        what: str,
        limit: int | None,
        timeout: float | None,
        deadline: float | None,
    ) -> AsyncGenerator[tuple[int, RunResult], None]:
        """Run ``op`` on every member; yield ``(index, result)`` as each completes.

        Closing the iterator early (or cancelling it) cancels what still runs and
        waits for it: a cancelled run stops its remote command before it ends.
        """
        if not self._resources:
            return

        async def one(index: int, work: Awaitable[RunResult]) -> tuple[int, RunResult]:
            return index, await work

        # Leaving early (the consumer stops, or is cancelled) cancels what still runs
        # and waits for it: each run stops its remote command when cancelled (bounded
        # by the adaptor's grace period); a second cancellation stops only this wait.
        async with TaskSet(what) as tasks:
            work = self._work(op, what, limit, timeout, deadline)
            await self._start_each(tasks, what, lambda i, r: one(i, work(r)))
            async for done in tasks.as_completed():
                yield done

    async def _start_each(
        self,
        tasks: TaskSet,
        what: str,
        make: Callable[[int, Compute], Coroutine[None, None, object]],
    ) -> None:
        """Start a task per member, at most ``_STARTS_PER_TURN`` per loop iteration;
        each coroutine is made just before its task starts."""
        starts = TurnGate(_STARTS_PER_TURN)
        for i, r in enumerate(self._resources):
            await starts.turn()
            tasks.spawn(make(i, r), name=f"aiores-{what} {r.id}")

    def _work(
        self,
        op: Op,
        what: str,
        limit: int | None,
        timeout: float | None,
        deadline: float | None,
    ) -> Callable[[Compute], Coroutine[None, None, RunResult]]:
        """What makes a member's whole result, a coroutine made just before its task
        starts (none is left unawaited when the fan-out is cancelled between starts);
        the deadline counts from this call."""
        loop = asyncio.get_running_loop()
        due = None if deadline is None else loop.time() + deadline
        gate = asyncio.Semaphore(limit) if limit is not None else None

        def work(r: Compute) -> Coroutine[None, None, RunResult]:
            return _on_host(r, op, gate, timeout, due, deadline, what)

        return work


async def _results_only(
    fan_out: AsyncGenerator[tuple[int, RunResult], None],
) -> AsyncGenerator[RunResult, None]:
    async with contextlib.aclosing(fan_out) as it:
        async for _, result in it:
            yield result


async def _on_host(
    resource: Compute,
    op: Op,
    gate: asyncio.Semaphore | None,
    timeout: float | None,
    due: float | None,
    deadline: float | None,
    what: str,
) -> RunResult:
    """One member's result, whatever happens (only cancellation propagates).

    ``started`` is when its work began (None if the deadline came while it waited
    for its turn under ``limit``).
    """
    loop = asyncio.get_running_loop()
    started: float | None = None
    t0 = 0.0

    def late() -> str:
        done = "was not done" if started is not None else "had not started"
        return (
            f"{resource.id}: the {what} {done} when the fan-out's deadline of "
            f"{deadline} s passed" + ("; it was stopped" if started is not None else "")
        )

    try:
        if due is None and gate is None:  # nothing to wait for, no deadline to keep
            started, t0 = time.time(), loop.time()
            result = await op(resource, timeout)
        else:
            async with (
                fail_after(None if due is None else due - loop.time(), late),
                gate or contextlib.nullcontext(),
            ):
                started, t0 = time.time(), loop.time()
                result = await op(resource, timeout)
    except TimeoutError as exc:  # the deadline's Timeout, or the run's own
        error = (
            exc if isinstance(exc, AioresError) else Timeout(f"{resource.id}: {exc or 'timed out'}")
        )
        result = RunResult(
            exit_status=None,
            stdout=getattr(exc, "stdout", ""),
            stderr=getattr(exc, "stderr", ""),
            error=error,
        )
    except Exception as exc:  # this member's failure is its result: never dropped
        result = RunResult(exit_status=None, error=exc)
    if started is None:  # it never began: no time of its own
        return _placed(result, resource, result.elapsed, result.started, time.time())
    elapsed = loop.time() - t0
    return _placed(result, resource, elapsed, started, started + elapsed)


def _placed(
    result: RunResult,
    resource: Compute,
    elapsed: float,
    started: float | None,
    finished: float | None,
) -> RunResult:
    """``result`` on ``resource``, with its times: ``dataclasses.replace`` without its
    look at the fields (every command of a fan-out passes here)."""
    return RunResult(
        exit_status=result.exit_status,
        stdout=result.stdout,
        stderr=result.stderr,
        exit_signal=result.exit_signal,
        resource=resource,
        error=result.error,
        elapsed=elapsed,
        started=started,
        finished=finished,
    )


async def _within(
    seconds: float | None, resource: Compute, doing: str, work: Awaitable[None]
) -> None:
    """Await ``work``; past ``seconds`` it is cancelled and :class:`Timeout` raised."""
    async with fail_after(
        seconds, f"{resource.id}: {doing} did not finish in {seconds} s; it was stopped"
    ):
        await work


async def _files(resource: Compute, user: str | None) -> FileAdaptor:
    session = resource.manager.session
    return await session.file_adaptor(resource.access_as(user))


class _Lines:
    """One machine's output, as lines for ``on_line`` (it is the run's ``on_output``).

    Chunks are split at newlines per stream; what follows the last newline waits
    for the next chunk of its stream, or for :meth:`flush` when the run ends.
    Splitting bytes before decoding is safe: no UTF-8 sequence holds a newline byte.
    """

    __slots__ = ("_on_line", "_partial", "_resource")

    def __init__(self, resource: Compute, on_line: OnLine) -> None:
        self._resource = resource
        self._on_line = on_line
        self._partial: dict[str, bytes] = {}

    def __call__(self, stream: str, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self._partial[stream] = self._partial.get(stream, b"") + chunk
            return
        *lines, rest = (self._partial.pop(stream, b"") + chunk).split(b"\n")
        if rest:
            self._partial[stream] = rest
        for line in lines:
            self._on_line(self._resource, stream, line.decode(errors="replace"))

    def flush(self) -> None:
        """Hand over the last line of each stream that ended with no newline."""
        partial, self._partial = self._partial, {}
        for stream, rest in partial.items():
            self._on_line(self._resource, stream, rest.decode(errors="replace"))


def _access_host(resource: Compute) -> str | None:
    if resource.access is None:
        return None
    return URL.parse(resource.access).host or None


def _safe_suffix(rid: str) -> str:
    """A filesystem-safe form of an aiores id: ``[sim://]-[vm-3]`` -> ``sim-vm-3``."""
    parts = split_id(rid)
    text = f"{URL.parse(parts[0]).scheme}-{parts[1]}" if parts else rid
    return _UNSAFE.sub("_", text).strip("_") or "resource"


def _check_path(name: str, value: object) -> None:
    validate.text(value, name)


def _check_fan_out(
    check: object, limit: int | None, timeout: float | None, deadline: float | None
) -> tuple[int | None, float | None, float | None]:
    """The checks of every fan-out (``check`` None where there is none), normalised."""
    if check is not None:
        validate.flag(check, "check")
    if limit is not None:
        validate.count(limit, "limit")
    return limit, validate.timeout(timeout, "timeout"), validate.timeout(deadline, "deadline")
