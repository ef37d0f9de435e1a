"""One contract suite over every adaptor: the backend table.

Each test of ``tests/contract`` takes the ``backend`` fixture, which is parametrised
over :data:`BACKENDS`; every backend runs every test. A backend that lacks a
capability says so in its ``caps`` and the test asserts what it does instead
(``NotSupported``, raised cleanly), never skips.

To add an adaptor: write an ``async`` context manager ``make_<name>(request, tmp)``
that starts (or reaches) its server through the existing fixtures and yields a
:class:`Backend`, and add it to :data:`BACKENDS`.

Capabilities (``Backend.caps``):

====================  ==========================================================================
``jobs``              ``session.job_service(jobs_url)`` (else NotSupported)
``hold``              ``submit(..., hold=True)`` gives a HELD job (else NotSupported)
``job_reconnect``     ``JobService.get(job.id)`` from a new Session finds a running job
``runner``            ``session.command_runner(runner_url)`` runs commands (else NotSupported)
``files``             ``session.file_adaptor(files_url)`` (else NotSupported)
``modes``             put/get keep permission bits (S3 objects have none: content only)
``directories``       real directories: listing or removing a missing path raises
                      DoesNotExist (S3 has key prefixes: an absent one lists empty, and
                      removing an absent key is no error, as S3 answers)
``resources``         ``session.manager(resources_url)`` (else NotSupported)
``resource_reconnect``  ``Manager.get(id)`` from a new Session finds the resource (local://
                      leases live in their session: an id from another is unknown there)
``no_ssh``            machines that never answer SSH (moto's instances): the ones acquired
                      with ``ready=None``
``freezes``           ``suspend`` freezes the job's cgroup (a paused container): its
                      processes show as in uninterruptible sleep, not stopped
====================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

import aiores
from aiores import ComputeDescription, ResourceState, SSHContext, StorageDescription
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer
from aiores_sim import MANAGED_KEY
from aiores_sim.testing import SimCloudProcess
from tests.docker.podman import IMAGE
from tests.ssh.servers import Sshd

__all__ = [
    "BACKENDS",
    "STEP",
    "Backend",
    "SimCloudProcess",
    "marker",
    "sleeping",
    "until",
    "workdir",
]

#: Seconds any one await in these tests may take before the test fails.
STEP = 30.0

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

#: An AMI moto knows.
EC2_IMAGE = "ami-12c6146b"


@dataclass
class Backend:
    """One adaptor as the contract tests see it (see the module docstring)."""

    name: str
    caps: frozenset[str]
    contexts: Sequence[aiores.Context] = ()
    #: Where jobs, commands and files go (a URL the backend refuses if it lacks them).
    jobs_url: str = ""
    runner_url: str = ""
    #: Where a test reads what jobs wrote (their host's commands): ``runner_url`` unless
    #: the backend runs no commands of its own (a batch scheduler: its jobs' host).
    job_host_url: str = ""
    files_url: str = ""
    resources_url: str = ""
    #: What an acquire asks for (tags are added by the tests).
    description: ComputeDescription | StorageDescription = field(default_factory=ComputeDescription)
    #: A native id of the backend's kind that names nothing.
    unknown_id: str = "no-such-thing"
    #: Where files go at ``files_url``: a directory (or key prefix) of this test.
    root: str = ""
    #: A local directory of this test (for the local side of transfers).
    local: Path = Path()

    def session(self) -> aiores.Session:
        """A new Session that reaches the backend."""
        return aiores.Session(contexts=list(self.contexts))

    def has(self, cap: str) -> bool:
        return cap in self.caps


Maker = Callable[[pytest.FixtureRequest, Path], contextlib.AbstractAsyncContextManager[Backend]]


# -- local:// ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def make_local(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    root = tmp / "remote"
    root.mkdir()
    yield Backend(
        name="local",
        caps=frozenset(
            {"jobs", "hold", "job_reconnect", "runner", "files", "modes", "directories"}
            | {"resources"}
        ),
        jobs_url="local://?grace=0.5",
        runner_url="local://",
        files_url="local://",
        resources_url="local://",
        unknown_id="localhost-000000000000",
        root=str(root),
    )


# -- ssh:// (the real OpenSSH sshd of tests/ssh) ----------------------------------------
@contextlib.asynccontextmanager
async def make_ssh(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    server: Sshd = request.getfixturevalue("sshd")
    backend = Backend(
        name="ssh",
        caps=frozenset(
            {"jobs", "hold", "job_reconnect", "runner", "files", "modes", "directories"}
        ),
        contexts=[server.context()],
        jobs_url=server.url(),
        runner_url=server.url(),
        files_url=server.url(),
        resources_url=server.url(),
        root=f"aiores-contract-{secrets.token_hex(4)}",
    )
    async with remote_root(backend):
        yield backend


@contextlib.asynccontextmanager
async def remote_root(backend: Backend) -> AsyncIterator[None]:
    """Make ``backend.root`` (relative to the login directory) and remove it at the end."""
    async with backend.session() as session:
        runner = await session.command_runner(backend.runner_url)
        made = await runner.run(["mkdir", "-p", backend.root])
        assert made.exit_status == 0, made
    try:
        yield
    finally:
        # A test may have destroyed the machine (its disk went with it).
        with contextlib.suppress(aiores.ConnectionLost, aiores.NoSuccess):
            async with backend.session() as session:
                runner = await session.command_runner(backend.runner_url)
                await runner.run(["rm", "-rf", backend.root])


# -- sim:// (the sim cloud of aiores_sim.testing; jobs, commands, files on a VM) ---------
@contextlib.asynccontextmanager
async def make_sim(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    request.getfixturevalue("aiores_sim_cloud")
    url = "sim://?boot_delay=0"
    async with aiores.Session() as session:
        vm = await session.manager(url).acquire(ComputeDescription(ready=None))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        # The first test to start the cloud sees its state directory (and key).
        state = session.state_dir
    assert vm.access is not None
    port = aiores.URL.parse(vm.access).port
    context = SSHContext(
        key_files=[str(state / MANAGED_KEY)],
        known_hosts=[],
        config=[],
        host_keys={f"127.0.0.1:{port}": list(vm.host_keys)},
    )
    backend = Backend(
        name="sim",
        caps=frozenset(
            {
                "jobs",
                "hold",
                "job_reconnect",
                "runner",
                "files",
                "modes",
                "directories",
                "resources",
                "resource_reconnect",
            }
        ),
        contexts=[context],
        jobs_url=vm.access,
        runner_url=vm.access,
        files_url=vm.access,
        resources_url=url,
        description=ComputeDescription(ready=None),
        unknown_id="vm-0000000000",
        root=f"aiores-contract-{secrets.token_hex(4)}",
    )
    try:
        async with remote_root(backend):
            yield backend
    finally:
        async with aiores.Session() as session:
            await session.manager(url).destroy(vm.id)


# -- ec2:// (moto; resources only, ACTIVE meaning "running") -----------------------------
def _aws() -> aiores.AWSContext:
    return aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


def _moto() -> MotoServer:
    server = MotoServer.shared()
    server.wait_ready()
    server.reset_sync()
    return server


@contextlib.asynccontextmanager
async def make_ec2(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    server = await asyncio.to_thread(_moto)
    url = f"ec2://us-east-1?endpoint={server.url}&ssh_cidr=127.0.0.1/32&poll=0.2"
    yield Backend(
        name="ec2",
        caps=frozenset({"resources", "resource_reconnect", "no_ssh"}),
        contexts=[_aws()],
        jobs_url=url,
        runner_url=url,
        files_url=url,
        resources_url=url,
        description=ComputeDescription(image=EC2_IMAGE, template="t3.micro", ready=None),
        unknown_id="i-0123456789abcdef0",
    )


# -- s3:// (moto; buckets as storage, their objects as files) ----------------------------
@contextlib.asynccontextmanager
async def make_s3(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    server = await asyncio.to_thread(_moto)
    url = f"s3://?endpoint={server.url}&empty=1"
    backend = Backend(
        name="s3",
        caps=frozenset({"files", "resources", "resource_reconnect"}),
        contexts=[_aws()],
        resources_url=url,
        description=StorageDescription(),
        unknown_id="aiores-no-such-bucket-0000",
        root=f"aiores-contract-{secrets.token_hex(4)}",
    )
    async with backend.session() as session:
        bucket = await session.manager(url).acquire(StorageDescription())
    assert bucket.access is not None
    backend.files_url = backend.jobs_url = backend.runner_url = bucket.access
    try:
        yield backend
    finally:
        async with backend.session() as session:
            await session.manager(url).destroy(bucket.id)


#: Every adaptor the contract suite runs against.
# -- docker:// (a real podman's Docker-compatible service of tests/docker) ---------------
@contextlib.asynccontextmanager
async def make_docker(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    podman = request.getfixturevalue("podman")
    # Jobs and the machine that checks their files share a directory of this host.
    shared = tmp / "shared"
    shared.mkdir()
    url = f"docker://?image={IMAGE}&volume={shared}:/work"
    async with aiores.Session() as session:
        vm = await session.manager(url).acquire(ComputeDescription())
    assert vm.access is not None
    try:
        yield Backend(
            name="docker",
            caps=frozenset(
                {"jobs", "hold", "job_reconnect", "runner", "files", "modes", "directories"}
                | {"resources", "resource_reconnect", "freezes"}
            ),
            jobs_url=f"{url}&grace=0.5",
            runner_url=vm.access,
            files_url=vm.access,
            resources_url=url,
            description=ComputeDescription(image=IMAGE),
            unknown_id="0" * 64,
            root=f"/work/aiores-contract-{secrets.token_hex(4)}",
        )
    finally:
        async with aiores.Session() as session:
            await session.manager(url).destroy(vm.id)
        # Ended job containers stay until reaped: the service is shared with
        # tests/docker, which expects it empty.
        await asyncio.to_thread(podman.cli, "rm", "-af", "-t", "0")


# -- slurm:// (the real single-node Slurm of tests/slurm; its jobs run on this host) ---
@contextlib.asynccontextmanager
async def make_slurm(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Backend]:
    cluster = request.getfixturevalue("slurm_cluster")
    jobs = tmp / "slurm-jobs"
    jobs.mkdir()
    root = tmp / "remote"
    root.mkdir()
    yield Backend(
        name="slurm",
        caps=frozenset({"jobs", "hold", "job_reconnect"}),
        jobs_url=f"slurm://?interval=0.3&conf={cluster.conf}&dir={jobs}",
        runner_url=f"slurm://?conf={cluster.conf}",
        files_url=f"slurm://?conf={cluster.conf}",
        resources_url=f"slurm://?conf={cluster.conf}",
        job_host_url="local://",
        root=str(root),
    )


BACKENDS: dict[str, Maker] = {
    "local": make_local,
    "ssh": make_ssh,
    "sim": make_sim,
    "ec2": make_ec2,
    "s3": make_s3,
    "docker": make_docker,
    "slurm": make_slurm,
}


@pytest_asyncio.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    local = tmp_path / "local"
    local.mkdir()
    async with BACKENDS[request.param](request, tmp_path) as made:
        made.local = local
        yield made


async def workdir(session: aiores.Session, backend: Backend) -> str:
    """``backend.root`` as an absolute path on the job host (made if missing)."""
    runner = await session.command_runner(backend.job_host_url or backend.runner_url)
    done = await runner.run(["sh", "-c", 'mkdir -p "$1" && cd "$1" && pwd -P', "sh", backend.root])
    assert done.exit_status == 0, done
    return done.stdout.strip()


# -- processes ------------------------------------------------------------------------
def marker() -> str:
    """A ``sleep`` argument no other process has: ``1000.<digits>``."""
    return f"1000.{secrets.randbelow(10**9):09d}"


def sleeping(mark: str) -> list[psutil.Process]:
    """Live processes (on this machine: local jobs, sshd's and the sim VMs' commands)
    running ``sleep <mark>``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            len(cmdline) >= 2
            and os.path.basename(cmdline[-2]) == "sleep"
            and cmdline[-1] == mark
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    return found


async def until(predicate: Callable[[], Any], what: str, timeout: float = STEP) -> Any:
    """Await ``predicate()`` (run in a thread) becoming truthy; fail after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := await asyncio.to_thread(predicate)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")
    return value
