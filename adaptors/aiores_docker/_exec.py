"""Commands and files of one container (a machine): the exec and archive APIs.

A machine's access URL is ``docker://[host[:port]]/<container id>`` (a user in it,
``docker://user@/<id>``, runs commands as that user). No SSH server is needed in the
image:

- :class:`DockerCommandRunner` runs a command with ``POST /containers/{id}/exec``
  and reads its demultiplexed output and exit code. A str is a shell command
  (``/bin/sh -c``); a sequence runs as it is. The Engine API cannot signal an exec'd
  process, so each command carries a marker in its environment, and a timed-out or
  cancelled one is stopped by a second exec that sends SIGKILL to every process of the
  container carrying that marker (the command and the children it started; this needs
  ``/bin/sh``, ``tr`` and ``grep`` in the image, as any busybox or Debian image has).
  ``stdin`` is written while the output is read, then ended by half-closing the
  connection; over TLS that is TLS's ``close_notify`` (see :mod:`._hijack`).
- :class:`DockerFileAdaptor` copies with ``PUT``/``GET /containers/{id}/archive``
  (tar streams, made and unpacked in a worker thread, permission bits kept; relative
  remote paths are taken from ``/``); ``list`` reads the directory's archive,
  ``remove`` runs ``rm``/``rmdir`` in the container.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import posixpath
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from aiores import AioresError, DoesNotExist, NoSuccess, RunResult
from aiores.adaptor import URL, AdaptorEnv, CommandRunner, FileAdaptor, concurrency

from ._daemon import Daemon, Output
from ._options import container_of

__all__ = ["DockerCommandRunner", "DockerFileAdaptor"]

#: The environment variable that marks a command's processes (for stopping them).
MARKER = "AIORES_EXEC"
_STOP_SCRIPT = (
    'for d in /proc/[0-9]*; do if tr "\\0" "\\n" < "$d/environ" 2>/dev/null '
    '| grep -qx "$1"; then kill -KILL "${d#/proc/}" 2>/dev/null; fi; done; true'
)


class _OnContainer:
    """What the runner and the file adaptor of one container share."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        container = container_of(url)
        assert container is not None  # the plugin routes only machine URLs here
        self.container = container
        self.user = url.user or ""
        self.daemon = Daemon.shared(env, url)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> tuple[str, Output]:
        """Run ``argv`` in the container; its exec id and output (not its exit code).

        ``on_output`` hears each chunk as it comes (``"stdout"`` or ``"stderr"``).
        """
        what = f"running {argv[0]!r} in container {self.container[:12]}"
        made = await self.daemon.json(
            what,
            f"containers/{self.container}/exec",
            "POST",
            body={
                "AttachStdin": stdin is not None,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": False,
                "Cmd": list(argv),
                "Env": [f"{k}={v}" for k, v in (env or {}).items()],
                "User": self.user,
            },
        )
        exec_id = str(made["Id"])
        body = json.dumps({"Detach": False, "Tty": False}).encode()
        output = Output((None, None))
        async for kind, data in self.daemon.attached(what, f"exec/{exec_id}/start", body, stdin):
            output.add(2 if kind == 2 else 1, data)
            if on_output is not None:
                on_output("stderr" if kind == 2 else "stdout", data)
        return exec_id, output

    async def exit_code(self, exec_id: str) -> int | None:
        shown = await self.daemon.json(f"inspecting exec {exec_id[:12]}", f"exec/{exec_id}/json")
        code = shown.get("ExitCode")
        return None if code is None else int(code)


