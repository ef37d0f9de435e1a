"""What cloud-init would make of an aiores instance: an SSH server at its address.

moto boots nothing. To check the whole chain (host key injected in the user data,
published, pinned, then rotated; the managed key authorized; the login user), a test
reads an instance's user data back from moto, as cloud-init would, and serves SSH on
the instance's (loopback: see aiores_ec2.testing) public address, port 22, with the
managed key authorized, running commands as local processes.

The instance has a root of its own, a temporary directory, where cloud-init's work
is found as on a real instance: ``etc/ssh/ssh_host_ed25519_key`` (and ``.pub``) from
the user data's ``ssh_keys``. Each command runs in a private mount namespace (as
root: tests run as root) where that ``etc/ssh`` is ``/etc/ssh`` and the root's
``run`` is ``/run``, with ``systemd`` present there and a ``systemctl`` on the PATH
whose ``reload`` asks the server to reload, as sshd does on ``systemctl reload``:
after the command ends, the server serves the key then in
``etc/ssh/ssh_host_ed25519_key`` to every new connection. Nothing of this machine's
own ``/etc/ssh`` or ``/run`` is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import asyncssh

__all__ = ["FAIL_RELOAD", "FakeInstance", "serve_instance"]

_READ = 65536
HOST_KEY = Path("etc", "ssh", "ssh_host_ed25519_key")
RELOAD = Path("run", "aiores-fake-sshd-reload")
#: Made by a test: the next ``systemctl`` fails (once).
FAIL_RELOAD = Path("run", "aiores-fake-fail-reload")

#: Binds the instance's /etc/ssh and /run in the command's namespace, then runs it.
_ENTER = (
    'r=$1; c=$2; mount --bind "$r/etc/ssh" /etc/ssh && mount --bind "$r/run" /run && '
    'PATH="$r/bin:$PATH" && export PATH && exec sh -c "$c"'
)
_SYSTEMCTL = """#!/bin/sh
# systemctl of the stand-in instance: reloading sshd makes it serve its key file again.
if [ -e /run/aiores-fake-fail-reload ]; then
  rm -f /run/aiores-fake-fail-reload
  echo "Job for sshd.service failed (stand-in)." >&2
  exit 1
fi
case "$1" in
  reload) case "$2" in ssh|sshd|ssh.service|sshd.service) : >/run/aiores-fake-sshd-reload ;;
          *) echo "Unit $2 not found." >&2; exit 5 ;; esac ;;
  *) echo "systemctl (stand-in): $1 not supported" >&2; exit 1 ;;
esac
"""


class FakeInstance:
    """One stand-in instance: its root directory and its SSH server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.reloads = 0

    @property
    def host_key_file(self) -> Path:
        return self.root / HOST_KEY

    def host_key(self) -> asyncssh.SSHKey:
        """The private host key sshd would load now."""
        return asyncssh.read_private_key(self.host_key_file)

    def reload_if_asked(self) -> None:
        marker = self.root / RELOAD
        if marker.exists():
            marker.unlink()
            assert self.acceptor is not None
            self.acceptor.update(server_host_keys=[self.host_key()])
            self.reloads += 1

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()

    async def wait_closed(self) -> None:
        if self.acceptor is not None:
            await self.acceptor.wait_closed()
        await asyncio.to_thread(shutil.rmtree, self.root, True)


async def _handle(instance: FakeInstance, process: asyncssh.SSHServerProcess[bytes]) -> None:
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-m",
        "--",
        "sh",
        "-c",
        _ENTER,
        "sh",
        str(instance.root),
        process.command or "true",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdin = proc.stdin

    async def feed() -> None:
        try:
            while data := await process.stdin.read(_READ):
                stdin.write(data)
                await stdin.drain()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            pass
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionError):
                stdin.close()

    async def drain(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
        while data := await src.read(_READ):
            with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
                dst.write(data)
                await dst.drain()

    feeder = asyncio.ensure_future(feed())
    try:
        await asyncio.gather(drain(proc.stdout, process.stdout), drain(proc.stderr, process.stderr))
        status = await proc.wait()
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    instance.reload_if_asked()
    process.exit(status if status >= 0 else 255)


def _make_root(config: dict[str, Any], host_key: str | None) -> Path:
    """Blocking: the instance's root, with what cloud-init writes from ``ssh_keys``."""
    root = Path(tempfile.mkdtemp(prefix="aiores-fake-instance-"))
    ssh = root / HOST_KEY.parent
    ssh.mkdir(parents=True)
    (root / "run" / "systemd" / "system").mkdir(parents=True)
    (root / "bin").mkdir()
    systemctl = root / "bin" / "systemctl"
    systemctl.write_text(_SYSTEMCTL)
    systemctl.chmod(0o755)
    if host_key is None:
        private = config["ssh_keys"]["ed25519_private"]
        public = config["ssh_keys"]["ed25519_public"]
    else:
        key = asyncssh.import_private_key(host_key)
        private = host_key
        public = key.export_public_key().decode()
    key_file = root / HOST_KEY
    key_file.write_text(private)
    key_file.chmod(0o600)
    key_file.with_name(key_file.name + ".pub").write_text(public.strip() + "\n")
    return root


async def serve_instance(
    address: str, config: dict[str, Any], authorized: str, *, host_key: str | None = None
) -> FakeInstance:
    """Serve SSH at ``address``:22 as cloud-init and sshd would set it up from ``config``.

    ``host_key`` (a private key text) replaces the injected one: an impostor.
    """
    root = await asyncio.to_thread(_make_root, config, host_key)
    instance = FakeInstance(root)
    try:
        instance.acceptor = await asyncssh.listen(
            address,
            22,
            server_host_keys=[await asyncio.to_thread(instance.host_key)],
            authorized_client_keys=asyncssh.import_authorized_keys(authorized),
            process_factory=functools.partial(_handle, instance),
            encoding=None,
            reuse_address=True,
        )
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, root, True)
        raise
    return instance
