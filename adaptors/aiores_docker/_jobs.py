"""Container jobs: the ``docker://`` job service.

A job is one container. Its image is the description's ``category`` (DRMAA2's job
category names the container image, as DRMAA2's Go implementation, drmaa2os, does
for its Docker tracker), else the URL's ``?image=``. The container runs
``executable`` with ``arguments`` as its entry point and command: no shell, and the
image's own entry point and command are not used. ``environment``,
``working_directory``, ``cores`` (times ``processes``) as a CPU quota and
``memory`` (MiB) as a memory limit are the container's.

States: ``submit(hold=True)`` creates the container without starting it (HELD);
``release`` starts it; ``suspend``/``resume`` pause and unpause it; ``cancel`` sends
SIGTERM to its main process and SIGKILL after the grace period (``?grace=``, default
5 s; a process that is PID 1 without a SIGTERM handler ignores SIGTERM); ``reap``
removes the container. Nothing polls: the daemon's event stream says when a container
starts, pauses, unpauses and ends (one stream per daemon and session, shared with the
machines of :mod:`._machines`), and one listing after each (re)connect catches what
changed while it was down.

Output: Docker keeps what the container writes; when it ends, its log is read
(demultiplexed into stdout and stderr, each cut at ``capture_limit``) onto
``job.stdout``/``job.stderr``. A stream the description names a file for
(``stdout=``/``stderr=``) is written whole to that file *on the machine of the
program that sees the job end* (the container's own file system goes when it is
reaped), and is not captured.

Found again: every container carries the labels ``aiores=1``, ``aiores.kind=job``,
``aiores.session``, ``aiores.token`` (the submit's idempotency token) and what a
later program needs (held, capture limit, output files), so :meth:`find` by token,
``describe`` of an id this program did not submit, and :meth:`list` work from any
program that reaches the daemon.

Standard input (``stdin``) is written through an attachment to the container made
before it starts (the container is created with ``OpenStdin``/``StdinOnce``): the
program reads it, then its end. A held job's input is written when it is released
by the program that submitted it (input is never stored anywhere else).

Not supported: ``queue`` and ``project`` (NotSupported).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiores import (
    AioresError,
    BadParameter,
    DoesNotExist,
    IncorrectState,
    JobDescription,
    JobState,
    NotSupported,
    PermissionDenied,
)
from aiores.adaptor import URL, AdaptorEnv, JobAdaptor, JobInfo, concurrency, missing

from ._daemon import LABEL, Daemon, Listener, Output, label_filter
from ._options import (
    exit_detail,
    job_state,
    label,
    labels_of,
    listed_exit_code,
    parse_options,
)

__all__ = ["DockerJobAdaptor"]

log = logging.getLogger("aiores.docker")

_ID = re.compile(r"[0-9a-f]{64}")
_STARTING = (JobState.HELD, JobState.QUEUED)


class _Job:
    """What this adaptor knows of one job container."""

    __slots__ = (
        "cancel_requested",
        "ending",
        "id",
        "image",
        "info",
        "kill_timer",
        "killed",
        "limit",
        "overtime",
        "paths",
        "stdin",
        "token",
        "walltime_timer",
    )

    def __init__(
        self, id: str, token: str, image: str, limit: int, paths: tuple[str | None, str | None]
    ) -> None:
        self.id = id
        self.token = token
        self.image = image
        self.limit = limit
        self.paths = paths
        self.stdin: bytes | None = None  # written when it starts (this program only)
        self.info = JobInfo(id=id, state=JobState.NEW, token=token)
        self.cancel_requested = False
        self.overtime = False
        self.killed = False
        self.ending = False  # its end is seen: its output is being read
        self.kill_timer: asyncio.TimerHandle | None = None
        self.walltime_timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> JobState:
        return self.info.state

    def set(
        self,
        state: JobState,
        detail: str,
        exit_code: int | None = None,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
    ) -> JobInfo:
        self.info = JobInfo(
            id=self.id,
            state=state,
            state_detail=detail,
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            token=self.token,
            extra={"container": self.id[:12], "image": self.image},
        )
        return self.info

    @classmethod
    def from_container(cls, container: Mapping[str, Any]) -> _Job:
        labels = labels_of(container)
        try:
            limit = int(labels.get("limit", ""))
        except ValueError:
            limit = 8 * 1024 * 1024
        image = str(container.get("Image") or (container.get("Config") or {}).get("Image", ""))
        paths = (labels.get("stdout") or None, labels.get("stderr") or None)
        return cls(str(container["Id"]), labels.get("token", ""), image, limit, paths)


def _start_error(exc: AioresError, desc: JobDescription, image: str) -> AioresError:
    text = str(exc).lower()
    what = f"cannot start {desc.executable!r} in a container of {image!r}"
    if "permission denied" in text:
        return PermissionDenied(f"{what}: {exc}")
    if "not found" in text or "no such file" in text:
        return DoesNotExist(f"{what}: the image has no such program or directory ({exc})")
    return type(exc)(f"{what}: {exc}")


class DockerJobAdaptor(JobAdaptor):
    """Runs jobs as containers of one Docker daemon (``docker://``).

    Args:
        url: ``docker://`` (the local daemon) or ``docker://host[:port]``, with
            options ``?image=NAME`` (for descriptions with no ``category``) and
            ``?grace=SECONDS``.
        env: The session's services.
    """

    supports_hold = True

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self.options = parse_options(url)
        self.daemon = Daemon.shared(env, url)
        self._jobs: dict[str, _Job] = {}
        self._submits = concurrency.InFlight[JobInfo]("aiores-docker submit")
        self._subscription: Listener = (self._on_event, self._on_listing)
        self._closed = False

    async def open(self) -> None:
        """Follow the daemon's events; returns once the stream is open.

        Raises:
            NoSuccess: the daemon does not answer (it says how to start it).
            PermissionDenied: the socket may not be opened by this user.
        """
        self.daemon.subscribe(self.env, self._subscription)
        await self.daemon.connected()

    # -- submit --------------------------------------------------------------------------
    def _image(self, desc: JobDescription) -> str:
        image = desc.category or self.options.image
        if not image:
            raise BadParameter(
                "JobDescription.category must name the container image of a docker:// job "
                "(DRMAA2's job category), or the URL must give one: docker://?image=NAME"
            )
        return image

    def _config(self, desc: JobDescription, token: str, hold: bool) -> dict[str, Any]:
        for name in ("queue", "project"):
            if getattr(desc, name) is not None:
                raise NotSupported(f"docker:// has no {name}s (JobDescription.{name})")
        labels = {
            LABEL: "1",
            label("kind"): "job",
            label("session"): self.env.session_id,
            label("token"): token,
            label("limit"): str(desc.capture_limit),
        }
        if hold:
            labels[label("hold")] = "1"
        for name in ("stdout", "stderr", "name"):
            value = getattr(desc, name)
            if value is not None:
                labels[label(name)] = value
        host: dict[str, Any] = {"Binds": list(self.options.volumes)} if self.options.volumes else {}
        if desc.cores is not None:
            host["NanoCpus"] = desc.cores * (desc.processes or 1) * 1_000_000_000
        if desc.memory is not None:
            host["Memory"] = desc.memory * 1024 * 1024
        config: dict[str, Any] = {
            "Image": self._image(desc),
            "Entrypoint": [desc.executable],
            "Cmd": list(desc.arguments),
            "Env": [f"{k}={v}" for k, v in desc.environment.items()],
            "Labels": labels,
            "HostConfig": host,
        }
        if desc.working_directory is not None:
            config["WorkingDir"] = desc.working_directory
        if desc.stdin is not None:
            config.update(OpenStdin=True, StdinOnce=True, AttachStdin=True)
        return config

    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        """Create the job's container and start it (or leave it created: HELD).

        Returns:
            RUNNING (or HELD); a job that ended at once is reported by the event stream.

        Raises:
            BadParameter: no image (``category`` or ``?image=``).
            NotSupported: ``stdin``, ``queue`` or ``project`` given.
            DoesNotExist: the image is not on the daemon (pull or build it first), or
                it has no such executable.
            PermissionDenied: the executable cannot be run, or the socket not opened.
            NoSuccess: the daemon does not answer, or failed otherwise.
            IncorrectState: the adaptor is closed.

        Cancelling it leaves the request running: :meth:`find` waits for it and
        removes what it made (the core's cleanup of a cancelled submit calls it).
        """
        self._check_open()
        config = self._config(description, token, hold)
        return await self._submits.run(token, self._create(config, description, token, hold))

    async def _create(
        self, config: dict[str, Any], desc: JobDescription, token: str, hold: bool
    ) -> JobInfo:
        image = config["Image"]
        try:
            made = await self.daemon.json(
                f"creating a container of {image!r}", "containers/create", "POST", body=config
            )
        except DoesNotExist as exc:
            raise DoesNotExist(
                f"image {image!r} is not on the Docker daemon at {self.daemon.address}: pull "
                f"or build it first (docker pull {image}), or name another in "
                "JobDescription.category"
            ) from exc
        job = _Job(str(made["Id"]), token, image, desc.capture_limit, (desc.stdout, desc.stderr))
        job.stdin = desc.stdin_bytes
        self._jobs[job.id] = job
        if hold:
            return job.set(JobState.HELD, "held: container created, not started")
        job.set(JobState.QUEUED, "container created")
        try:
            await self._start(job)
        except AioresError as exc:
            self._jobs.pop(job.id, None)
            await self._remove_quietly(job.id)
            raise _start_error(exc, desc, image) from exc
        if desc.walltime is not None:
            loop = asyncio.get_running_loop()
            job.walltime_timer = loop.call_later(desc.walltime, self._walltime_expired, job)
        if job.state in _STARTING:
            job.set(JobState.RUNNING, "running")
        return job.info

    async def _start(self, job: _Job) -> None:
        async def start() -> None:
            await self.daemon.call(
                f"starting container {job.id[:12]}", f"containers/{job.id}/start"
            )

        if job.stdin is None:
            await start()
        else:
            await self.daemon.feed(job.id, job.stdin, start)
            job.stdin = None

    async def _remove_quietly(self, id: str) -> None:
        with contextlib.suppress(DoesNotExist):
            await self.daemon.call(
                f"removing container {id[:12]}",
                f"containers/{id}",
                "DELETE",
                params={"force": "1"},
            )

    def _check_open(self) -> None:
        if self._closed:
            raise IncorrectState(f"{self.url} job service is closed")

    # -- what the daemon says ------------------------------------------------------------
    def _on_event(self, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        job = self._jobs.get(str(event.get("id") or actor.get("ID") or ""))
        if job is None or job.state.final or job.ending:
            return
        action = str(event.get("Action") or event.get("status") or "")
        if action == "start" and job.state in _STARTING:
            self.publish(job.set(JobState.RUNNING, "running"))
        elif action == "pause" and job.state is JobState.RUNNING:
            self.publish(job.set(JobState.SUSPENDED, "paused"))
        elif action == "unpause" and job.state is JobState.SUSPENDED:
            self.publish(job.set(JobState.RUNNING, "running (unpaused)"))
        elif action == "die":
            code = (actor.get("Attributes") or {}).get("exitCode")
            self._ended(
                job, int(code) if code is not None and str(code).lstrip("-").isdigit() else None
            )
        elif action in ("destroy", "remove"):
            self._gone(job)

    def _on_listing(self, listing: Sequence[Mapping[str, Any]]) -> None:
        """The (re)connected stream's listing: catch up with what changed meanwhile."""
        by_id = {str(c.get("Id")): c for c in listing}
        for job in list(self._jobs.values()):
            if job.state.final or job.ending or job.state is JobState.NEW:
                continue
            container = by_id.get(job.id)
            if container is None:
                self._gone(job)
            else:
                self._take(job, container, live=True)

    def _take(self, job: _Job, container: Mapping[str, Any], *, live: bool) -> None:
        """Apply a listing entry to ``job`` (``live``: its end is news, read its output)."""
        status = str(container.get("State", ""))
        code = listed_exit_code(container)
        held = labels_of(container).get("hold") == "1"
        state = job_state(status, code, held)
        if state.final:
            if live:
                self._ended(job, code)
            return
        if state is not job.state and (job.state is JobState.NEW or job.state.can_become(state)):
            detail = {
                JobState.HELD: "held: container created, not started",
                JobState.QUEUED: "container created",
                JobState.SUSPENDED: "paused",
            }.get(state, status)
            self.publish(job.set(state, detail))

    def _gone(self, job: _Job) -> None:
        state = JobState.CANCELED if job.cancel_requested else JobState.FAILED
        self._finish(job, state, "its container was removed before it ended")

    def _ended(self, job: _Job, code: int | None) -> None:
        """The container ended: read its output, then publish the job's end."""
        job.ending = True
        self._cancel_timers(job)
        self.env.spawn(
            functools.partial(self._read_end, job, code), name=f"aiores-docker-end {job.id[:12]}"
        )

    async def _read_end(self, job: _Job, code: int | None) -> None:
        output: Output | None = None
        limits = tuple(None if path else job.limit for path in job.paths)
        try:
            if code is None:
                shown = await self.daemon.json(
                    f"inspecting container {job.id[:12]}", f"containers/{job.id}/json"
                )
                code = int(shown["State"]["ExitCode"])
            output = await self.daemon.output(job.id, (limits[0], limits[1]))
            await self._write_files(job, output)
        except AioresError as exc:
            log.warning("docker job %s: reading its end failed: %s", job.id[:12], exc)
        how = exit_detail(code)
        if job.cancel_requested:
            state, detail = JobState.CANCELED, f"canceled: {how}"
        elif job.overtime:
            state, detail = JobState.FAILED, f"walltime exceeded: {how}"
        else:
            state = JobState.DONE if code == 0 else JobState.FAILED
            detail = how
        stdout = None if output is None or job.paths[0] else output.stdout
        stderr = None if output is None or job.paths[1] else output.stderr
        self._finish(job, state, detail, code, stdout, stderr, force=True)

    async def _write_files(self, job: _Job, output: Output) -> None:
        writes = [
            (path, data)
            for path, data in zip(job.paths, (output.stdout, output.stderr), strict=True)
            if path
        ]
        if not writes:
            return
        try:
            for path, data in writes:
                await asyncio.to_thread(Path(path).write_bytes, data)
        except OSError as exc:
            log.warning("docker job %s: cannot write its output file: %s", job.id[:12], exc)

    def _finish(
        self,
        job: _Job,
        state: JobState,
        detail: str,
        exit_code: int | None = None,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
        *,
        force: bool = False,
    ) -> None:
        if job.state.final or (job.ending and not force):
            return
        self._cancel_timers(job)
        self.publish(job.set(state, detail, exit_code, stdout, stderr))

    def _cancel_timers(self, job: _Job) -> None:
        for timer in (job.kill_timer, job.walltime_timer):
            if timer is not None:
                timer.cancel()
        job.kill_timer = job.walltime_timer = None

    # -- found again ---------------------------------------------------------------------
    async def _adopt(self, containers: Sequence[Mapping[str, Any]], *, output: bool) -> None:
        """Know the job containers listed (submitted elsewhere) from now on."""
        ended: builtins.list[tuple[_Job, int | None]] = []
        for container in containers:
            if str(container.get("Id")) in self._jobs:
                continue
            job = _Job.from_container(container)
            self._jobs[job.id] = job
            self._take(job, container, live=False)
            status = str(container.get("State", ""))
            code = listed_exit_code(container)
            if job_state(status, code, False).final:
                job.set(job_state(status, code, False), exit_detail(code), code)
                if output:
                    ended.append((job, code))
        if ended:
            await concurrency.settle(self._read_output(job, code) for job, code in ended)

    async def _read_output(self, job: _Job, code: int | None) -> None:
        limits = (None if job.paths[0] else job.limit, None if job.paths[1] else job.limit)
        output = await self.daemon.output(job.id, limits)
        job.set(
            job.state,
            job.info.state_detail,
            code,
            None if job.paths[0] else output.stdout,
            None if job.paths[1] else output.stderr,
        )

    async def _look_up(self, ids: Sequence[str]) -> None:
        unknown = [i for i in ids if i not in self._jobs and _ID.fullmatch(i)]
        if not unknown:
            return
        await self.daemon.connected()  # events from now on reach what is adopted
        filters = label_filter(kind="job")
        listing = await self.daemon.containers("looking up jobs", filters)
        wanted = set(unknown)
        await self._adopt([c for c in listing if str(c.get("Id")) in wanted], output=True)

    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        """The current state of each id; unknown ids are left out.

        Ids this adaptor does not know are looked up among the daemon's job
        containers (submitted by another program): found, they are followed from
        then on, and an ended one comes with its output.
        """
        await self._look_up(ids)
        return {
            id: job.info
            for id in ids
            if (job := self._jobs.get(id)) is not None and job.state is not JobState.NEW
        }

    async def find(self, token: str) -> Sequence[JobInfo]:
        """Every job container made under ``token``, by any program.

        A submit of this adaptor still under way for ``token`` is waited for; if its
        caller was cancelled, its container is removed and it is returned CANCELED.
        """
        task = await self._submits.take(token)
        made = concurrency.result_of(task)
        if made is not None and (job := self._jobs.get(made.id)) is not None:
            job.cancel_requested = True
            await self._remove_quietly(job.id)
            self._finish(job, JobState.CANCELED, "canceled: its submit was cancelled", force=True)
        await self.daemon.connected()
        listing = await self.daemon.containers(
            "finding jobs", label_filter(kind="job", token=token)
        )
        await self._adopt(listing, output=False)
        ids = [str(c.get("Id")) for c in listing]
        if made is not None and made.id not in ids:
            ids.append(made.id)
        return [self._jobs[i].info for i in ids if i in self._jobs]

    async def list(self) -> Sequence[JobInfo]:
        """Every job container on the daemon (ended ones without their output)."""
        await self.daemon.connected()
        listing = await self.daemon.containers("listing jobs", label_filter(kind="job"))
        await self._adopt(listing, output=False)
        return [
            self._jobs[str(c.get("Id"))].info for c in listing if str(c.get("Id")) in self._jobs
        ]

    async def _known(self, id: str) -> _Job:
        await self._look_up([id])
        job = self._jobs.get(id)
        if job is None or job.state is JobState.NEW:
            raise missing("job", id, self.url)
        return job

    # -- control -------------------------------------------------------------------------
    async def cancel(self, id: str) -> None:
        """Stop the job: SIGTERM to its container, SIGKILL after the grace period.

        A job never started (HELD) is removed at once and ends CANCELED; a running one
        ends CANCELED when its container ends (this returns once SIGTERM is sent). A
        paused one is unpaused first (a frozen process cannot act on SIGTERM).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has already ended.
        """
        job = await self._known(id)
        if job.state.final or job.ending:
            raise IncorrectState(f"job {id} has already ended ({job.state}): nothing to cancel")
        job.cancel_requested = True
        if job.state in _STARTING:
            await self._remove_quietly(job.id)
            self._finish(job, JobState.CANCELED, "canceled before it started")
            return
        await self._terminate(job)

    async def _terminate(self, job: _Job) -> None:
        if job.kill_timer is not None or job.killed:
            return  # already terminating
        if job.state is JobState.SUSPENDED:
            await self._signal_quietly(job, None, "unpause")
        if self.options.grace == 0:
            job.killed = True
            await self._signal_quietly(job, "SIGKILL")
            return
        loop = asyncio.get_running_loop()
        job.kill_timer = loop.call_later(self.options.grace, self._kill_soon, job)
        await self._signal_quietly(job, "SIGTERM")

    async def _signal_quietly(self, job: _Job, signal: str | None, op: str = "kill") -> None:
        """Signal (or unpause) the container; one that has ended already is no error."""
        with contextlib.suppress(IncorrectState, DoesNotExist):
            await self.daemon.call(
                f"{op} container {job.id[:12]}",
                f"containers/{job.id}/{op}",
                params=None if signal is None else {"signal": signal},
            )

    def _kill_soon(self, job: _Job) -> None:
        job.kill_timer = None
        if job.state.final or job.ending:
            return
        job.killed = True
        self.env.spawn(
            functools.partial(self._signal_quietly, job, "SIGKILL"),
            name=f"aiores-docker-kill {job.id[:12]}",
        )

    def _walltime_expired(self, job: _Job) -> None:
        job.walltime_timer = None
        if job.state.final or job.ending or job.cancel_requested:
            return
        job.overtime = True
        self.env.spawn(
            functools.partial(self._terminate, job), name=f"aiores-docker-walltime {job.id[:12]}"
        )

    async def suspend(self, id: str) -> None:
        """Pause the running job's container (SUSPENDED).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not RUNNING.
        """
        await self._pause(id, "pause", JobState.RUNNING, JobState.SUSPENDED, "paused")

    async def resume(self, id: str) -> None:
        """Unpause the suspended job's container (RUNNING).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not SUSPENDED.
        """
        await self._pause(id, "unpause", JobState.SUSPENDED, JobState.RUNNING, "running (unpaused)")

    async def _pause(
        self, id: str, op: str, before: JobState, after: JobState, detail: str
    ) -> None:
        job = await self._known(id)
        if job.state is not before or job.ending:
            raise IncorrectState(f"cannot {op} job {id}: it is {job.state}, not {before}")
        try:
            await self.daemon.call(f"{op} container {job.id[:12]}", f"containers/{job.id}/{op}")
        except IncorrectState as exc:
            raise IncorrectState(f"cannot {op} job {id}: it has ended ({exc})") from exc
        if job.state is before and not job.ending:
            self.publish(job.set(after, detail))

    async def hold(self, id: str) -> None:
        """A HELD job stays held; any other cannot be held (suspend a running one).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not HELD.
        """
        job = await self._known(id)
        if job.state is not JobState.HELD:
            raise IncorrectState(
                f"cannot hold job {id}: it is {job.state}; docker:// holds only jobs submitted "
                "held (suspend a running job instead)"
            )

    async def release(self, id: str) -> None:
        """Start a HELD job's container (RUNNING).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job is not HELD.
        """
        job = await self._known(id)
        if job.state is JobState.QUEUED:
            return
        if job.state is not JobState.HELD:
            raise IncorrectState(f"cannot release job {id}: it is {job.state}, not HELD")
        await self._start(job)
        if job.state is JobState.HELD:
            self.publish(job.set(JobState.RUNNING, "running"))

    async def reap(self, id: str) -> None:
        """Remove an ended job's container (and with it Docker's copy of its output).

        Raises:
            DoesNotExist: no such job.
            IncorrectState: the job has not ended.
        """
        job = await self._known(id)
        if not job.state.final:
            raise IncorrectState(f"cannot reap job {id}: it is still {job.state}")
        await self._remove_quietly(job.id)
        self._jobs.pop(job.id, None)

    # -- lifetime ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop following; running containers run on. A cancel under way is finished
        with SIGKILL now (its grace period cut short)."""
        self._closed = True
        self.daemon.unsubscribe(self._subscription)
        kills = []
        for job in self._jobs.values():
            if job.kill_timer is not None:
                kills.append(self._signal_quietly(job, "SIGKILL"))
            self._cancel_timers(job)
        await concurrency.settle(kills)
        await self._submits.aclose()