class DockerCommandRunner(CommandRunner):
    """Runs commands in one container (``docker://[host]/<container id>``)."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self._on = _OnContainer(url, env)

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> RunResult:
        """Run ``command`` in the container and return its result.

        ``on_output`` hears each chunk of output as it arrives; if it raises, the
        command is stopped and ``run`` raises that error.

        Raises:
            Timeout: it ran past ``timeout`` seconds (it was stopped first).
            DoesNotExist: no such container.
            IncorrectState: the container is not running.
            NoSuccess, PermissionDenied: the daemon cannot be reached.

        Cancelling it stops the command (SIGKILL to its processes; shielded, bounded).
        """
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        mark = secrets.token_hex(8)
        environment = {**(env or {}), MARKER: mark}
        started = time.time()
        async with concurrency.fail_after(
            timeout, f"{argv[0]!r} in container {self._on.container[:12]} ran past {timeout} s"
        ):
            try:
                exec_id, output = await self._on.exec(
                    argv, stdin=stdin, env=environment, on_output=on_output
                )
            except AioresError:
                raise  # the daemon's answer: the command did not run, or ended
            except BaseException:  # cancelled, timed out, or on_output raised
                await self.env.cleanups.run(
                    lambda: self._stop(mark),
                    what=f"stopping a command in {self._on.container[:12]}",
                )
                raise
            code = await self._on.exit_code(exec_id)
        finished = time.time()
        return RunResult(
            exit_status=code,
            stdout=output.stdout.decode(errors="replace"),
            stderr=output.stderr.decode(errors="replace"),
            elapsed=finished - started,
            started=started,
            finished=finished,
        )

    async def _stop(self, mark: str) -> None:
        await self._on.exec(["/bin/sh", "-c", _STOP_SCRIPT, "sh", f"{MARKER}={mark}"])


class DockerFileAdaptor(FileAdaptor):
    """Copies files to and from one container through the archive API."""

    def __init__(self, url: URL, env: AdaptorEnv) -> None:
        super().__init__(url, env)
        self._on = _OnContainer(url, env)

    def _path(self, remote: str) -> str:
        return posixpath.normpath(posixpath.join("/", remote))

    async def put(self, local: str | Path, remote: str) -> None:
        """Copy a local file or directory to ``remote`` in the container.

        Raises:
            DoesNotExist: ``local`` or the remote directory does not exist.
        """
        path = self._path(remote)
        source = Path(local)
        if not await asyncio.to_thread(source.exists):
            raise DoesNotExist(f"no local file {str(source)!r} to copy")
        data = await asyncio.to_thread(_pack, source, posixpath.basename(path))
        parent = posixpath.dirname(path)
        async with self._on.daemon.stream(
            f"copying to {path} in container {self._on.container[:12]}",
            f"containers/{self._on.container}/archive",
            "PUT",
            params={"path": parent},
            body=data,
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            await response.read()

    async def _archive(self, path: str) -> bytes:
        async with self._on.daemon.stream(
            f"reading {path} of container {self._on.container[:12]}",
            f"containers/{self._on.container}/archive",
            params={"path": path},
        ) as response:
            return await response.read()

    async def get(self, remote: str, local: str | Path) -> None:
        """Copy ``remote`` (a file or directory of the container) to ``local``.

        Raises:
            DoesNotExist: ``remote`` does not exist.
        """
        data = await self._archive(self._path(remote))
        await asyncio.to_thread(_unpack, data, Path(local))

    async def list(self, remote: str) -> Sequence[str]:
        """Names in the container's directory ``remote``.

        Raises:
            DoesNotExist: it does not exist.
            NoSuccess: it is not a directory.
        """
        path = self._path(remote)
        data = await self._archive(path)
        names = await asyncio.to_thread(_top_names, data)
        if names is None:
            raise NoSuccess(f"{path} in container {self._on.container[:12]} is not a directory")
        return names

    async def remove(self, remote: str) -> None:
        """Remove a file (or empty directory) of the container.

        Raises:
            DoesNotExist: it does not exist.
            NoSuccess: it could not be removed (a directory that is not empty).
        """
        path = self._path(remote)
        exec_id, output = await self._on.exec(
            ["/bin/sh", "-c", 'if [ -d "$1" ]; then rmdir -- "$1"; else rm -- "$1"; fi', "sh", path]
        )
        if await self._on.exit_code(exec_id) == 0:
            return
        error = output.stderr.decode(errors="replace").strip()
        if "No such file" in error:
            raise DoesNotExist(f"no {path} in container {self._on.container[:12]}")
        raise NoSuccess(f"cannot remove {path} in container {self._on.container[:12]}: {error}")


def _pack(source: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(source, arcname=name)
    return buffer.getvalue()


def _unpack(data: bytes, local: Path) -> None:
    """Unpack an archive of one file or directory as ``local`` (replacing nothing)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        if not members:
            raise DoesNotExist("the archive is empty")
        top = members[0].name.split("/", 1)[0]
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".aiores-get-", dir=local.parent))
        try:
            tar.extractall(staging, filter="tar")
            os.replace(staging / top, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _top_names(data: bytes) -> list[str] | None:
    """The names directly in the archived directory (None if it is a file)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        if not members or not members[0].isdir():
            return None
        names = set()
        for member in members[1:]:
            parts = member.name.split("/")
            if len(parts) >= 2 and parts[1]:
                names.add(parts[1])
        return sorted(names)
