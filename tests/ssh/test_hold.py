"""ssh:// jobs submitted held (real sshd): HELD until released, found again HELD by
another program; a cancelled held job never starts. And a submit cut off whose stop
could not be confirmed: its job is claimed, never started, however late it appears."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shlex
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import JobDescription, JobState, SSHContext

from ..sim.conftest import python_child
from .conftest import STEP, Adaptors, gone, wait_until
from .servers import Sshd
from .test_jobs import settle, token

pytestmark = pytest.mark.asyncio


def waiting_at_the_gate(job_dir: Path, pid: int) -> bool:
    """The held job's wrapper (``pid``) holds its gate open and has no child: it is
    blocked reading the FIFO, neither polling with ``sleep`` nor running the program."""
    try:
        gate = Path(f"/proc/{pid}/fd/3").readlink()
        children = psutil.Process(pid).children()
    except (FileNotFoundError, psutil.NoSuchProcess):
        return False
    return gate == job_dir / "gate" and children == []


async def test_a_held_job_waits_for_its_release(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    jobs = await adaptors.jobs(sshd.url())
    flag = test_home / f"held-{secrets.token_hex(4)}"
    desc = JobDescription.shell(f"echo started > {flag}; echo out")
    job = await jobs.submit(desc, token(), hold=True)
    assert job.state is JobState.HELD
    job_dir = test_home / ".aiores" / "jobs" / job.id
    pid = job.extra["pid"]
    await wait_until(lambda: waiting_at_the_gate(job_dir, pid))
    info = (await jobs.describe([job.id]))[job.id]
    assert (info.state, info.state_detail) == (JobState.HELD, "held: waiting for release")
    assert not flag.exists()
    await jobs.hold(job.id)  # held already: nothing to do
    with pytest.raises(aiores.IncorrectState):
        await jobs.suspend(job.id)  # nothing runs yet
    with pytest.raises(aiores.IncorrectState):
        await jobs.resume(job.id)

    await jobs.release(job.id)
    published = await adaptors.published.get()
    assert (published.id, published.state) == (job.id, JobState.QUEUED)
    info = await settle(jobs, job.id)
    assert (info.state, info.exit_code, info.stdout) == (JobState.DONE, 0, b"out\n")
    assert flag.read_text() == "started\n"
    with pytest.raises(aiores.IncorrectState):
        await jobs.release(job.id)  # released already (and ended)
    with pytest.raises(aiores.IncorrectState):
        await jobs.hold(job.id)
    flag.unlink()


async def test_without_a_fifo_a_held_job_looks_for_its_release_each_second(
    adaptors: Adaptors, sshd: Sshd, test_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``mkfifo`` fails the wrapper sleeps a second between looks (no gate)."""
    import aiores_ssh._jobs as jobs_module
    import aiores_ssh._jobscripts as jobscripts

    def no_fifo(*args: object, **kwargs: object) -> tuple[str, bytes]:
        script, stdin = jobscripts.submit_script(*args, **kwargs)  # type: ignore[arg-type]
        assert "mkfifo gate" in script
        return script.replace("mkfifo gate", "false"), stdin

    monkeypatch.setattr(jobs_module, "submit_script", no_fifo)
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(JobDescription.shell("echo out"), token(), hold=True)
    job_dir = test_home / ".aiores" / "jobs" / job.id
    pid = job.extra["pid"]

    def sleeping() -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            return [c.name() for c in psutil.Process(pid).children()] == ["sleep"]
        return False

    await wait_until(sleeping)
    assert not (job_dir / "gate").exists()
    assert (await jobs.describe([job.id]))[job.id].state is JobState.HELD
    await jobs.release(job.id)
    info = await settle(jobs, job.id)
    assert (info.state, info.stdout) == (JobState.DONE, b"out\n")


async def test_release_and_hold_of_a_job_not_held(adaptors: Adaptors, sshd: Sshd) -> None:
    jobs = await adaptors.jobs(sshd.url())
    job = await jobs.submit(JobDescription.shell("exec sleep 60"), token(), hold=False)
    with pytest.raises(aiores.IncorrectState, match="not held"):
        await jobs.release(job.id)
    with pytest.raises(aiores.IncorrectState):
        await jobs.hold(job.id)  # running: suspend it instead
    with pytest.raises(aiores.DoesNotExist):
        await jobs.release("0123456789abcdef0123")
    with pytest.raises(aiores.DoesNotExist):
        await jobs.hold("0123456789abcdef0123")
    await jobs.cancel(job.id)


async def test_a_cancelled_held_job_never_starts(
    adaptors: Adaptors, sshd: Sshd, test_home: Path
) -> None:
    jobs = await adaptors.jobs(sshd.url())
    flag = test_home / f"never-{secrets.token_hex(4)}"
    job = await jobs.submit(JobDescription.shell(f"touch {flag}"), token(), hold=True)
    job_dir = test_home / ".aiores" / "jobs" / job.id
    await wait_until(lambda: waiting_at_the_gate(job_dir, job.extra["pid"]))
    await jobs.cancel(job.id)
    info = await settle(jobs, job.id)
    assert (info.state, info.exit_code) == (JobState.CANCELED, None)
    assert gone(job.extra["pid"])
    with pytest.raises(aiores.IncorrectState, match="has ended"):
        await jobs.release(job.id)
    assert not flag.exists()


