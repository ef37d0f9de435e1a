"""The cloud process: ``python -m aiores_sim.server [--dir DIR] [--daemon]``.

It raises its own limit of open files to the hard limit first (each VM holds
descriptors), and serves VMs past what that allows in region processes of its own
(``--region-capacity``; see :mod:`aiores_sim._regions`), started the same way with
``--region-of <pid>``.

Without ``--daemon`` it serves in the foreground until SIGTERM or SIGINT (or a
``shutdown`` request), logging to stderr. With ``--daemon`` it forks the cloud into
a new session with its output in ``DIR/cloud.log``, and exits 0 once the cloud
listens (or if a cloud already serves ``DIR``), 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import traceback
from pathlib import Path

from aiores import AioresError, state_dir
from aiores.adaptor import private

from ._cloud import Cloud, CloudRunning
from ._protocol import cloud_dir
from ._regions import RegionalCloud

__all__ = ["main", "raise_file_limit"]


def _say(fd: list[int], text: str) -> None:
    """Tell the launcher how the start went, once (``fd`` holds the pipe until then)."""
    if not fd:
        return
    end = fd.pop()
    with contextlib.suppress(OSError):
        os.write(end, text.encode() + b"\n")
    os.close(end)


def raise_file_limit() -> int:
    """Raise this process's limit of open files to the hard limit; returns the limit.

    Each VM holds a listening socket, its connections and its commands' pipes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _serve(
    directory: Path,
    idle_exit: float | None,
    watch_pid: int | None,
    ready_fd: list[int],
    region_capacity: int | None = None,
    region_of: int | None = None,
) -> int:
    cloud: Cloud
    if region_of is not None:  # a region: serves what the first process sends it
        cloud = Cloud(directory, subreaper=True, watch_pid=region_of)
    else:
        cloud = RegionalCloud(
            directory,
            idle_exit=idle_exit,
            subreaper=True,
            watch_pid=watch_pid,
            region_capacity=region_capacity,
        )
    try:
        await cloud.start()
    except CloudRunning:
        _say(ready_fd, "running")
        return 0
    except Exception as exc:
        _say(ready_fd, f"error: {exc}")
        raise
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()

    def stop() -> None:
        stopping.add(asyncio.ensure_future(cloud.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # outlive a closed terminal
    _say(ready_fd, f"ready {os.getpid()}")
    await cloud.serve()
    return 0


def _daemonize(
    directory: Path,
    idle_exit: float | None,
    watch_pid: int | None,
    region_capacity: int | None,
    region_of: int | None,
) -> int:
    """Fork the cloud into its own session; report how its start went."""
    try:
        private.private_dir(directory)
    except (OSError, AioresError) as exc:
        print(f"the sim cloud cannot use {directory}: {exc}", file=sys.stderr)
        return 1
    read_end, write_end = os.pipe()
    if os.fork():  # the launcher: wait for the cloud's word
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        os.close(read_end)
        with contextlib.suppress(ChildProcessError):
            os.wait()
        said = b"".join(chunks).decode(errors="replace").strip()
        if said.startswith("ready") or said == "running":
            print(said)
            return 0
        print(said or f"the sim cloud exited early; see {directory / 'cloud.log'}", file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    code = 1
    ready = [write_end]
    try:
        log_fd = os.open(directory / "cloud.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null_fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.chdir("/")
        _logging()
        code = asyncio.run(
            _serve(directory, idle_exit, watch_pid, ready, region_capacity, region_of)
        )
    except BaseException as exc:
        _say(ready, f"error: {exc!r}")
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiores_sim.server", description=__doc__)
    parser.add_argument("--dir", type=Path, help="the cloud's directory (default: the state dir's)")
    parser.add_argument("--daemon", action="store_true", help="fork into the background")
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="stop after this many seconds with no VM and no client",
    )
    parser.add_argument(
        "--watch-pid",
        type=int,
        default=None,
        help="stop once the process with this pid has ended",
    )
    parser.add_argument(
        "--region-capacity",
        type=int,
        default=None,
        help="live VMs one process serves before the cloud starts another "
        "(default: what the limit of open files allows)",
    )
    parser.add_argument(
        "--region-of",
        type=int,
        default=None,
        help="serve as a region of the cloud process with this pid (stop when it ends)",
    )
    args = parser.parse_args(argv)
    if args.region_capacity is not None and args.region_capacity < 1:
        parser.error("--region-capacity must be at least 1")
    directory = (args.dir or cloud_dir(state_dir())).absolute()
    raise_file_limit()
    if args.daemon:
        return _daemonize(
            directory, args.idle_exit, args.watch_pid, args.region_capacity, args.region_of
        )
    _logging()
    return asyncio.run(
        _serve(directory, args.idle_exit, args.watch_pid, [], args.region_capacity, args.region_of)
    )


if __name__ == "__main__":
    sys.exit(main())
