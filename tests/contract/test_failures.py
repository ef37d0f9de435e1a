"""Every public coroutine of every adaptor, driven into a backend failure, raises an
``aiores.AioresError``: never a raw OSError, asyncssh or botocore error, nor a bare
ExceptionGroup (a FanOutError, which is both, is an aiores error).

The failures are real: an OpenSSH sshd killed (its listener and every connection)
under a session that used it, a sim VM destroyed under one, moto refusing every
call, a missing bucket, missing paths and programs, a path under a file, an
unusable sim cloud directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import aiores
from aiores import ComputeDescription, JobDescription, ResourceState, StorageDescription
from aiores_ec2.testing import MotoServer
from tests.ssh.servers import PERMISSIVE, Keys, Sshd

from .conftest import (
    BACKENDS,
    STEP,
    make_docker,
    make_ec2,
    make_s3,
    make_sim,
    make_slurm,
    marker,
    sleeping,
    until,
)

pytestmark = pytest.mark.asyncio

Op = tuple[str, Callable[[], Awaitable[Any]]]


class Broken:
    """What a broken backend is asked: every op must raise an aiores error, except
    those named in ``answers`` (with why): they cannot fail there by design and must
    return normally."""

    def __init__(self, ops: list[Op], answers: dict[str, str] | None = None) -> None:
        self.answers = answers or {}
        self.ops = [op for op in ops if op[0] not in self.answers]
        self.returning = [op for op in ops if op[0] in self.answers]
        assert len(self.returning) == len(self.answers), "an answer names no op"


def job_ops(js: aiores.JobService, job: aiores.Job, fresh: aiores.JobService) -> list[Op]:
    """The job service's coroutines: ``job`` is one the backend can no longer reach;
    ``fresh`` a service of a new session (so ``get`` must ask the backend)."""
    return [
        ("jobs.submit", lambda: js.submit(JobDescription(executable="/bin/true"))),
        ("jobs.describe (get)", lambda: fresh.get(job.id)),
        ("jobs.list", lambda: fresh.list()),
        ("jobs.cancel", job.cancel),
        ("jobs.hold", job.hold),
        ("jobs.release", job.release),
        ("jobs.suspend", job.suspend),
        ("jobs.resume", job.resume),
    ]


def file_ops(files: aiores.adaptor.FileAdaptor, local: Path, remote: str) -> list[Op]:
    return [
        ("files.put", lambda: files.put(local / "present", f"{remote}/x")),
        ("files.get", lambda: files.get(f"{remote}/missing", local / "got")),
        ("files.list", lambda: files.list(f"{remote}/missing")),
        ("files.remove", lambda: files.remove(f"{remote}/missing")),
    ]


def resource_ops(
    mgr: aiores.Manager, desc: ComputeDescription | StorageDescription, rid: str
) -> list[Op]:
    return [
        ("resources.acquire", lambda: mgr.acquire(desc)),
        ("resources.describe (get)", lambda: mgr.get(rid)),
        ("resources.list", lambda: mgr.list()),
        ("resources.destroy", lambda: mgr.destroy(rid)),
    ]


async def outcome(name: str, op: Callable[[], Awaitable[Any]]) -> str | None:
    """None if ``op`` raised an aiores error; else what it did instead."""
    try:
        async with asyncio.timeout(STEP):
            result = await op()
    except aiores.AioresError as exc:
        if isinstance(exc, BaseExceptionGroup) and not isinstance(exc, aiores.FanOutError):
            return f"{name}: a bare group {exc!r}"
        return None
    except Exception as exc:
        return f"{name}: raised {type(exc).__module__}.{type(exc).__qualname__}: {exc!r}"
    return f"{name}: returned {result!r}"


# -- breaking each backend ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def broken_local(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Broken]:
    """Missing programs, directories and paths; a path under a file; a finished job."""
    (tmp / "present").write_text("x")
    (tmp / "file").write_text("not a directory")
    async with aiores.Session() as session, aiores.Session() as other:
        js = session.job_service("local://")
        job = await js.submit(JobDescription(executable="/bin/true"))
        await job.wait(timeout=STEP)
        await job.reap()  # forgotten: every later use of it fails
        runner = await session.command_runner("local://")
        files = await session.file_adaptor("local://")
        mgr = session.manager("local://")
        submit: Op = (
            "jobs.submit",
            lambda: js.submit(
                JobDescription(executable="/bin/true", working_directory="/no/such/dir")
            ),
        )
        yield Broken(
            [
                ("runner.run", lambda: runner.run(["/no/such/program"])),
                submit,
                *job_ops(js, job, other.job_service("local://"))[1:],
                *file_ops(files, tmp, str(tmp / "file")),
                *resource_ops(mgr, ComputeDescription(image="no-such"), "localhost-0"),
            ],
            {
                "jobs.list": "the job records on this host: nothing to fail",
                "resources.list": "this process's leases: nothing to fail",
                "resources.destroy": "an unknown id is gone already: no error",
            },
        )


def _kill_sshd(server: Sshd) -> None:
    """SIGKILL the sshd and every session process it forked (as if the host died)."""
    assert server.process is not None
    parent = psutil.Process(server.process.pid)
    for child in parent.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "sshd":
                child.send_signal(signal.SIGKILL)
    parent.send_signal(signal.SIGKILL)
    server.process.wait(10)


@contextlib.asynccontextmanager
async def broken_ssh(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Broken]:
    """An sshd of its own, used and then killed (listener and connections)."""
    keys: Keys = request.getfixturevalue("keys")
    server = Sshd(keys, "killed", PERMISSIVE)
    await asyncio.to_thread(server.start)
    mark = marker()
    (tmp / "present").write_text("x")
    try:
        url = server.url()
        async with aiores.Session(contexts=[server.context()]) as session:
            js = session.job_service(url)
            job = await js.submit(JobDescription(executable="/bin/sleep", arguments=[mark]))
            runner = await session.command_runner(url)
            files = await session.file_adaptor(url)
            assert (await runner.run("true")).exit_status == 0
            assert await files.list(".") is not None
            await until(lambda: sleeping(mark), "the job started")
            await asyncio.to_thread(_kill_sshd, server)
            async with aiores.Session(contexts=[server.context()]) as other:
                yield Broken(
                    [
                        ("runner.run", lambda: runner.run("true")),
                        *job_ops(js, job, other.job_service(url)),
                        *file_ops(files, tmp, "."),
                        ("resources (manager)", lambda: _manager(session, url)),
                    ]
                )
    finally:
        server.stop()
        for proc in await asyncio.to_thread(sleeping, mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()


async def _manager(session: aiores.Session, url: str) -> aiores.Manager:
    return session.manager(url)  # ssh:// has none: NotSupported


@contextlib.asynccontextmanager
async def broken_sim(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Broken]:
    """A VM destroyed under a session that used it; a cloud directory under a file."""
    (tmp / "present").write_text("x")
    mark = marker()
    async with make_sim(request, tmp) as backend, backend.session() as session:
        url = backend.jobs_url
        js = session.job_service(url)
        job = await js.submit(JobDescription(executable="/bin/sleep", arguments=[mark]))
        runner = await session.command_runner(url)
        files = await session.file_adaptor(url)
        assert (await runner.run("true")).exit_status == 0
        async with aiores.Session() as owner:
            vms = await owner.manager(backend.resources_url).list()
            await owner.manager(backend.resources_url).destroy(vms)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AIORES_SIM_DIR", str(tmp / "present" / "cloud"))
            async with backend.session() as other:
                mgr = other.manager(backend.resources_url)
                yield Broken(
                    [
                        ("runner.run", lambda: runner.run("true")),
                        *job_ops(js, job, other.job_service(url)),
                        *file_ops(files, tmp, backend.root),
                        *resource_ops(mgr, ComputeDescription(ready=None), "vm-0000000000"),
                    ],
                    {
                        "resources.list": "no cloud runs there: it has no VMs",
                        "resources.destroy": "no cloud runs there: the VM is gone",
                    },
                )


@contextlib.asynccontextmanager
async def broken_aws(
    request: pytest.FixtureRequest, tmp: Path, maker: Any
) -> AsyncIterator[Broken]:
    """moto refusing every call (AccessDenied) after a resource was made; for S3 also
    a bucket that does not exist."""
    (tmp / "present").write_text("x")
    async with (
        maker(request, tmp) as backend,
        backend.session() as session,
        contextlib.AsyncExitStack() as stack,
    ):
        server = MotoServer.shared()
        mgr = session.manager(backend.resources_url)
        res = await mgr.acquire(backend.description)
        await res.wait(ResourceState.ACTIVE, timeout=STEP)
        ops = resource_ops(mgr, backend.description, res.id)
        # A manager of a new session, so that get must ask the backend.
        other = await stack.enter_async_context(backend.session())
        fresh = other.manager(backend.resources_url)
        ops[1] = ("resources.describe (get)", lambda: fresh.get(res.id))
        if backend.has("files"):
            files = await session.file_adaptor(backend.files_url)
            ops += file_ops(files, tmp, "prefix")
            nowhere = aiores.URL.parse(backend.files_url).replace(host="aiores-no-such-bucket")
            missing = await session.file_adaptor(nowhere)
            ops += [
                (f"{n} (no bucket)", functools.partial(unfaulted, server, op))
                for n, op in file_ops(missing, tmp, "p")
            ]
        else:
            ops += [
                ("jobs (service)", lambda: _service(session, backend.jobs_url)),
                ("runner (runner)", lambda: session.command_runner(backend.runner_url)),
                ("files (adaptor)", lambda: session.file_adaptor(backend.files_url)),
            ]
        await server.set_faults(error={"*": [10_000, 403, "AccessDenied"]})
        try:
            yield Broken(ops)
        finally:
            await server.set_faults(clear=True)
            await res.destroy()


async def unfaulted(server: MotoServer, op: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``op`` with moto's faults off (so that the failure is the backend's own)."""
    await server.set_faults(clear=True)
    try:
        return await op()
    finally:
        await server.set_faults(error={"*": [10_000, 403, "AccessDenied"]})