#: The first program: submits two jobs held, prints their ids, ends (its jobs stay).
_SUBMITTER = """
import asyncio, json
import aiores

async def main(url, context, released, cancelled):
    ctx = aiores.SSHContext(**json.loads(context))
    async with aiores.Session(contexts=[ctx]) as session:
        js = session.job_service(url)
        for command in (released, cancelled):
            job = await js.submit(aiores.JobDescription.shell(command), hold=True)
            print(job.id, job.state.name, flush=True)

"""


def context_fields(ctx: SSHContext) -> str:
    fields = ("key_files", "known_hosts", "config")
    return json.dumps(
        {name: getattr(ctx, name) for name in fields}
        | {"host_keys": {host: list(keys) for host, keys in ctx.host_keys.items()}}
    )


async def submit_held_elsewhere(
    url: str, ctx: SSHContext, released: str, cancelled: str
) -> list[str]:
    """Ids of two held jobs submitted by another program, which has ended."""
    args = ", ".join(repr(arg) for arg in (url, context_fields(ctx), released, cancelled))
    # A fresh interpreter, in this one's environment (the same state directory).
    out = await python_child(_SUBMITTER + f"asyncio.run(main({args}))\n")
    lines = [line.split() for line in out.splitlines()]
    assert [state for _, state in lines] == ["HELD", "HELD"], out
    return [job_id for job_id, _ in lines]


async def release_and_cancel_found_jobs(
    session: aiores.Session, ids: list[str], flag: Path
) -> None:
    """``recover()`` finds both HELD; the first released runs, the second cancelled
    never starts (it would touch ``flag``)."""
    found = {job.id: job for job in (await session.recover()).jobs}
    released, cancelled = (found[i] for i in ids)
    assert (released.state, cancelled.state) == (JobState.HELD, JobState.HELD)
    await released.release()
    await cancelled.cancel()
    async with asyncio.timeout(STEP):
        assert await released.wait() is JobState.DONE
        assert await cancelled.wait() is JobState.CANCELED
    assert released.stdout == "released\n"
    assert not await asyncio.to_thread(flag.exists)


async def test_a_held_job_is_found_again_by_another_program(
    sshd: Sshd, test_home: Path, state_dir: Path
) -> None:
    flag = test_home / f"found-{secrets.token_hex(4)}"
    ctx = sshd.context()
    ids = await submit_held_elsewhere(sshd.url(), ctx, "echo released", f"touch {flag}")
    async with aiores.Session(contexts=[ctx]) as session:
        await release_and_cancel_found_jobs(session, ids, flag)


# -- a submit whose stop could not be confirmed ------------------------------------------
def _sleeping(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-1:] == [mark]:
            found.append(proc)
    return found


async def test_a_submit_whose_stop_failed_never_starts_its_job(
    sshd: Sshd, test_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submit is cancelled while its command hangs; the command ignores TERM and
    the stop by pid cannot run, so the stop is not confirmed. The command had handed
    its work to a detached part that makes the job directory only later, after the
    core's cleanup looked for the token: the cleanup must not take "nothing found"
    for "nothing made". The job is claimed: it never starts its program."""
    import aiores_ssh._jobs as jobs_module
    import aiores_ssh._jobscripts as jobscripts
    import aiores_ssh._runner as runner_module

    tag = secrets.token_hex(4)
    began, go = test_home / f"began-{tag}", test_home / f"go-{tag}"
    submit_script = jobscripts.submit_script

    def late_submit(*args: object, **kwargs: object) -> tuple[str, bytes]:
        script, stdin = submit_script(*args, **kwargs)  # type: ignore[arg-type]
        later = f"while [ ! -e {go} ]; do sleep 0.05; done\n" + script
        return (
            f"trap '' TERM\n: > {began}\n"
            f"setsid /bin/sh -c {shlex.quote(later)} </dev/null >/dev/null 2>&1 &\n"
            "exec sleep 60\n",
            stdin,
        )

    monkeypatch.setattr(jobs_module, "submit_script", late_submit)
    monkeypatch.setattr(runner_module, "stop_script", lambda *args: "exit 1\n")
    mark = f"600.{tag}"
    async with aiores.Session(journal=tmp_path / "journal.db", contexts=[sshd.context()]) as s:
        task = asyncio.create_task(
            s.job_service(sshd.url()).submit(JobDescription(executable="sleep", arguments=[mark]))
        )
        await wait_until(began.exists)
        task.cancel()
        async with asyncio.timeout(STEP):
            with pytest.raises(asyncio.CancelledError):
                await task  # after the cleanup: it found (and released) what it claimed
        assert s.journal is not None
        (intent,) = [i for i in await s.journal.intents() if i.op == "submit"]
        assert intent.status == "released", intent
        (job_id,) = intent.ids
    job_dir = test_home / ".aiores" / "jobs" / job_id
    assert (job_dir / "canceled").exists()
    go.touch()  # the submit's detached part now makes the job and starts its wrapper
    try:
        await wait_until(lambda: _wrapper_gone(job_dir))
        assert not (job_dir / "exit").exists()  # the wrapper saw the claim: no program
        assert _sleeping(mark) == []
    finally:
        for proc in _sleeping(mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        began.unlink(missing_ok=True)
        go.unlink(missing_ok=True)


def _wrapper_gone(job_dir: Path) -> bool:
    """The job's wrapper was started (its pid is recorded) and has ended."""
    try:
        pid = int((job_dir / "pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return False
    return gone(pid)
