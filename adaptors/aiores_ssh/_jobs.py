"""Jobs over SSH: detached remote processes controlled through their job directory.

A job runs in its own process group (``setsid``), detached from the SSH channel that
started it, in a directory that holds its pid, exit code and output (see
:mod:`aiores_ssh._jobscripts`). Cancel, suspend and resume signal that group over any
channel, so they work after the submitting channel or client is gone, and
``describe([id])`` from a fresh adaptor reconnects to a job.

State is polled: the session's watcher calls :meth:`SSHJobAdaptor.describe` with
every watched job of the host, answered by one remote command. Changes this adaptor
makes itself (cancel, suspend, resume, release) are published at once.

A job submitted held waits, in its wrapper on the host, for
:meth:`SSHJobAdaptor.release`: being held lives in its directory, so another program
finds it HELD and can release or cancel it.

A submit that was cut off (cancelled, timed out, its connection lost) may leave its
command running on the host, still making the job: its stop is confirmed only when
the host showed the command gone (see :func:`aiores_ssh._runner.execute`). Until then
:meth:`SSHJobAdaptor.find` does not trust an empty answer for its token: it claims
the job's end in the directory the submit would make (the job id is chosen here),
so that job can never start its program, and reports it CANCELED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from aiores import DoesNotExist, IncorrectState, JobDescription, JobState, NoSuccess
from aiores.adaptor import (
    URL,
    AdaptorEnv,
    JobAdaptor,
    JobInfo,
    PollPolicy,
    missing,
    truncation_marker,
)

from ._base import SSHBase
from ._jobscripts import (
    FINISHED,
    MISSING,
    NOT_HELD,
    UNSTOPPED,
    cancel_script,
    claim_script,
    describe_script,
    find_script,
    reap_script,
    release_script,
    resume_script,
    submit_script,
    suspend_script,
)
from ._runner import Outcome, execute

__all__ = ["SSHJobAdaptor", "parse_describe"]

#: What an ssh job id may look like (it is spliced into remote scripts).
_ID = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


class SSHJobAdaptor(SSHBase, JobAdaptor):
    """Jobs on one ``ssh://`` endpoint.

    A job starts in the login directory unless ``working_directory`` names another;
    relative ``stdout``/``stderr`` paths are relative to where it starts. Submitted
    with ``hold=True``, a job is HELD until :meth:`release` (there is no queue: a job
    that has started cannot be held, suspend it instead). ``walltime``, ``queue``,
    ``project``, ``processes``, ``cores``, ``memory`` and ``category`` are ignored.
    """

    poll = PollPolicy(floor=0.5, ceiling=10.0, backoff=1.5, jitter=0.1, batch=500)
    supports_hold = True
    #: Seconds between TERM and KILL when a job is cancelled.
    cancel_grace: float = 5.0
    #: Seconds a control command (submit, describe, signal) may take.
    command_timeout: float = 60.0
    #: Bytes of captured output one describe command may carry (one job's always goes).
    output_budget: int = 16 * 1024 * 1024
    #: Bytes of delivered output kept to answer describes of finished jobs again.
    output_cache: int = 32 * 1024 * 1024

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        #: Output of finished jobs delivered so far, least recently used first.
        self._outputs: OrderedDict[str, tuple[bytes | None, bytes | None]] = OrderedDict()
        #: Submits cut off whose command was not (yet) seen to end, by token: the job
        #: id it was making, and whether its command ended (see :meth:`find`).
        self._unsure: dict[str, tuple[str, asyncio.Future[bool]]] = {}

    async def _sh(
        self,
        script: str,
        stdin: bytes | None = None,
        ended: asyncio.Future[bool] | None = None,
    ) -> Outcome:
        pool, target = self._endpoint()
        return await execute(
            pool, target, script, stdin=stdin, timeout=self.command_timeout, ended=ended
        )

    def _failed(self, what: str, outcome: Outcome) -> NoSuccess:
        detail = outcome.stderr.decode(errors="replace").strip()
        return NoSuccess(
            f"{what} on {self.target.where} failed (exit {outcome.exit_status}): {detail}"
        )

    async def submit(self, description: JobDescription, token: str, *, hold: bool) -> JobInfo:
        """Start the job detached on the remote host; returns it RUNNING, or HELD if
        ``hold`` (its program starts once the job is released: :meth:`release`).

        Raises:
            NoSuccess: the job directory could not be made or the job not started.
            ConnectionLost, Timeout, HostKeyError, AuthenticationFailed: transport errors.

        If cancelled (or cut off by an error), the job may or may not have started;
        :meth:`find` with ``token`` finds it, and does not answer "nothing" before
        the submit command is known to have ended.
        """
        job_id = uuid.uuid4().hex[:20]
        script, stdin = submit_script(
            job_id, token, description, description.stdin_bytes, hold=hold
        )
        ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._unsure[token] = (job_id, ended)
        ended.add_done_callback(lambda _: self._forget_if_ended(token, ended))
        outcome = await self._sh(script, stdin=stdin, ended=ended)
        pid = outcome.stdout.strip()
        if outcome.exit_status != 0 or not pid.isdigit():
            raise self._failed("submitting a job", outcome)
        state, detail = (
            (JobState.HELD, "held: waiting for release") if hold else (JobState.RUNNING, "running")
        )
        return JobInfo(
            id=job_id, state=state, state_detail=detail, token=token, extra={"pid": int(pid)}
        )

    def _forget_if_ended(self, token: str, ended: asyncio.Future[bool]) -> None:
        entry = self._unsure.get(token)
        if entry is not None and entry[1] is ended and ended.result():
            del self._unsure[token]

    async def describe(self, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        """The state of each job in ``ids``; unknown ids are left out.

        Finished jobs carry their captured output, cut at the description's
        ``capture_limit`` and then ending with :func:`aiores.adaptor.truncation_marker`.
        A job's output is fetched from the host once, when it is first seen
        finished, then answered from a cache of :attr:`output_cache` bytes (fetched
        again only once evicted). One remote command carries at most
        :attr:`output_budget` bytes of output (or one job's): what does not fit is
        fetched by further commands.

        Raises:
            ConnectionLost, Timeout, NoSuccess: the host could not be asked.
        """
        for job_id in ids:
            _check_id(job_id)
        infos: dict[str, JobInfo] = {}
        ask = list(dict.fromkeys(ids))
        while ask:
            want = [job_id for job_id in ask if job_id not in self._outputs]
            outcome = await self._sh(describe_script(ask, want, self.output_budget))
            if outcome.exit_status != 0:
                raise self._failed("describing jobs", outcome)
            found, again = parse_describe(outcome.stdout)
            for job_id, info in found.items():
                if job_id in again:
                    continue  # its output did not fit: the next command brings it
                if info.state.final:
                    if job_id in want:
                        self._keep_output(job_id, info)
                    elif (kept := self._outputs.get(job_id)) is not None:
                        self._outputs.move_to_end(job_id)
                        info = dataclasses.replace(info, stdout=kept[0], stderr=kept[1])
                    else:  # evicted since this command was made
                        again.add(job_id)
                        continue
                infos[job_id] = info
            ask = [job_id for job_id in ask if job_id in again]
        return infos

    def _keep_output(self, job_id: str, info: JobInfo) -> None:
        outputs = self._outputs
        outputs[job_id] = (info.stdout, info.stderr)
        outputs.move_to_end(job_id)
        size = sum(len(out or b"") + len(err or b"") for out, err in outputs.values())
        while size > self.output_cache and len(outputs) > 1:
            out, err = outputs.popitem(last=False)[1]
            size -= len(out or b"") + len(err or b"")

    async def find(self, token: str) -> Sequence[JobInfo]:
        """Every job on this host submitted under ``token``.

        For a submit of this adaptor that was cut off, it first waits (up to
        :attr:`command_timeout`) for the submit command to be seen ending; if it is
        not, the job that command was making is claimed cancelled (its directory
        made if need be), so it never starts its program, and found CANCELED.

        Raises:
            NoSuccess, ConnectionLost, Timeout: the host could not be asked, or the
                claim could not be made (the token stays unsure for another find).
        """
        unsure = self._unsure.get(token)
        if unsure is not None:
            job_id, ended = unsure
            # asyncio.wait: the future belongs to the submit's stop; leave it alone.
            await asyncio.wait({ended}, timeout=self.command_timeout)
            if not (ended.done() and ended.result()):
                await self._claim(job_id, token)
            self._unsure.pop(token, None)
        outcome = await self._sh(find_script(token))
        if outcome.exit_status != 0:
            raise self._failed("finding jobs", outcome)
        ids = outcome.stdout.decode().split()
        return list((await self.describe(ids)).values()) if ids else []

    async def list(self) -> Sequence[JobInfo]:
        """Every job aiores keeps a directory for on this host (without output)."""
        outcome = await self._sh(describe_script(None))
        if outcome.exit_status != 0:
            raise self._failed("listing jobs", outcome)
        return list(parse_describe(outcome.stdout)[0].values())

    async def _claim(self, job_id: str, token: str) -> None:
        outcome = await self._sh(claim_script(job_id, token, self.cancel_grace))
        if outcome.exit_status == UNSTOPPED:
            raise NoSuccess(f"job {job_id} on {self.target.where} still runs after SIGKILL")
        if outcome.exit_status not in (0, FINISHED):
            raise self._failed("claiming the job of a submit that was cut off", outcome)

    async def _control(self, job_id: str, script: str, what: str) -> Outcome:
        _check_id(job_id)
        outcome = await self._sh(script)
        if outcome.exit_status == MISSING:
            raise missing("job", job_id, self.url)
        if outcome.exit_status not in (0, FINISHED, UNSTOPPED, NOT_HELD):
            raise self._failed(what, outcome)
        return outcome

    async def cancel(self, id: str) -> None:
        """TERM the job's process group, KILL what is left after :attr:`cancel_grace`.

        Returns once the job has ended, or will never start its program: a job still
        starting up (its submit was cut off) is stopped, too. A job already finished
        is left as it is, also one that finishes while this runs: an exit code
        recorded before the cancel stands (the job is DONE or FAILED, not CANCELED).

        Raises:
            DoesNotExist: unknown id.
            NoSuccess: the job's process was still there after the KILL.

        Cancelling the call may leave the job TERMed but not KILLed.
        """
        outcome = await self._control(id, cancel_script(id, self.cancel_grace), "cancelling a job")
        if outcome.exit_status == UNSTOPPED:
            raise NoSuccess(f"job {id} on {self.target.where} still runs after SIGKILL")
        if outcome.exit_status == FINISHED:
            return  # it ended first: its own state stands
        info = (await self.describe([id])).get(id)
        if info is not None:
            self.publish(info)

    async def hold(self, id: str) -> None:
        """Keep a HELD job held (nothing to do); only a job submitted held can be.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not HELD (it was released or has started:
                suspend a running job instead).
        """
        _check_id(id)
        info = (await self.describe([id])).get(id)
        if info is None:
            raise missing("job", id, self.url)
        if info.state is not JobState.HELD:
            raise IncorrectState(
                f"cannot hold job {id} on {self.target.where}: it is {info.state}; only a "
                "job submitted held and not yet released is held (suspend a running job)"
            )

    async def release(self, id: str) -> None:
        """Let a HELD job start its program.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not HELD (never held, released already, or
                ended: a cancelled held job never starts).
        """
        outcome = await self._control(id, release_script(id), "releasing a job")
        if outcome.exit_status == NOT_HELD:
            raise IncorrectState(f"job {id} on {self.target.where} is not held")
        if outcome.exit_status == FINISHED:
            raise IncorrectState(f"job {id} on {self.target.where} has ended")
        self.publish(JobInfo(id=id, state=JobState.QUEUED, state_detail="released: starting"))

    async def suspend(self, id: str) -> None:
        """SIGSTOP the job's process group.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not running.
        """
        outcome = await self._control(id, suspend_script(id), "suspending a job")
        if outcome.exit_status == FINISHED:
            raise IncorrectState(f"job {id} on {self.target.where} is not running")
        self.publish(JobInfo(id=id, state=JobState.SUSPENDED, state_detail="stopped"))

    async def resume(self, id: str) -> None:
        """SIGCONT the job's process group.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is not running or suspended.
        """
        outcome = await self._control(id, resume_script(id), "resuming a job")
        if outcome.exit_status == FINISHED:
            raise IncorrectState(f"job {id} on {self.target.where} is not suspended")
        self.publish(JobInfo(id=id, state=JobState.RUNNING, state_detail="running"))

    async def reap(self, id: str) -> None:
        """Remove a finished job's directory from the host.

        Raises:
            DoesNotExist: unknown id.
            IncorrectState: the job is still running.
        """
        outcome = await self._control(id, reap_script(id), "reaping a job")
        if outcome.exit_status == FINISHED:
            raise IncorrectState(f"job {id} on {self.target.where} is still running")
        self._outputs.pop(id, None)


def _check_id(job_id: str) -> None:
    if not _ID.fullmatch(job_id):
        raise DoesNotExist(f"{job_id!r} is not an ssh job id")


def parse_describe(data: bytes) -> tuple[dict[str, JobInfo], set[str]]:
    """Read :func:`~aiores_ssh._jobscripts.describe_script` output: the jobs, and the
    ids of those whose output was left for another command."""
    infos: dict[str, JobInfo] = {}
    postponed: set[str] = set()
    pos = 0
    current: dict[str, object] | None = None

    def flush() -> None:
        if current is not None:
            info = _info(current)
            infos[info.id] = info

    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break
        fields = data[pos:end].decode(errors="replace").split(" ", 8)
        pos = end + 1
        if fields[0] == "J" and len(fields) == 9:
            flush()
            current = dict(
                zip(
                    ("id", "pid", "alive", "exit", "canceled", "suspended", "held", "token"),
                    fields[1:],
                    strict=True,
                )
            )
        elif fields[0] == "P" and current is not None:
            postponed.add(str(current["id"]))
        elif fields[0] == "O" and len(fields) == 4 and current is not None:
            size, sent = int(fields[2]), int(fields[3])
            chunk = data[pos : pos + sent]
            pos += sent
            if size > sent:
                chunk += truncation_marker(sent, size - sent)
            current[fields[1]] = chunk
    flush()
    return infos, postponed


def _info(fields: Mapping[str, object]) -> JobInfo:
    job_id = str(fields["id"])
    pid = str(fields["pid"])
    alive = fields["alive"] == "1"
    exit_text = str(fields["exit"])
    canceled = fields["canceled"] == "1"
    token = None if fields["token"] == "-" else str(fields["token"])
    exit_code = int(exit_text) if exit_text.lstrip("-").isdigit() else None
    stdout = fields.get("stdout")
    stderr = fields.get("stderr")
    if exit_code is not None or (not alive and pid != "-"):
        if canceled:
            state, detail = JobState.CANCELED, "canceled"
        elif exit_code == 0:
            state, detail = JobState.DONE, "exited 0"
        elif exit_code is not None:
            state, detail = JobState.FAILED, f"exited {exit_code}"
        else:
            state, detail = JobState.FAILED, "its process ended without an exit code (killed)"
    elif pid == "-" and canceled:
        state, detail = JobState.CANCELED, "canceled"
    elif fields["held"] == "1":
        state, detail = JobState.HELD, "held: waiting for release"
    elif pid == "-":
        state, detail = JobState.QUEUED, "being submitted"
    elif fields["suspended"] == "1":
        state, detail = JobState.SUSPENDED, "stopped"
    else:
        state, detail = JobState.RUNNING, "running"
    return JobInfo(
        id=job_id,
        state=state,
        state_detail=detail,
        exit_code=exit_code,
        stdout=stdout if isinstance(stdout, bytes) else None,
        stderr=stderr if isinstance(stderr, bytes) else None,
        token=token,
        extra={"pid": int(pid)} if pid.isdigit() else {},
    )