async def _service(session: aiores.Session, url: str) -> aiores.JobService:
    return session.job_service(url)


@contextlib.asynccontextmanager
async def broken_docker(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Broken]:
    """A reaped job, a removed machine's commands and files, an image nobody built."""
    (tmp / "present").write_text("x")
    async with (
        make_docker(request, tmp) as backend,
        backend.session() as session,
        backend.session() as other,
    ):
        js = session.job_service(backend.jobs_url)
        job = await js.submit(JobDescription(executable="/bin/true"))
        await job.wait(timeout=STEP)
        await job.reap()
        mgr = session.manager(backend.resources_url)
        gone = await mgr.acquire(backend.description)
        await gone.wait(ResourceState.ACTIVE, timeout=STEP)
        assert gone.access is not None
        await gone.destroy()
        runner = await session.command_runner(gone.access)
        files = await session.file_adaptor(gone.access)
        missing = JobDescription(executable="/bin/true", category="localhost/aiores-none:1")
        yield Broken(
            [
                ("runner.run", lambda: runner.run(["true"])),
                ("jobs.submit", lambda: js.submit(missing)),
                *job_ops(js, job, other.job_service(backend.jobs_url))[1:],
                *file_ops(files, tmp, "/tmp"),
                *resource_ops(
                    mgr, ComputeDescription(image="localhost/aiores-none:1"), backend.unknown_id
                ),
            ],
            {
                "jobs.list": "the daemon's labelled containers: nothing to fail",
                "resources.list": "the daemon's labelled containers: nothing to fail",
                "resources.destroy": "an unknown id is gone already: no error",
            },
        )


