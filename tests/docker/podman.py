"""A real podman for the docker:// tests: its Docker-compatible service on a private socket.

The session fixture :func:`podman` starts ``podman system service`` with a storage
root, run root and tmp dir of its own (``--root``, ``--runroot``, ``--tmpdir``), the
runc runtime and a ``CONTAINERS_CONF`` with ``default_ulimits = []`` and no network
(see TESTING.md), builds the test image ``localhost/aiores-test:1`` from a
busybox-static rootfs tarball (no registry), and points ``DOCKER_HOST`` at the socket
for the tests (and the programs they start). At the end it removes every container,
stops the service, resets the storage and checks that none of its processes is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import aiores

__all__ = ["IMAGE", "Podman", "check_stdin", "podman"]

#: The test image: busybox with every applet, /tmp, and a passwd file.
IMAGE = "localhost/aiores-test:1"
#: Seconds the service may take to answer its socket.
START_TIMEOUT = 30.0


@dataclass
class Podman:
    """The running service: its socket, and podman's command line for its storage."""

    socket: Path
    root: Path
    env: dict[str, str]
    argv: list[str]

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args], env=self.env, capture_output=True, text=True, check=check
        )

    def containers(self) -> list[str]:
        """Ids of every container the service holds."""
        return self.cli("ps", "-aq", "--no-trunc").stdout.split()


async def check_stdin(vm: aiores.Compute) -> None:
    """A command on ``vm`` reads its stdin to its end: a few bytes, 1 MiB (counted, and
    echoed while it is still written), none."""
    step = 30.0
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    few = await vm.run("cat; echo done >&2; exit 3", stdin=b"abc\n", timeout=step)
    assert (few.exit_status, few.stdout, few.stderr) == (3, "abc\n", "done\n")
    counted = await vm.run(["/bin/sh", "-c", "wc -c; md5sum"], stdin=big, timeout=step)
    assert counted.exit_status == 0
    # wc read all of it; md5sum saw the end of the input wc had emptied.
    assert counted.stdout.split()[:2] == [str(len(big)), "d41d8cd98f00b204e9800998ecf8427e"]
    chunks: list[bytes] = []
    echoed = await vm.run(
        "cat", stdin=big, timeout=step, on_output=lambda _, data: chunks.append(data)
    )
    assert echoed.exit_status == 0
    assert b"".join(chunks) == big
    empty = await vm.run("wc -c", stdin=b"", timeout=step)
    assert (empty.exit_status, empty.stdout.strip()) == (0, "0")


def _rootfs(where: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing: apt-get install busybox-static (./scripts/test does)")
    root = where / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "etc").mkdir()
    (root / "work").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if name != "busybox":
            (root / "bin" / name).symlink_to("busybox")
    tarball = where / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    return tarball


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b"200" in sock.recv(64)
        except OSError:
            return False


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail(
            "podman and runc are missing: apt-get install podman runc (./scripts/test does)"
        )
    base = tmp_path_factory.mktemp("podman")
    conf = base / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = []\nnetns = "none"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    env.pop("DOCKER_HOST", None)
    argv = [
        "podman",
        "--runtime",
        "runc",
        "--root",
        str(base / "storage"),
        "--runroot",
        str(base / "run"),
        "--tmpdir",
        str(base / "tmp"),
    ]
    sock = base / "podman.sock"
    server = Podman(socket=sock, root=base, env=env, argv=argv)
    log = (base / "service.log").open("w")
    service = subprocess.Popen(
        [*argv, "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    old_host = os.environ.get("DOCKER_HOST")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(sock):  # readiness: the socket answers /_ping
            if service.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"podman system service did not start: {(base / 'service.log').read_text()}"
                )
            time.sleep(0.05)
        server.cli("import", str(_rootfs(base)), IMAGE)
        os.environ["DOCKER_HOST"] = server.docker_host
        yield server
    finally:
        if old_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old_host
        with contextlib.suppress(subprocess.CalledProcessError):
            server.cli("rm", "-af", "-t", "0")
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()
        # podman 4.3 keeps the conmon of each exec session after its container is
        # removed (they would live on forever): they are this service's, end them.
        lingering = _processes_of(base)
        for proc in lingering:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        psutil.wait_procs(lingering, timeout=10)
        server.cli("system", "reset", "--force", check=False)
        shutil.rmtree(base / "storage", ignore_errors=True)
        left = _processes_of(base)
        assert not left, f"podman processes left behind: {left}"


def _processes_of(base: Path) -> list[psutil.Process]:
    """Live processes whose command line names the service's directory."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or ()
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(base) in a for a in cmdline):
            found.append(proc)
    return found