@contextlib.asynccontextmanager
async def broken_slurm(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Broken]:
    """A reaped job, and a partition the cluster does not have."""
    async with (
        make_slurm(request, tmp) as backend,
        backend.session() as session,
        backend.session() as other,
    ):
        js = session.job_service(backend.jobs_url)
        job = await js.submit(JobDescription(executable="/bin/true"))
        await job.wait(timeout=STEP)
        await job.reap()
        nowhere = JobDescription(executable="/bin/true", queue="aiores-no-such-partition")
        yield Broken(
            [
                ("jobs.submit", lambda: js.submit(nowhere)),
                *job_ops(js, job, other.job_service(backend.jobs_url))[1:],
            ],
            {"jobs.list": "the user's jobs in the queue: nothing to fail"},
        )


BREAKERS: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "local": broken_local,
    "ssh": broken_ssh,
    "sim": broken_sim,
    "ec2": lambda request, tmp: broken_aws(request, tmp, make_ec2),
    "s3": lambda request, tmp: broken_aws(request, tmp, make_s3),
    "docker": broken_docker,
    "slurm": broken_slurm,
}


@pytest.mark.parametrize("name", sorted(BREAKERS))
async def test_every_public_coroutine_fails_as_an_aiores_error(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    assert set(BREAKERS) == set(BACKENDS), "a backend without a breaker"
    async with BREAKERS[name](request, tmp_path) as broken:
        wrong = [bad for op in broken.ops if (bad := await outcome(*op)) is not None]
        for what, op in broken.returning:
            try:
                async with asyncio.timeout(STEP):
                    await op()
            except Exception as exc:
                wrong.append(f"{what} ({broken.answers[what]}) raised {exc!r}")
    assert not wrong, "\n".join(wrong)
